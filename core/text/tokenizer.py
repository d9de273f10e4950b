"""Tokenizers: text <-> token ids, with the special tokens a multimodal model needs.

Two implementations of one `Tokenizer` protocol:

- `ByteTokenizer`: UTF-8 bytes plus seven special tokens. Needs no file; for tests and for
  models trained from scratch (the embedded default).
- `HFTokenizer`: a local ``tokenizer.json`` of the `tokenizers` library (pretrained LMs).

`load_tokenizer(spec)` builds either one from the small dict that `describe()` returns and a
model config stores. `encode` never adds bos/eos: the chat templates place them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import HybridError
from ..suggest import unknown

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"


class TokenizerError(HybridError):
    """A tokenizer spec or file is wrong, or ids fall outside the vocabulary."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the project needs from a tokenizer.

    `pad_id`, `eos_id`, `image_id` and `video_id` always exist; `bos_id` is None for
    tokenizers without one (Qwen-style). `special_tokens` maps each special string to its id.
    """

    @property
    def vocab_size(self) -> int:
        """Largest id + 1: the model's embedding needs at least this many rows."""

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def image_id(self) -> int: ...

    @property
    def video_id(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings in it (``<image>``) become their single ids."""

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD instead of raising."""

    def token_to_id(self, token: str) -> int:
        """Id of one token string; `TokenizerError` if it is not in the vocabulary."""

    def save(self, directory: str | Path) -> None:
        """Write into `directory` what `load_tokenizer(self.describe(), base_dir=directory)` needs."""

    def describe(self) -> dict[str, Any]:
        """The YAML-able spec that reloads this tokenizer from a directory written by `save`."""


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Ids as plain ints (tensors and numpy ints welcome), all inside the vocabulary."""
    ids = [int(i) for i in ids]
    for i in ids:
        if not 0 <= i < vocab_size:
            raise TokenizerError(
                f"cannot decode id {i}: this tokenizer has ids 0..{vocab_size - 1}; when the model's "
                f"vocab_size is larger, mask logits at or above tokenizer.vocab_size before sampling"
            )
    return ids


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then `SPECIALS` as ids 256..262 (vocab_size 263)."""

    SPECIALS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END)

    def __init__(self) -> None:
        self._specials = {token: 256 + i for i, token in enumerate(self.SPECIALS)}
        self._by_id = {i: token for token, i in self._specials.items()}
        # Longest first, so that no special string is cut short by another one.
        alternatives = sorted(self._specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    vocab_size = 256 + len(SPECIALS)
    pad_id = 256
    bos_id = 257
    eos_id = 258
    image_id = 259
    video_id = 260

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        # With a capturing group, re.split puts the matched specials at the odd indices.
        for index, piece in enumerate(self._split.split(text)):
            if index % 2:
                ids.append(self._specials[piece])
            else:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in _check_ids(ids, self.vocab_size):
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if not skip_special:
                parts.append(self._by_id[i])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def token_to_id(self, token: str) -> int:
        if token in self._specials:
            return self._specials[token]
        raw = token.encode("utf-8")
        if len(raw) == 1:
            return raw[0]
        raise TokenizerError(f"token {token!r} is not in the byte tokenizer: its tokens are single bytes "
                             f"and {', '.join(self.SPECIALS)}")

    def save(self, directory: str | Path) -> None:
        # Nothing to write: the byte tokenizer is fully defined by its type.
        Path(directory).mkdir(parents=True, exist_ok=True)

    def describe(self) -> dict[str, Any]:
        return {"type": "byte"}

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=263)"


