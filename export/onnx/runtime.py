"""Run an export directory with ONNX Runtime behind the same API as PyTorch.

- `OrtDecoder` implements `hybrid_mllm.core.generate.Decoder` (prefill, step) over the
  decoder graph, so `generate` and `Pipeline.answer(..., decoder=...)` work unchanged;
  the state is the graph's state tensors as numpy arrays.
- `OrtMLLM` is what `Pipeline` needs from a model: token embeddings from the saved matrix,
  visual tokens from the vision graphs, and the splice done by `HybridMLLM`'s own code
  (its methods are borrowed, not copied, so both runtimes splice identically).
- `load_onnx` checks the manifest and builds both, plus the tokenizer and config;
  `LoadedOnnx.pipeline()` is a `Pipeline` that generates with ONNX Runtime by default.

Tensors cross into PyTorch only at that API boundary (CPU tensors viewing numpy memory):
the graphs, embeddings and manifest need no PyTorch, and another runtime can use them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from hybrid_mllm.core.config import Config, load_config
from hybrid_mllm.core.mllm import ENCODER_BATCH, HybridMLLM
from hybrid_mllm.core.pipeline import Pipeline
from hybrid_mllm.core.text import Tokenizer, load_tokenizer

from .errors import ManifestError
from .manifest import check_graph, manifest_file, read_manifest
from .sessions import make_session

DEFAULT_PREFILL_CHUNK = 1024  # tokens per decoder call in prefill: bounds the attention scores' memory


class OrtDecoder:
    """The `Decoder` protocol over ``decoder.onnx``. State: tuple of numpy arrays, graph order."""

    def __init__(self, session, manifest: dict, embeddings: np.ndarray, *, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.session, self.embeddings, self.prefill_chunk = session, embeddings, prefill_chunk
        self.layout = manifest["state"]
        self.dtype = np.dtype(manifest["dtype"])
        self.output_names = ["logits", *[e["output"] for e in self.layout]]

    def initial_state(self, batch: int) -> tuple[np.ndarray, ...]:
        """Zeros, with 0 cached positions on the growing axes."""
        state = []
        for entry in self.layout:
            shape = [batch if d == "batch" else 0 if d == "past_sequence" else d for d in entry["shape"]]
            state.append(np.zeros(shape, dtype=np.dtype(entry["dtype"])))
        return tuple(state)

    def run(self, embeds: np.ndarray, mask: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        """One graph call: embeds (B, L, d), mask (B, L) bool -> logits (B, vocab), new state."""
        feed = {"inputs_embeds": np.ascontiguousarray(embeds, dtype=self.dtype), "mask": np.ascontiguousarray(mask),
                **{e["input"]: s for e, s in zip(self.layout, state)}}
        logits, *new_state = self.session.run(self.output_names, feed)
        return logits, tuple(new_state)

    def prefill(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        embeds_np, mask_np = embeds.detach().cpu().numpy(), mask.cpu().numpy().astype(bool)
        state = self.initial_state(embeds_np.shape[0])
        logits = None
        for start in range(0, embeds_np.shape[1], self.prefill_chunk):
            part = slice(start, start + self.prefill_chunk)
            logits, state = self.run(embeds_np[:, part], mask_np[:, part], state)
        if logits is None:
            raise ValueError("prefill needs at least one token")
        return torch.from_numpy(logits.astype(np.float32)), state

    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        ids = token_ids.detach().cpu().numpy()  # (B, 1)
        logits, state = self.run(self.embeddings[ids], np.ones(ids.shape, dtype=bool), state)
        return torch.from_numpy(logits.astype(np.float32)), state


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder facts `Pipeline` reads (tile size, patch grid, normalisation)."""

    image_size: int
    grid: tuple[int, int]
    out_dim: int
    num_prefix_tokens: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class OrtConnector:
    """A connector graph; ``out_grid`` as the manifest recorded it for the encoder's grid."""

    def __init__(self, session, grid: tuple[int, int], encoder_grid: tuple[int, int]):
        self.session, self.grid, self.encoder_grid = session, grid, encoder_grid

    def out_grid(self, grid) -> tuple[int, int]:
        if tuple(grid) != self.encoder_grid:
            raise ValueError(f"this exported connector knows the grid {self.encoder_grid} only, not {tuple(grid)}")
        return self.grid


