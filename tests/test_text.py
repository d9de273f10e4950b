"""Text side: byte and HF tokenizers, tokenizer specs, conversation templates and their labels."""

import json
import re
import sys

import pytest

from hybrid_mllm.core import HybridError
from hybrid_mllm.core.text import (
    IGNORE_INDEX,
    ByteTokenizer,
    HFTokenizer,
    TemplateError,
    Tokenizer,
    TokenizerError,
    get_template,
    load_tokenizer,
)

CORPUS = ["a cat sat on the mat", "the dog ate the cat", "what is in the image", "hello world"]
LLAVA = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "A cat."},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "Yes."},
]
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the human's questions.")


def supervised(rendered, tok):
    """The supervised spans, decoded with specials, after checking labels copy ids there."""
    spans, span = [], []
    for i, label in zip(rendered.ids, rendered.labels, strict=True):
        if label == IGNORE_INDEX:
            if span:
                spans.append(span)
            span = []
        else:
            assert label == i
            span.append(i)
    if span:
        spans.append(span)
    return [tok.decode(s, skip_special=False) for s in spans]


def text(rendered, tok):
    return tok.decode(rendered.ids, skip_special=False)


# --- byte tokenizer -------------------------------------------------------------------------


def test_byte_layout_and_protocol():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 263
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.video_id) == (256, 257, 258, 259, 260)
    assert tok.special_tokens["<|im_start|>"] == 261 and tok.special_tokens["<|im_end|>"] == 262
    assert tok.token_to_id("a") == 97 and tok.token_to_id("</s>") == 258


def test_byte_round_trip_with_emoji_and_accents():
    tok = ByteTokenizer()
    s = "héllo wörld 🙂👍🏽 日本"
    ids = tok.encode(s)
    assert ids == list(s.encode("utf-8"))
    assert tok.decode(ids) == s


def test_byte_decode_replaces_invalid_utf8():
    tok = ByteTokenizer()
    assert tok.decode([0xFF, 0xFE, 65]) == "\ufffd\ufffdA"
    emoji = tok.encode("🙂")
    assert tok.decode(emoji[:2] + [tok.image_id] + emoji, skip_special=False) == "\ufffd<image>🙂"


def test_byte_specials_inside_text_are_single_ids():
    tok = ByteTokenizer()
    ids = tok.encode("a<image>b<video></s><s>")
    assert ids == [97, 259, 98, 260, 258, 257]
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special=False) == "a<image>b<video></s><s>"
    assert tok.encode("<imag>") == list(b"<imag>")  # not a special: plain bytes


def test_byte_errors():
    tok = ByteTokenizer()
    with pytest.raises(TokenizerError, match=r"^cannot decode id 263: this tokenizer has ids 0\.\.262; "):
        tok.decode([1, 263])
    with pytest.raises(TokenizerError, match=r"^token 'ab' is not in the byte tokenizer"):
        tok.token_to_id("ab")


def test_byte_spec_save_describe_reload(tmp_path):
    tok = load_tokenizer(None)
    assert isinstance(tok, ByteTokenizer)
    tok.save(tmp_path / "m")
    assert tok.describe() == {"type": "byte"}
    assert isinstance(load_tokenizer(tok.describe(), base_dir=tmp_path / "m"), ByteTokenizer)


# --- HF tokenizer ---------------------------------------------------------------------------


