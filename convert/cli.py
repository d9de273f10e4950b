"""``hybrid-convert SRC OUT``: Hugging Face model directory <-> hybrid-mllm checkpoint.

The direction follows SRC. A Hugging Face directory (``config.json``) becomes ours: a
Jamba, Mamba or Llama causal LM, or a LLaVA / LLaVA-NeXT model, becomes our checkpoint; a
CLIP or SigLIP vision tower becomes timm-named encoder weights plus the ``encoder.yaml``
that loads them. Our checkpoint (``config.yaml``, text-only) becomes a Hugging Face
directory that transformers loads. OUT is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.checkpoint import CONFIG_FILE, load_checkpoint
from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.core.config import Config, load_config

from ._hf_io import HF_CONFIG_FILE, ConversionError, HFWeights, parse_dtype, read_hf_config
from .auto import KINDS, hf_kind
from .hf_lm import convert_hf, save_hf
from .hf_vision import ENCODER_FILE, convert_hf_vision
from .llava import convert_llava


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-convert", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("src", type=Path, help=f"a Hugging Face model directory ({', '.join(KINDS)}) "
                                          "or a hybrid-mllm checkpoint directory")
    p.add_argument("out", type=Path, help="the directory to write (must not exist, unless --overwrite)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="parameter dtype of the output (default: as stored in SRC)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--feature-layer", type=int,
                   help="vision towers only: the block whose output is the feature (default -2, as LLaVA)")
    p.add_argument("--keep-cls", action="store_true", help="vision towers only: keep the CLS token")
    return p


def _counts(names: list[str]) -> str:
    """[mamba, attention, mamba] -> "2 mamba + 1 attention"."""
    return " + ".join(f"{n} {name}" for name, n in Counter(names).items())


def _summary(config: Config) -> str:
    m = config.model
    n_params = sum(p.numel() for p in build_model(config, device="meta").parameters())  # no memory on meta
    return f"{m.n_layer} layers ({_counts(m.layers)}; ffn {_counts(m.ffn_layers)}), {n_params / 1e6:.1f}M parameters"


def _stored_dtype(ckpt_dir: Path) -> torch.dtype:
    """The dtype of our checkpoint's weights (load_checkpoint would otherwise build float32)."""
    with HFWeights(ckpt_dir) as weights:
        return weights.stored_dtype()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    src, out = args.src, args.out
    if not src.is_dir():
        raise ConversionError(f"{src}: no such directory")
    kinds = [f for f in (HF_CONFIG_FILE, CONFIG_FILE) if (src / f).exists()]
    if len(kinds) != 1:
        found = "both" if kinds else "neither"
        raise ConversionError(f"{src} has {found} of {HF_CONFIG_FILE} (a Hugging Face model) and {CONFIG_FILE} "
                              "(a hybrid-mllm checkpoint): cannot tell which way to convert")
    if out.exists() and not args.overwrite:  # before loading anything
        raise ConversionError(f"{out} already exists: choose another directory or pass --overwrite")
    start = time.perf_counter()
    if kinds == [HF_CONFIG_FILE]:
        what = _from_hf(src, out, args)
    else:
        _refuse_vision_flags(args, "a hybrid-mllm checkpoint")
        if load_config(src / CONFIG_FILE).vision is not None:
            raise ConversionError(f"{src} has a vision section: only text-only language models convert "
                                  "to a Hugging Face directory")
        loaded = load_checkpoint(src, dtype=parse_dtype(args.dtype) or _stored_dtype(src))
        config = loaded.config
        out, arch = save_hf(loaded.model.lm, config, out, overwrite=args.overwrite)
        what = f"{src} -> {arch} {out}: {_summary(config)}"
    print(f"{what}, {time.perf_counter() - start:.1f} s")
    return 0


def _from_hf(src: Path, out: Path, args: argparse.Namespace) -> str:
    """Convert with the converter config.json's architecture needs; returns what was written."""
    kind = hf_kind(read_hf_config(src), src)
    options = {"dtype": args.dtype, "overwrite": args.overwrite}
    if kind == "vision":
        layer = -2 if args.feature_layer is None else args.feature_layer
        out, encoder = convert_hf_vision(src, out, feature_layer=layer, keep_cls=args.keep_cls, **options)
        a = encoder["model_args"]
        return (f"{src} -> timm encoder weights {out} ({a['depth']} blocks, width {a['embed_dim']}, patch "
                f"{a['patch_size']}, image {encoder['image_size']}; load them with {out / ENCODER_FILE})")
    _refuse_vision_flags(args, "a LLaVA model (config.json's vision_feature_layer and vision_feature_select_strategy "
                         "decide)" if kind == "llava" else "a language model")
    convert = convert_llava if kind == "llava" else convert_hf
    out, config = convert(src, out, **options)
    return f"{src} -> hybrid-mllm checkpoint {out}: {_summary(config)}"


def _refuse_vision_flags(args: argparse.Namespace, what: str) -> None:
    given = [flag for flag, value in (("--feature-layer", args.feature_layer is not None), ("--keep-cls", args.keep_cls))
             if value]
    if given:
        raise ConversionError(f"{' and '.join(given)}: for vision towers only, not {what}")


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
