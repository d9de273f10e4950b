"""The same random Jamba in three forms, for bench_llama_cpp.py: Hugging Face, GGUF, ours.

transformers builds a random ``JambaForCausalLM`` and saves it with a tokenizer trained
here; llama.cpp's own converter (``convert_hf_to_gguf.py`` from the llama.cpp sources that
llama-cpp-python's sdist vendors, with their ``gguf-py``) writes the GGUF files, and
``hybrid-convert`` writes our checkpoint. Nothing of llama.cpp is imported or copied: the
converter runs as a subprocess from the directory given.

Why this tokenizer: llama.cpp's Jamba converter reads no ``tokenizer.model`` here, so it
takes the Llama Hugging Face path (``gguf.LlamaHfVocab``), which accepts only a
sentencepiece-style BPE ``tokenizer.json``: a BPE model with ``byte_fallback`` and a
``Sequence`` decoder (the form Llama 2 and Jamba ship). A GPT-2-style byte-level BPE is
refused there ("Cannot find Llama BPE tokenizer"). The benchmark feeds token ids to both
engines, so the tokenizer only has to be one the converter accepts, with exactly
``vocab_size`` entries (llama.cpp checks the embedding rows against it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# name -> (d_model, vocab_size, intermediate_size, attention heads): 15.6M and 366M parameters
SIZES = {"small": (256, 1024, 768, 8), "large": (1024, 32000, 4096, 16)}
SPECIALS = ["<unk>", "<s>", "</s>"]


@dataclass
class Forms:
    """Where one size's three forms live."""

    hf: Path
    ours: Path
    gguf: dict[str, Path]  # "float32" / "bfloat16" -> file

    @classmethod
    def under(cls, root: Path) -> Forms:
        return cls(root / "hf", root / "ours", {"float32": root / "f32.gguf", "bfloat16": root / "bf16.gguf"})

    def complete(self) -> bool:
        return (self.hf / "config.json").exists() and (self.ours / "config.yaml").exists() \
            and all(p.exists() for p in self.gguf.values())


def _corpus(megabytes: float) -> list[str]:
    """Lines of the Python standard library's sources: text every machine here has."""
    lines, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines.extend(text.splitlines())
        size += len(text)
        if size > megabytes * 2**20:
            break
    return lines


def train_tokenizer(vocab_size: int):
    """A sentencepiece-style BPE (byte fallback, ``▁`` for spaces) of exactly `vocab_size` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + byte_tokens, show_progress=False)
    tok.train_from_iterator(_corpus(2 + vocab_size / 1000), trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"the tokenizer reached {tok.get_vocab_size()} of {vocab_size} entries: train on more text")
    return tok


def build_hf(size: str, out: Path, seed: int = 0):
    """Save a random JambaForCausalLM of `size` with its tokenizer in `out`; returns the model."""
    import torch  # not at the top: the benchmark's workers set OpenMP's policy before torch loads
    import transformers

    d_model, vocab, d_ff, heads = SIZES[size]
    config = transformers.JambaConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=8,
        num_attention_heads=heads, num_key_value_heads=2, attn_layer_period=8, attn_layer_offset=4,
        num_experts=4, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=16384,
    )
    torch.manual_seed(seed)
    model = transformers.JambaForCausalLM(config).eval()
    model.save_pretrained(out)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(vocab), unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return model


def find_converter(llama_cpp: str | None) -> Path:
    """The llama.cpp source directory holding ``convert_hf_to_gguf.py`` (and ``gguf-py``)."""
    where = llama_cpp or os.environ.get("LLAMA_CPP_DIR")
    if not where or not (Path(where) / "convert_hf_to_gguf.py").is_file():
        sys.exit("need llama.cpp's converter: pip download --no-binary :all: --no-deps llama-cpp-python, unpack it "
                 "and pass --llama-cpp DIR/vendor/llama.cpp (or set LLAMA_CPP_DIR)")
    return Path(where)


def build(size: str, root: Path, llama_cpp: Path, rebuild: bool = False) -> Forms:
    """All three forms of `size` under `root` (kept between runs unless `rebuild`)."""
    forms = Forms.under(root)
    if forms.complete() and not rebuild:
        return forms
    root.mkdir(parents=True, exist_ok=True)
    build_hf(size, forms.hf)
    for dtype, path in forms.gguf.items():
        outtype = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(forms.hf),
                        "--outfile", str(path), "--outtype", outtype], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "hybrid_mllm.convert.cli", str(forms.hf), str(forms.ours), "--overwrite"],
                   check=True, capture_output=True)
    return forms