# Names that pretrained tokenizers use, tried in order among the file's added tokens when neither
# an override nor a config file names the token.
_GUESSES = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
}


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as exc:
        raise TokenizerError("the 'hf' tokenizer needs the tokenizers package: pip install tokenizers") from exc
    return tokenizers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}; fix or delete the file") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _token_content(value: Any, source: Path, key: str) -> str | None:
    """A special-token entry as written by HF: a string, {"content": ...} or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{source}: {key} must be a string or {{\"content\": string}}, got {value!r}")


class HFTokenizer:
    """A local ``tokenizer.json`` (HF `tokenizers`), with ``<image>``/``<video>`` added as specials.

    bos/eos/pad come from, in order: the explicit `bos_token`/`eos_token`/`pad_token`
    arguments; ``tokenizer_config.json`` then ``special_tokens_map.json`` next to the file (a
    key present with null means "none", as Qwen writes bos); well-known names among the file's
    added tokens. pad falls back to eos; a missing eos is an error. `extra_special_tokens`
    (e.g. the ChatML markers a template needs) are added when missing. Added tokens get new ids
    at the end, so a pretrained model's embedding must grow to `vocab_size`.
    """

    def __init__(self, path: str | Path, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, extra_special_tokens: Iterable[str] = ()):
        tokenizers = _import_tokenizers()
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist; set the tokenizer spec's 'path' to "
                                 f"a tokenizer.json (relative to the model directory)")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse error
            raise TokenizerError(f"cannot load {path} as a tokenizers tokenizer.json: {exc}") from exc
        self.path = path

        from_files = self._config_tokens(path.parent)
        overrides = {"bos": bos_token, "eos": eos_token, "pad": pad_token}
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        chosen = {role: self._choose(role, overrides[role], from_files, added) for role in ("bos", "eos", "pad")}
        if chosen["eos"] is None:
            raise TokenizerError(
                f"cannot tell the end-of-sequence token of {path}: no eos_token in {CONFIG_FILE} or "
                f"{SPECIAL_MAP_FILE} next to it, and no added token named {', '.join(_GUESSES['eos'])}; "
                f"set eos_token: '<token>' in the tokenizer spec")
        chosen["pad"] = chosen["pad"] or chosen["eos"]
        self._bos, self._eos, self._pad = chosen["bos"], chosen["eos"], chosen["pad"]

        # Marking bos/eos/pad special keeps their ids (they are in the vocabulary) and makes
        # decode(skip_special=True) drop them; the media tokens and extras are new when missing.
        wanted = [t for t in (self._bos, self._eos, self._pad) if t is not None]
        wanted += [IMAGE_TOKEN, VIDEO_TOKEN, *extra_special_tokens]
        self._tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in wanted])
        # Largest id + 1 rather than a count: added-token ids need not be contiguous. Computed once,
        # as decode checks ids against it and get_vocab copies the whole vocabulary.
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def _config_tokens(self, directory: Path) -> dict[str, tuple[str | None, Path]]:
        """role -> (token or None, file it came from), from the HF config files next to the tokenizer."""
        found: dict[str, tuple[str | None, Path]] = {}
        for name in (CONFIG_FILE, SPECIAL_MAP_FILE):  # tokenizer_config.json wins
            source = directory / name
            if not source.is_file():
                continue
            data = _read_json(source)
            for role in ("bos", "eos", "pad"):
                key = f"{role}_token"
                if key in data and role not in found:
                    found[role] = (_token_content(data[key], source, key), source)
        return found

    def _choose(self, role: str, override: str | None, from_files: dict, added: set[str]) -> str | None:
        key = f"{role}_token"
        if override is not None:
            token, source = override, f"the tokenizer spec's {key}"
        elif role in from_files:
            token, path = from_files[role]
            source = f"{path} ({key})"
        else:
            return next((g for g in _GUESSES[role] if g in added), None)
        if token is not None and self._tok.token_to_id(token) is None:
            raise TokenizerError(f"{source} names {token!r}, which is not a token of {self.path}; "
                                 f"fix it or set {key} in the tokenizer spec to one of its tokens")
        return token

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self.token_to_id(self._pad)

    @property
    def bos_id(self) -> int | None:
        return None if self._bos is None else self.token_to_id(self._bos)

    @property
    def eos_id(self) -> int:
        return self.token_to_id(self._eos)

    @property
    def image_id(self) -> int:
        return self.token_to_id(IMAGE_TOKEN)

    @property
    def video_id(self) -> int:
        return self.token_to_id(VIDEO_TOKEN)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: the file's post-processor must not add bos/eos; templates do.
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return self._tok.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"token {token!r} is not in the vocabulary of {self.path}")
        return i

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))  # includes the added special tokens
        config_path = directory / CONFIG_FILE
        # Update rather than replace, so saving next to an HF tokenizer keeps its other keys.
        config = _read_json(config_path) if config_path.is_file() else {}
        config.update(bos_token=self._bos, eos_token=self._eos, pad_token=self._pad)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def describe(self) -> dict[str, Any]:
        return {"type": "hf", "path": TOKENIZER_FILE}

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


_SPEC_KEYS = {
    "byte": ("type",),
    "hf": ("type", "path", "bos_token", "eos_token", "pad_token", "extra_special_tokens"),
}


def load_tokenizer(spec: Mapping[str, Any] | None = None, *, base_dir: str | Path | None = None) -> Tokenizer:
    """Build a tokenizer from a spec: None or ``{"type": "byte"}``, or ``{"type": "hf", "path": ...}``.

    A relative hf ``path`` is taken from `base_dir` (the model directory); the other hf keys
    are `HFTokenizer`'s keyword arguments.
    """
    if spec is None:
        return ByteTokenizer()
    if not isinstance(spec, Mapping):
        raise TokenizerError(f"tokenizer spec must be a mapping such as {{type: byte}}, got {spec!r}")
    kind = spec.get("type", "byte")
    if not isinstance(kind, str) or kind not in _SPEC_KEYS:
        raise TokenizerError(f"tokenizer spec: {unknown('tokenizer type', kind, _SPEC_KEYS)}")
    for key in spec:
        if key not in _SPEC_KEYS[kind]:
            raise TokenizerError(f"tokenizer spec (type {kind!r}): {unknown('key', key, _SPEC_KEYS[kind])}")
    if kind == "byte":
        return ByteTokenizer()

    if not isinstance(spec.get("path"), str):
        raise TokenizerError("tokenizer spec (type 'hf') needs 'path': the tokenizer.json file, "
                             "relative to the model directory")
    for key in ("bos_token", "eos_token", "pad_token"):
        if not isinstance(spec.get(key), (str, type(None))):
            raise TokenizerError(f"tokenizer spec: {key} must be a token string, got {spec[key]!r}")
    extras = spec.get("extra_special_tokens", [])
    if not isinstance(extras, list) or not all(isinstance(t, str) for t in extras):
        raise TokenizerError(f"tokenizer spec: extra_special_tokens must be a list of strings, got {extras!r}")
    path = Path(spec["path"])
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return HFTokenizer(path, bos_token=spec.get("bos_token"), eos_token=spec.get("eos_token"),
                       pad_token=spec.get("pad_token"), extra_special_tokens=extras)