def write_bpe(directory, specials=("<s>", "</s>", "<pad>"), config=None):
    """Train a tiny byte-level BPE on CORPUS; save tokenizer.json (+ tokenizer_config.json)."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory / "tokenizer.json"


def write_wordlevel(directory, vocab):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers

    raw = RawTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


@pytest.fixture
def hf_dir(tmp_path):
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": None}
    write_bpe(tmp_path / "tok", config=config)
    return tmp_path / "tok"


def test_hf_loaded_through_spec_finds_specials_from_config(hf_dir):
    tok = load_tokenizer({"type": "hf", "path": "tok/tokenizer.json"}, base_dir=hf_dir.parent)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    assert tok.pad_id == tok.eos_id  # pad_token: null -> falls back to eos
    assert tok.image_id >= 3 and tok.video_id == tok.image_id + 1  # appended after the trained vocabulary
    assert tok.vocab_size == tok.video_id + 1
    assert {"<s>", "</s>", "<pad>", "<image>", "<video>"} <= set(tok.special_tokens)


def test_hf_round_trip_and_specials_in_text(hf_dir):
    tok = load_tokenizer({"type": "hf", "path": str(hf_dir)})  # a directory means its tokenizer.json
    ids = tok.encode("<image>\nthe cat sat 🙂</s>")
    assert ids[0] == tok.image_id and ids[-1] == tok.eos_id
    assert ids.count(tok.image_id) == 1
    assert tok.decode(ids, skip_special=False) == "<image>\nthe cat sat 🙂</s>"
    assert tok.decode(ids) == "\nthe cat sat 🙂"
    assert tok.encode("the") == [tok.token_to_id("the")]  # no bos/eos added by encode


def test_hf_guesses_eos_from_added_tokens_and_overrides_win(tmp_path):
    path = write_bpe(tmp_path, specials=("<|endoftext|>",))
    tok = load_tokenizer({"type": "hf", "path": str(path)})
    assert tok.bos_id is None and tok.eos_id == tok.pad_id == tok.token_to_id("<|endoftext|>")
    tok = load_tokenizer({"type": "hf", "path": str(path), "eos_token": "cat", "pad_token": "<|endoftext|>"})
    assert tok.eos_id == tok.token_to_id("cat") and "cat" in tok.special_tokens
    assert tok.pad_id == tok.token_to_id("<|endoftext|>")


def test_hf_special_tokens_map_is_read(tmp_path):
    path = write_wordlevel(tmp_path, {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hi": 3})
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "[CLS]", "eos_token": "[SEP]"}))
    tok = load_tokenizer({"type": "hf", "path": path.name}, base_dir=tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    assert tok.encode("hi <image> hi") == [3, tok.image_id, 3]
    assert tok.decode([1, 3, 2]) == "hi"


def test_hf_save_describe_reload_keeps_ids(hf_dir, tmp_path):
    tok = load_tokenizer({"type": "hf", "path": str(hf_dir), "extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.save(tmp_path / "ckpt")
    assert tok.describe() == {"type": "hf", "path": "tokenizer.json"}
    again = load_tokenizer(tok.describe(), base_dir=tmp_path / "ckpt")
    sample = "<|im_start|>user\n<image>the cat<|im_end|></s>"
    assert again.encode(sample) == tok.encode(sample)
    assert (again.bos_id, again.eos_id, again.pad_id, again.image_id, again.video_id, again.vocab_size) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.image_id, tok.video_id, tok.vocab_size)


def test_hf_errors(tmp_path, hf_dir, monkeypatch):
    no_eos = write_wordlevel(tmp_path / "w", {"[UNK]": 0, "hi": 1})
    with pytest.raises(TokenizerError, match=r"^cannot tell the end-of-sequence token of .*tokenizer\.json: .*"
                                             r"set eos_token: '<token>' in the tokenizer spec$"):
        load_tokenizer({"type": "hf", "path": str(no_eos)})
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json \(eos_token\) names '<eos>', which is not a "
                                             r"token of .*; fix it or set eos_token in the tokenizer spec"):
        load_tokenizer({"type": "hf", "path": str(hf_dir)})
    with pytest.raises(TokenizerError, match=r"^tokenizer file .*nope\.json does not exist; set the tokenizer "
                                             r"spec's 'path'"):
        load_tokenizer({"type": "hf", "path": "nope.json"}, base_dir=tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"^cannot load .*bad\.json as a tokenizers tokenizer\.json"):
        load_tokenizer({"type": "hf", "path": str(tmp_path / "bad.json")})
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(TokenizerError, match=r"pip install tokenizers"):
        load_tokenizer({"type": "hf", "path": str(hf_dir)})


def test_spec_errors():
    with pytest.raises(TokenizerError, match=re.escape(
            "tokenizer spec: unknown tokenizer type 'hff'. Did you mean 'hf'? Available: byte, hf")):
        load_tokenizer({"type": "hff"})
    with pytest.raises(TokenizerError, match=re.escape(
            "tokenizer spec (type 'hf'): unknown key 'paht'. Did you mean 'path'? Available: ")):
        load_tokenizer({"type": "hf", "paht": "x"})
    with pytest.raises(TokenizerError, match=r"^tokenizer spec \(type 'hf'\) needs 'path'"):
        load_tokenizer({"type": "hf"})
    with pytest.raises(TokenizerError, match=r"^tokenizer spec: extra_special_tokens must be a list of strings"):
        load_tokenizer({"type": "hf", "path": "x", "extra_special_tokens": "<|im_end|>"})
    assert issubclass(TokenizerError, HybridError) and issubclass(TemplateError, HybridError)


# --- templates ------------------------------------------------------------------------------


def test_plain_renders_placeholders_then_caption():
    tok = ByteTokenizer()
    r = get_template("plain").render(LLAVA[:2], tok)
    assert text(r, tok) == "<s><image>A cat.</s>"  # the human's text is dropped, as in LLaVA
    assert supervised(r, tok) == ["A cat.</s>"]
    g = get_template("plain").render(LLAVA[:1], tok, add_generation_prompt=True)
    assert text(g, tok) == "<s><image>"


def test_chatml_multi_turn_with_system():
    tok = ByteTokenizer()
    r = get_template("chatml").render([{"role": "system", "content": "Be brief."}] + LLAVA, tok)
    assert text(r, tok) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                            "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
                            "<|im_start|>assistant\nA cat.<|im_end|>\n"
                            "<|im_start|>user\nSure?<|im_end|>\n"
                            "<|im_start|>assistant\nYes.<|im_end|>\n")
    assert supervised(r, tok) == ["A cat.<|im_end|>", "Yes.<|im_end|>"]
    assert r.ids.count(tok.image_id) == 1
    assert len(r.ids) == len(r.labels)


def test_chatml_generation_prompt_is_prefix_of_training_ids():
    tok = ByteTokenizer()
    chatml = get_template("chatml")
    g = chatml.render(LLAVA[:3], tok, add_generation_prompt=True)
    assert text(g, tok) == ("<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
                            "A cat.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n")
    assert chatml.render(LLAVA, tok).ids[:len(g.ids)] == g.ids
    assert chatml.stop_token_ids(tok) == [262, 258] and chatml.stop_strings == ("<|im_end|>",)


def test_vicuna_default_system_multi_turn_and_generation():
    tok = ByteTokenizer()
    vicuna = get_template("vicuna")
    r = vicuna.render(LLAVA, tok)
    assert text(r, tok) == (f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
                            "USER: Sure? ASSISTANT: Yes.</s>")
    assert supervised(r, tok) == ["A cat.</s>", "Yes.</s>"]
    g = vicuna.render([{"role": "system", "content": "Hi."}, LLAVA[0]], tok, add_generation_prompt=True)
    assert text(g, tok) == "<s>Hi. USER: <image>\nWhat is it? ASSISTANT: "
    assert all(label == IGNORE_INDEX for label in g.labels)
    assert vicuna.stop_token_ids(tok) == [tok.eos_id]


def test_templates_with_hf_tokenizer(hf_dir):
    tok = load_tokenizer({"type": "hf", "path": str(hf_dir)})
    r = get_template("vicuna").render(LLAVA[:2], tok)
    assert r.ids[0] == tok.bos_id and r.ids[-1] == tok.eos_id
    assert supervised(r, tok) == ["A cat.</s>"]
    with pytest.raises(TemplateError, match=re.escape(
            "template 'chatml' needs the special token '<|im_start|>', which the tokenizer lacks; add "
            "extra_special_tokens: ['<|im_start|>', '<|im_end|>'] to the tokenizer spec")):
        get_template("chatml").render(LLAVA, tok)
    tok = load_tokenizer({"type": "hf", "path": str(hf_dir), "extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    r = get_template("chatml").render(LLAVA[:2], tok)
    assert text(r, tok) == "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    assert supervised(r, tok) == ["A cat.<|im_end|>"]


@pytest.mark.parametrize("name, messages, kwargs, message", [
    ("chatml", [], {}, "the conversation is empty: give at least one user message"),
    ("chatml", [{"role": "bot", "content": "x"}], {},
     "message 0: unknown role 'bot'. Available: assistant, gpt, human, system, user"),
    ("chatml", [{"role": "user", "content": "a"}, {"role": "usr", "content": "b"}], {},
     "message 1: unknown role 'usr'. Did you mean 'user'? Available: assistant, gpt, human, system, user"),
    ("vicuna", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], {},
     ("message 1 is user but template 'vicuna' expects assistant there: after an optional system message, "
      "roles alternate user, assistant, user, ...")),
    ("chatml", [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], {},
     ("message 1 is assistant but template 'chatml' expects user there: after an optional system message, "
      "roles alternate user, assistant, user, ...")),
    ("chatml", [{"role": "system", "content": "s"}], {},
     "message 0 (system) is the whole conversation: add a user message after it"),
    ("plain", [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>"}], {},
     "message 0 (system): template 'plain' has no system prompt; drop the message or choose another template"),
    ("vicuna", LLAVA[:2], {"add_generation_prompt": True},
     "message 1 is assistant, but add_generation_prompt=True needs the conversation to end with a user message"),
    ("chatml", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "see <image>"}], {},
     "message 1 (assistant) contains '<image>': images and videos go in user messages"),
    ("chatml", [{"role": "user"}], {}, "message 0 (user): 'content' (or LLaVA's 'value') must be a string, got None"),
])
def test_template_errors(name, messages, kwargs, message):
    with pytest.raises(TemplateError, match=f"^{re.escape(message)}$"):
        get_template(name).render(messages, ByteTokenizer(), **kwargs)


def test_unknown_template_suggests_and_lists():
    with pytest.raises(TemplateError, match=re.escape(
            "unknown template 'chatm'. Did you mean 'chatml'? Available: chatml, plain, vicuna")):
        get_template("chatm")
