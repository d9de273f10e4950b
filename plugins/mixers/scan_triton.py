"""Selective scan (Mamba-1) in Triton: forward and backward kernels, the ``triton`` kernel.

Forward: one program per (channel block, batch row). It holds the state of its
``BLOCK_D`` channels, a ``(d_state, BLOCK_D)`` float32 tile, in registers and walks the
sequence in time order, one token per step, so every input is read once and ``y``
written once. The next token's inputs are loaded while the current one is computed.

Backward: when gradients are needed the forward also stores the state every
`CHECKPOINT_EVERY` tokens. The backward program walks the chunks in reverse: it
recomputes the chunk's states from its checkpoint (keeping them in a small per-program
scratch buffer), then walks the chunk backwards in time carrying ``g = dLoss/dh``. Grads
that sum over channels (``dB``, ``dC``) are written per channel block and summed after
the kernel; grads that sum over batch and time (``dA``, ``dD``, ``d delta_bias``) are
accumulated in registers and written per batch row. No atomics: results are deterministic.

Triton is imported on first use, never at module import: the registry imports this
module on every machine, and tests must be able to set ``TRITON_INTERPRET=1`` first. The
kernels below are therefore plain functions, compiled by ``triton.jit`` in `_kernels`,
and their body finds ``tl`` as a module global (where Triton's interpreter looks too).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from hybrid_mllm.core.scan import ScanKernel

# Bound by `_kernels()` on first use (see the module docstring).
triton = None
tl = None

# The forward stores the state every CHECKPOINT_EVERY tokens when gradients are needed:
# d_state * 4 / CHECKPOINT_EVERY bytes per channel and token (2 for d_state = 16), and the
# backward keeps one chunk of states per program in scratch memory.
CHECKPOINT_EVERY = 32
# Channels and warps per program, the fastest of the configurations timed on an H100 with
# benchmarks/bench_scan_gpu.py --tune (bf16, batch * D = 16k channels, L = 16k).
FWD_BLOCK_D, FWD_WARPS = 64, 2
BWD_BLOCK_D, BWD_WARPS = 32, 1

INSTALL_HINT = "pip install triton"


# ---------------------------------------------------------------------------------------
# Kernels (compiled on first use by `_kernels`).
# Pointers: ``s_<tensor><dim>`` are element strides. Channel-block programs run along
# grid axis 0 (no 65535 limit), batch rows along axis 1. Offsets that can pass 2**31
# (batch * D * L) are built from int64 program ids, and per-token pointers are advanced
# by one stride per step, so no int32 product of a token index and a stride is formed.
# ---------------------------------------------------------------------------------------


def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, h_last_ptr, ckpt_ptr,
    channels, length, d_state,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_zb, s_zd, s_zl, s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Forward scan of channels [pid0 * BLOCK_D, +BLOCK_D) of batch row pid1.

    u, delta, z, y: (batch, D, L)  A: (D, N) contiguous  B, C: (batch, N, L)
    D, bias: (D,)  h0, h_last: (batch, D, N) contiguous float32
    ckpt: (batch, cdiv(L, CHUNK), N, D) float32, the state before tokens 0, CHUNK, 2 CHUNK...
    """
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < channels, n < d_state
    nd_ok = n_ok[:, None] & d_ok[None, :]
    d64 = d.to(tl.int64)
    state_off = b * channels * d_state + d64[None, :] * d_state + n[:, None]  # (N, BLOCK_D) in (batch, D, N)

    # exp(delta A) = exp2(delta * A log2(e)): exp2 is the native instruction.
    A2 = tl.load(A_ptr + d64[None, :] * d_state + n[:, None], mask=nd_ok, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    if HAS_D:
        skip = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=nd_ok, other=0.0)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    u_p = u_ptr + b * s_ub + d64 * s_ud
    dl_p = delta_ptr + b * s_db + d64 * s_dd
    z_p = z_ptr + b * s_zb + d64 * s_zd
    y_p = y_ptr + b * s_yb + d64 * s_yd
    B_p = B_ptr + b * s_Bb + n * s_Bn
    C_p = C_ptr + b * s_Cb + n * s_Cn
    ckpt_p = ckpt_ptr + b * tl.cdiv(length, CHUNK) * d_state * channels + n[:, None] * channels + d64[None, :]

    # Token t's inputs are loaded during step t - 1 (software prefetch): the load latency
    # hides behind one step of arithmetic instead of stalling the recurrence.
    has_any = length > 0
    u_nx = tl.load(u_p, mask=d_ok & has_any, other=0.0)
    dl_nx = tl.load(dl_p, mask=d_ok & has_any, other=0.0)
    B_nx = tl.load(B_p, mask=n_ok & has_any, other=0.0)
    C_nx = tl.load(C_p, mask=n_ok & has_any, other=0.0)
    if HAS_Z:
        z_nx = tl.load(z_p, mask=d_ok & has_any, other=0.0)
    for t in range(0, length):
        if STORE_CKPT:
            if t % CHUNK == 0:
                tl.store(ckpt_p, h, mask=nd_ok)
                ckpt_p += d_state * channels
        u, dt, Bt, Ct = u_nx.to(tl.float32), dl_nx.to(tl.float32), B_nx.to(tl.float32), C_nx.to(tl.float32)
        if HAS_Z:
            zt = z_nx.to(tl.float32)
        u_p += s_ul
        dl_p += s_dl
        B_p += s_Bl
        C_p += s_Cl
        z_p += s_zl
        more = t + 1 < length
        u_nx = tl.load(u_p, mask=d_ok & more, other=0.0)
        dl_nx = tl.load(dl_p, mask=d_ok & more, other=0.0)
        B_nx = tl.load(B_p, mask=n_ok & more, other=0.0)
        C_nx = tl.load(C_p, mask=n_ok & more, other=0.0)
        if HAS_Z:
            z_nx = tl.load(z_p, mask=d_ok & more, other=0.0)

        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            # torch's softplus (threshold 20); log(1 + e^x) loses only values below ~6e-8.
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        h = tl.exp2(dt[None, :] * A2) * h + Bt[:, None] * (dt * u)[None, :]
        y = tl.sum(h * Ct[:, None], axis=0)
        if HAS_D:
            y += skip * u
        if HAS_Z:
            y *= zt * tl.sigmoid(zt)
        tl.store(y_p, y.to(y_ptr.dtype.element_ty), mask=d_ok)
        y_p += s_yl
    tl.store(h_last_ptr + state_off, h, mask=nd_ok)


