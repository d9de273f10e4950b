"""The parity gate: every export runs in ONNX Runtime against PyTorch before it is kept.

Decoder: fresh random embeddings at lengths and batch sizes the exporter never saw
(it traced batch 2, length 5, 3 cached positions), from an empty state and from
non-empty states, each runtime carrying its own state from call to call:

- batch 2 with left padding: prefill 37 from nothing -> decode 1 -> prefill 300 more;
- batch 1: decode 1 from nothing, twice (the first token of a generation);
- batch 3: exactly one scan chunk (16), then 17 more (a partial chunk).

Vision: the encoder and both connectors on 1, 2 and 5 tiles. Every output (logits, every
state tensor, features) must satisfy ``max |ort - torch| <= tol * max(1, max |torch|)``;
boolean outputs (the KV mask) must be equal. A graph whose dynamic axis was specialised
fails here: ONNX Runtime rejects the other shapes or returns wrong numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hybrid_mllm.core.mllm import HybridMLLM
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.runtime.errors import RuntimeUnavailableError
from hybrid_mllm.runtime.onnx.sessions import make_session

from .decoder import StateEntry, example_inputs
from .errors import ParityError, first_line

# Stated tolerances, relative to max(1, max |reference|), per activation dtype of the export.
TOLERANCE = {"float32": 1e-4, "float16": 3e-2}
DECODER_CHAINS = (  # (name, batch, left padding of sample 0, lengths in order)
    ("prefill-decode-prefill", 2, 11, (37, 1, 300)),
    ("decode-from-empty", 1, 0, (1, 1)),
    ("chunk-boundary", 3, 0, (16, 17)),
)
TILE_COUNTS = (1, 2, 5)


def check_decoder(lm: HybridLM, session, layout: list[StateEntry], *, tol: float, seed: int = 0,
                  chains=DECODER_CHAINS) -> dict[str, float]:
    """Run `chains` (default `DECODER_CHAINS`) through `session` and `lm` (PyTorch, float32); returns
    the largest relative difference per chain, or raises `ParityError` naming the call that failed."""
    g = torch.Generator().manual_seed(seed)
    dtype = np.dtype(next(i for i in _inputs(session) if i[0] == "inputs_embeds")[1])
    measured = {}
    for name, batch, padding, lengths in chains:
        torch_state = lm.init_state(batch)
        ort_state = [t.numpy().astype(e.dtype) for e, t in zip(layout, [t for layer in torch_state for t in layer])]
        past, worst = 0, 0.0
        for i, length in enumerate(lengths):
            embeds, mask, _ = example_inputs(lm, batch, length, 0, generator=g)
            if i == 0 and padding:
                mask[0, :padding] = False
                embeds[0, :padding] = 0.0
            where = f"decoder, {name} call {i + 1}: batch {batch}, length {length}, {past} cached positions"
            feed = {"inputs_embeds": embeds.numpy().astype(dtype), "mask": mask.numpy(),
                    **{e.input: s for e, s in zip(layout, ort_state)}}
            outputs = _run(session, feed, where)
            with torch.no_grad():
                ref = lm(inputs_embeds=embeds, mask=mask, state=torch_state, num_logits=1)
            references = [ref.logits[:, -1], *[t for layer in ref.state for t in layer]]
            names = ["logits", *[e.output for e in layout]]
            worst = max(worst, _compare(names, outputs, references, tol, where))
            torch_state, ort_state, past = ref.state, outputs[1:], past + length
        measured[name] = worst
    return measured


def check_vision(model: HybridMLLM, sessions: dict, *, tol: float, seed: int = 0) -> dict[str, float]:
    """Encoder and connectors on `TILE_COUNTS` random tiles, chained as at run time."""
    g = torch.Generator().manual_seed(seed)
    size = model.encoder.image_size
    measured = {"encoder": 0.0, "image_connector": 0.0, "video_connector": 0.0}
    for n in TILE_COUNTS:
        pixels = torch.randn(n, 3, size, size, generator=g)
        where = f"encoder on {n} tile(s)"
        dtype = np.dtype(_inputs(sessions["encoder"])[0][1])
        patches, prefix = _run(sessions["encoder"], {"pixels": pixels.numpy().astype(dtype)}, where)
        with torch.no_grad():
            out = model.encoder(pixels)
        measured["encoder"] = max(measured["encoder"], _compare(
            ["patches", "prefix"], [patches, prefix], [out.patches, out.prefix], tol, where))
        for key, connector in (("image_connector", model.connector), ("video_connector", model.video_connector)):
            where = f"{key} on {n} tile(s)"
            session = sessions[key]
            feed = {"patches": patches}
            if len(session.get_inputs()) == 2:
                feed["prefix"] = prefix
            got = _run(session, feed, where)
            with torch.no_grad():
                want = [connector(out.patches)]
                if "prefix" in feed:
                    want.append(connector(out.prefix[:, :, None, :])[:, :, 0])
            measured[key] = max(measured[key], _compare(["grid", "prefix_tokens"][:len(want)], got, want, tol, where))
    return measured


def open_session(path, **options):
    """`make_session`, where a graph ONNX Runtime cannot even load fails the gate."""
    try:
        return make_session(path, **options)
    except RuntimeUnavailableError:
        raise
    except Exception as e:  # ORT's load errors (shape inference, unknown ops) have their own types
        raise ParityError(f"parity gate: ONNX Runtime could not load {path.name}: {first_line(e)}") from None


def _inputs(session) -> list[tuple[str, str]]:
    types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bool)": "bool"}
    return [(i.name, types.get(i.type, "float32")) for i in session.get_inputs()]


def _run(session, feed: dict, where: str) -> list[np.ndarray]:
    try:
        return session.run(None, feed)
    except Exception as e:  # ORT raises its own exception types; any failure fails the gate
        raise ParityError(f"parity gate: ONNX Runtime failed on the {where}: {first_line(e)}") from None


def _compare(names: list[str], outputs: list[np.ndarray], references: list[Tensor], tol: float, where: str) -> float:
    """The largest relative difference over the outputs; raises `ParityError` above `tol`."""
    worst = 0.0
    for name, got, ref in zip(names, outputs, references, strict=True):
        ref = ref.detach()
        if tuple(got.shape) != tuple(ref.shape):
            raise ParityError(f"parity gate: {where}: output '{name}' has shape {tuple(got.shape)}, "
                              f"PyTorch gives {tuple(ref.shape)}")
        if ref.dtype == torch.bool:
            if not np.array_equal(got, ref.numpy()):
                raise ParityError(f"parity gate: {where}: boolean output '{name}' differs from PyTorch")
            continue
        ref32 = ref.float().numpy()
        scale = max(1.0, float(np.abs(ref32).max(initial=0.0)))
        diff = float(np.abs(got.astype(np.float32) - ref32).max(initial=0.0)) / scale
        if not diff <= tol:  # also catches NaN
            raise ParityError(f"parity gate: {where}: output '{name}' differs from PyTorch by {diff:.2e} "
                              f"(relative to max(1, |PyTorch|)), above the tolerance {tol:.0e}")
        worst = max(worst, diff)
    return worst