class OrtMLLM:
    """The exported model where `Pipeline` expects a `HybridMLLM`: same attributes, same splice."""

    embed = HybridMLLM.embed
    encode_visuals = HybridMLLM.encode_visuals
    encode_image = HybridMLLM.encode_image
    encode_video = HybridMLLM.encode_video
    _splice = HybridMLLM._splice
    _image_tokens = HybridMLLM._image_tokens
    _video_tokens = HybridMLLM._video_tokens
    has_vision = HybridMLLM.has_vision

    def __init__(self, out_dir: Path, manifest: dict, embeddings: np.ndarray, *, provider: str,
                 threads: int | None = None):
        self.lm = nn.Module()
        self.lm.embed = nn.Embedding.from_pretrained(torch.from_numpy(embeddings))
        self.image_token_id = manifest["special_tokens"]["image"]
        self.video_token_id = manifest["special_tokens"]["video"]
        self.encoder = self.connector = self.video_connector = None
        self.image_newline = self.frame_separator = None
        self.grid_pos = False
        vision = manifest["vision"]
        if vision is None:
            return
        facts = vision["encoder"]
        self.encoder = EncoderInfo(facts["image_size"], tuple(facts["grid"]), facts["out_dim"],
                                   facts["num_prefix_tokens"], tuple(facts["mean"]), tuple(facts["std"]))
        self.encoder_session = _session(out_dir, manifest, "encoder", provider, threads)
        self.connector = OrtConnector(_session(out_dir, manifest, "image_connector", provider, threads),
                                      tuple(facts["image_grid"]), self.encoder.grid)
        self.video_connector = OrtConnector(_session(out_dir, manifest, "video_connector", provider, threads),
                                            tuple(facts["video_grid"]), self.encoder.grid)
        self.image_newline = _load_optional(out_dir, vision["newline_file"])
        self.frame_separator = _load_optional(out_dir, vision["separator_file"])
        self.grid_pos = vision["grid_pos"]

    def _encode(self, pixels: Tensor, connector: OrtConnector) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> connector grid (N, gh', gw', d), prefix tokens (N, P, d)."""
        dtype = self.lm.embed.weight.numpy().dtype
        pixels_np = pixels.detach().cpu().numpy().astype(dtype)
        grids, prefixes = [], []
        for start in range(0, pixels_np.shape[0], ENCODER_BATCH):
            patches, prefix = self.encoder_session.run(None, {"pixels": pixels_np[start:start + ENCODER_BATCH]})
            feed = {"patches": patches, **({"prefix": prefix} if self.encoder.num_prefix_tokens else {})}
            out = connector.session.run(None, feed)
            grids.append(out[0])
            prefixes.append(out[1] if len(out) > 1 else np.zeros((patches.shape[0], 0, out[0].shape[-1]), dtype))
        return torch.from_numpy(np.concatenate(grids)), torch.from_numpy(np.concatenate(prefixes))


class OnnxPipeline(Pipeline):
    """A `Pipeline` whose default decoder is the export's `OrtDecoder` (not PyTorch's)."""

    def __init__(self, model: OrtMLLM, tokenizer: Tokenizer, config: Config, decoder: OrtDecoder):
        super().__init__(model, tokenizer, config)
        self.decoder = decoder

    def answer(self, requests, generation, *, decoder=None, **kwargs):
        return super().answer(requests, generation, decoder=decoder or self.decoder, **kwargs)


class LoadedOnnx(NamedTuple):
    model: OrtMLLM
    decoder: OrtDecoder
    tokenizer: Tokenizer
    config: Config
    manifest: dict

    def pipeline(self) -> OnnxPipeline:
        return OnnxPipeline(self.model, self.tokenizer, self.config, self.decoder)


def load_onnx(out_dir: str | Path, *, provider: str = "cpu", prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
              threads: int | None = None) -> LoadedOnnx:
    """Check an export directory's manifest and files, and open its graphs on `provider`
    (`threads`: ONNX Runtime's intra-op threads; None: one per core)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    embeddings_file = manifest_file(out_dir, manifest["embeddings"]["file"])
    embeddings = np.load(embeddings_file)
    if list(embeddings.shape) != manifest["embeddings"]["shape"]:
        raise ManifestError(f"{embeddings_file}: shape {list(embeddings.shape)}, "
                            f"the manifest says {manifest['embeddings']['shape']}; re-export")
    decoder = OrtDecoder(_session(out_dir, manifest, "decoder", provider, threads), manifest, embeddings,
                         prefill_chunk=prefill_chunk)
    config = load_config(manifest_file(out_dir, manifest["config_file"]))
    tokenizer = load_tokenizer(manifest["tokenizer"], base_dir=out_dir)
    model = OrtMLLM(out_dir, manifest, embeddings, provider=provider, threads=threads)
    return LoadedOnnx(model, decoder, tokenizer, config, manifest)


def _session(out_dir: Path, manifest: dict, graph: str, provider: str, threads: int | None):
    description = manifest["graphs"][graph]
    custom = graph == "decoder" and manifest["custom_ops"] is not None
    session = make_session(manifest_file(out_dir, description["file"]), provider=provider, custom_ops=custom, threads=threads)
    check_graph(out_dir, description, session)
    return session


def _load_optional(out_dir: Path, name: str | None) -> Tensor | None:
    return None if name is None else torch.from_numpy(np.load(manifest_file(out_dir, name)))