def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dy_ptr, dh_last_ptr,
    scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    channels, length, d_state,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_dub, s_dud, s_dul, s_ddb, s_ddd, s_ddl, s_dzb, s_dzd, s_dzl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Backward scan of channels [pid0 * BLOCK_D, +BLOCK_D) of batch row pid1.

    Inputs as in the forward, plus dy (batch, D, L) (strides s_g*), dh_last (batch, D, N)
    contiguous float32 and the forward's ckpt. Outputs: du, ddelta, dz (batch, D, L);
    dA, dh0 (batch, D, N), dD, dbias (batch, D): per batch row, float32;
    dB, dC (batch, D blocks, L, N) float32: per channel block.
    scratch: (batch * D blocks, CHUNK, BLOCK_N, BLOCK_D) float32, this program's states.

    With a_t = exp(dt_t A), h_t = a_t h_{t-1} + dt_t B_t u_t, y0_t = C_t . h_t + D u_t,
    g_t = dLoss/dh_t = C_t dy0_t + a_{t+1} g_{t+1}:
    dB_t = sum_d g_t dt_t u_t, dC_t = sum_d dy0_t h_t, dA = sum_t g_t dt_t a_t h_{t-1},
    d dt_t = sum_n g_t (A a_t h_{t-1} + B_t u_t), du_t = dt_t sum_n B_t g_t + D dy0_t.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < channels, n < d_state
    nd_ok = n_ok[:, None] & d_ok[None, :]
    d64 = d.to(tl.int64)
    state_off = b * channels * d_state + d64[None, :] * d_state + n[:, None]  # (N, BLOCK_D) in (batch, D, N)

    A2 = tl.load(A_ptr + d64[None, :] * d_state + n[:, None], mask=nd_ok, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    if HAS_D:
        skip = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    g = tl.load(dh_last_ptr + state_off, mask=nd_ok, other=0.0)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    n_blocks = tl.num_programs(0)
    tile = BLOCK_N * BLOCK_D
    scratch_p = (scratch_ptr + (b * n_blocks + pid_d) * CHUNK * tile
                 + n[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :])
    partial_off = (b * n_blocks + pid_d) * length * d_state + n  # row t of dB, dC: + t * d_state
    u_0 = u_ptr + b * s_ub + d64 * s_ud
    dl_0 = delta_ptr + b * s_db + d64 * s_dd
    z_0 = z_ptr + b * s_zb + d64 * s_zd
    dy_0 = dy_ptr + b * s_gb + d64 * s_gd
    du_0 = du_ptr + b * s_dub + d64 * s_dud
    ddl_0 = ddelta_ptr + b * s_ddb + d64 * s_ddd
    dz_0 = dz_ptr + b * s_dzb + d64 * s_dzd
    B_0 = B_ptr + b * s_Bb + n * s_Bn
    C_0 = C_ptr + b * s_Cb + n * s_Cn

    n_chunks = tl.cdiv(length, CHUNK)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        start = c * CHUNK
        count = tl.minimum(CHUNK, length - start)
        start64 = tl.cast(start, tl.int64)

        # 1. Recompute the chunk's states from its checkpoint; keep h_{t-1} for each token.
        h = tl.load(ckpt_ptr + ((b * n_chunks + c) * d_state + n[:, None]) * channels + d64[None, :],
                    mask=nd_ok, other=0.0)
        tl.debug_barrier()  # the previous chunk's scratch reads are done before it is overwritten
        u_p, dl_p, B_p = u_0 + start64 * s_ul, dl_0 + start64 * s_dl, B_0 + start64 * s_Bl
        for k in range(0, count):
            tl.store(scratch_p + k * tile, h)
            u = tl.load(u_p, mask=d_ok, other=0.0).to(tl.float32)
            dt = tl.load(dl_p, mask=d_ok, other=0.0).to(tl.float32)
            Bt = tl.load(B_p, mask=n_ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
            h = tl.exp2(dt[None, :] * A2) * h + Bt[:, None] * (dt * u)[None, :]
            u_p += s_ul
            dl_p += s_dl
            B_p += s_Bl
        tl.debug_barrier()  # scratch writes are visible to every thread of the program

        # 2. Walk the chunk backwards in time.
        last64 = start64 + count - 1
        u_p, dl_p, B_p, C_p = u_0 + last64 * s_ul, dl_0 + last64 * s_dl, B_0 + last64 * s_Bl, C_0 + last64 * s_Cl
        z_p, dy_p = z_0 + last64 * s_zl, dy_0 + last64 * s_gl
        du_p, ddl_p, dz_p = du_0 + last64 * s_dul, ddl_0 + last64 * s_ddl, dz_0 + last64 * s_dzl
        part_p = partial_off + last64 * d_state
        for j in range(0, count):
            h_prev = tl.load(scratch_p + (count - 1 - j) * tile)
            u = tl.load(u_p, mask=d_ok, other=0.0).to(tl.float32)
            dt_in = tl.load(dl_p, mask=d_ok, other=0.0).to(tl.float32)
            Bt = tl.load(B_p, mask=n_ok, other=0.0).to(tl.float32)
            Ct = tl.load(C_p, mask=n_ok, other=0.0).to(tl.float32)
            dy0 = tl.load(dy_p, mask=d_ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_in += bias
            if SOFTPLUS:
                dt = tl.where(dt_in > 20.0, dt_in, tl.log(1.0 + tl.exp(dt_in)))
            else:
                dt = dt_in
            a = tl.exp2(dt[None, :] * A2)
            dtu = dt * u
            h = a * h_prev + Bt[:, None] * dtu[None, :]
            if HAS_Z:
                # y = y0 silu(z): dz = dy y0 silu'(z), silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
                zt = tl.load(z_p, mask=d_ok, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zt)
                y0 = tl.sum(h * Ct[:, None], axis=0)
                if HAS_D:
                    y0 += skip * u
                tl.store(dz_p, (dy0 * y0 * sz * (1.0 + zt * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=d_ok)
                dy0 = dy0 * zt * sz
            g += Ct[:, None] * dy0[None, :]
            tl.store(dC_ptr + part_p, tl.sum(h * dy0[None, :], axis=1), mask=n_ok)
            tl.store(dB_ptr + part_p, tl.sum(g * dtu[None, :], axis=1), mask=n_ok)
            gB = tl.sum(g * Bt[:, None], axis=0)
            gah = g * a * h_prev
            dA_acc += gah * dt[None, :]
            # d a / d dt = A a = A2 ln(2) a
            ddt = tl.sum(gah * A2, axis=0) * 0.6931471805599453 + u * gB
            du = dt * gB
            if HAS_D:
                du += skip * dy0
                dD_acc += dy0 * u
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_in)
            if HAS_BIAS:
                dbias_acc += ddt
            tl.store(du_p, du.to(du_ptr.dtype.element_ty), mask=d_ok)
            tl.store(ddl_p, ddt.to(ddelta_ptr.dtype.element_ty), mask=d_ok)
            g = a * g  # dLoss/dh_{t-1} through the recurrence, before C_{t-1} dy0_{t-1}
            u_p -= s_ul
            dl_p -= s_dl
            B_p -= s_Bl
            C_p -= s_Cl
            z_p -= s_zl
            dy_p -= s_gl
            du_p -= s_dul
            ddl_p -= s_ddl
            dz_p -= s_dzl
            part_p -= d_state

    tl.store(dh0_ptr + state_off, g, mask=nd_ok)
    tl.store(dA_ptr + state_off, dA_acc, mask=nd_ok)
    if HAS_D:
        tl.store(dD_ptr + b * channels + d, dD_acc, mask=d_ok)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * channels + d, dbias_acc, mask=d_ok)


@functools.cache
def _kernels() -> SimpleNamespace:
    """Import Triton and compile-wrap the kernels (first call only)."""
    global triton, tl
    import triton
    import triton.language as tl

    return SimpleNamespace(fwd=triton.jit(_scan_fwd_kernel), bwd=triton.jit(_scan_bwd_kernel))


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------


def _next_pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


def _strides3(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, state) -> None:
    batch, channels, length = u.shape
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, channels, length)), "A": (A, (channels, d_state)),
        "B": (B, (batch, d_state, length)), "C": (C, (batch, d_state, length)),
        "D": (D, (channels,)), "z": (z, (batch, channels, length)),
        "delta_bias": (delta_bias, (channels,)), "state": (state, (batch, channels, d_state)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective scan: {name} has shape {tuple(tensor.shape)}, expected {shape}")


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, state, store_checkpoints):
    """Launch the forward kernel. -> y (like u), last state (batch, D, N) f32, checkpoints or None."""
    batch, channels, length = u.shape
    d_state = A.shape[1]
    y = torch.empty_like(u)  # keeps u's memory layout (e.g. a transposed (batch, L, D) view)
    if length == 0 or batch * channels == 0:
        if state is not None:
            return y, state.float().clone(), None
        return y, u.new_zeros(batch, channels, d_state, dtype=torch.float32), None
    kernels = _kernels()
    A = A.contiguous()
    h_last = torch.empty(batch, channels, d_state, device=u.device, dtype=torch.float32)
    h0 = state.float().contiguous() if state is not None else h_last
    ckpt = None
    if store_checkpoints:
        n_chunks = -(-length // CHECKPOINT_EVERY)
        ckpt = torch.empty(batch, n_chunks, d_state, channels, device=u.device, dtype=torch.float32)
    zz = z if z is not None else u
    grid = (-(-channels // FWD_BLOCK_D), batch)
    kernels.fwd[grid](
        u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, h0,
        y, h_last, ckpt if ckpt is not None else h_last,
        channels, length, d_state,
        *_strides3(u), *_strides3(delta), *_strides3(B), *_strides3(C), *_strides3(zz), *_strides3(y),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
        HAS_H0=state is not None, STORE_CKPT=store_checkpoints, CHUNK=CHECKPOINT_EVERY,
        BLOCK_D=FWD_BLOCK_D, BLOCK_N=_next_pow2(d_state), num_warps=FWD_WARPS,
    )
    return y, h_last, ckpt


def _backward(u, delta, A, B, C, D, z, delta_bias, softplus, ckpt, dy, dh_last):
    """Launch the backward kernel and sum the partial results.

    -> du, ddelta, dA, dB, dC, dD, dz, d delta_bias, d state (None for absent inputs);
    each grad has its input's dtype except d state, which is float32.
    """
    batch, channels, length = u.shape
    d_state = A.shape[1]
    block_n = _next_pow2(d_state)
    n_blocks = -(-channels // BWD_BLOCK_D)
    f32 = {"device": u.device, "dtype": torch.float32}
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(batch, channels, d_state, **f32)
    dh0 = torch.empty(batch, channels, d_state, **f32)
    dD = torch.empty(batch, channels, **f32) if D is not None else None
    dbias = torch.empty(batch, channels, **f32) if delta_bias is not None else None
    dB = torch.empty(batch, n_blocks, length, d_state, **f32)
    dC = torch.empty(batch, n_blocks, length, d_state, **f32)
    scratch = torch.empty(batch * n_blocks, CHECKPOINT_EVERY, block_n, BWD_BLOCK_D, **f32)
    zz, dzz = (z, dz) if z is not None else (u, du)
    _kernels().bwd[(n_blocks, batch)](
        u, delta, A.contiguous(), B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
        ckpt, dy, dh_last.float().contiguous(),
        scratch, du, ddelta, dzz, dA, dB, dC, dD if dD is not None else dA, dbias if dbias is not None else dA, dh0,
        channels, length, d_state,
        *_strides3(u), *_strides3(delta), *_strides3(B), *_strides3(C), *_strides3(zz), *_strides3(dy),
        *_strides3(du), *_strides3(ddelta), *_strides3(dzz),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
        CHUNK=CHECKPOINT_EVERY, BLOCK_D=BWD_BLOCK_D, BLOCK_N=block_n, num_warps=BWD_WARPS,
    )
    return (
        du, ddelta, dA.sum(0).to(A.dtype),
        dB.sum(1).transpose(1, 2).to(B.dtype), dC.sum(1).transpose(1, 2).to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None, dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, dh0,
    )


class _SelectiveScanFn(torch.autograd.Function):
    """Autograd wrapper: checkpointed forward, recomputing backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, state):
        y, h_last, ckpt = _forward(u, delta, A, B, C, D, z, delta_bias, softplus, state, store_checkpoints=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus = softplus
        ctx.state_dtype = state.dtype if state is not None else None
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        if ckpt is None:  # empty input: y is empty, the last state is the initial state
            grads = [torch.zeros_like(t) if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
            dh0 = dh_last
        else:
            *grads, dh0 = _backward(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ckpt, dy, dh_last)
        dstate = dh0.to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (*grads, None, dstate)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`.

    u, delta, z: (batch, D, L)  A: (D, N)  B, C: (batch, N, L)  D, delta_bias: (D,)
    state: (batch, D, N) -> y: (batch, D, L) in u's dtype (and u's memory layout),
    last_state: (batch, D, N) float32. Inputs may be float32, float16 or bfloat16 and
    non-contiguous; all arithmetic is float32. CUDA tensors (or any device with
    ``TRITON_INTERPRET=1``). Checkpoints for the backward are stored only when a gradient
    is needed.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, state)
    inputs = (u, delta, A, B, C, D, z, delta_bias, state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, softplus, state)
    y, h_last, _ = _forward(u, delta, A, B, C, D, z, delta_bias, softplus, state, store_checkpoints=False)
    return y, h_last


def triton_available(device: torch.device | str) -> str | None:
    """None when the Triton scan runs on `device`, else the reason and the install hint."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the Triton scan runs on CUDA tensors only, not {device.type} ({INSTALL_HINT} on a CUDA machine)"
    try:
        import triton  # noqa: F401  (imported here, not at module import: see the module docstring)
    except ImportError:
        return f"triton is not installed: {INSTALL_HINT}"
    return None


TRITON = ScanKernel(
    fn=selective_scan_triton,
    priority={"cuda": 50},
    available=triton_available,
    description="Triton: time-sequential per channel block, state in registers, checkpointed backward",
)
