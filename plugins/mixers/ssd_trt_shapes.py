"""Shape and type rules of the ``hybrid::SSDScan`` node, in plain Python (no TensorRT import).

The same kind of description as Mamba-1's nodes (`trt_shapes.OpSpec`), so the TensorRT
plugin's shape function (`ssd_trt`) and the CPU tests use one rule through
`trt_shapes.output_shapes`, `check_shapes`, `output_types` and `autotune_types`.
"""

from __future__ import annotations

from .trt_shapes import ACT, F32, OpSpec

SSD = OpSpec(
    name="SSDScan",
    inputs=("x", "dt", "A", "B", "C", "D", "state"),
    ranks=(4, 3, 1, 4, 4, 1, 4),
    outputs=("y", "new_state"),
    output_dims=((("x", 0), ("x", 1), ("x", 2), ("x", 3)), (("x", 0), ("x", 2), ("x", 3), ("B", 3))),
    equal=(
        (("x", 0, 0), ("dt", 0, 0), ("B", 0, 0), ("C", 0, 0), ("state", 0, 0)),  # batch
        (("x", 1, 0), ("dt", 1, 0), ("B", 1, 0), ("C", 1, 0)),  # length L
        (("x", 2, 0), ("dt", 2, 0), ("A", 0, 0), ("D", 0, 0), ("state", 1, 0)),  # heads H
        (("x", 3, 0), ("state", 2, 0)),  # headdim P
        (("B", 2, 0), ("C", 2, 0)),  # groups G (which must divide H: checked by the kernel's launcher)
        (("B", 3, 0), ("C", 3, 0), ("state", 3, 0)),  # d_state N
    ),
    # dt, A, D and the state are float32: Mamba-2 computes dt in float32 and keeps its state so.
    types=(ACT, F32, F32, ACT, ACT, F32, F32, ACT, F32),
)
