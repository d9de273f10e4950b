"""The SSD scan (Mamba-2) in Triton: forward and backward kernels, the ``triton`` SSD kernel.

Both kernels walk the sequence in chunks of ``BLOCK_Q`` tokens, in the SSD matmul form.
Within a chunk, with ``a_t = dt_t A`` (<= 0), the segment sums ``seg[t, s] = a_{s+1} + ... + a_t``
(a masked cumulative sum, so no ``cs_t - cs_s`` cancellation) and ``decay = exp(seg)`` on
``s <= t``:

    y_t   = sum_{s<=t} decay[t, s] (C_t . B_s) dt_s x_s  +  exp(cs_t) C_t . h_0  +  D x_t
    h_end = exp(cs_last) h_0  +  sum_s exp(a_{s+1} + ... + a_last) dt_s x_s (outer) B_s

where ``h_0`` is the state before the chunk: the intra-chunk block is three matmuls, the state
passes from chunk to chunk in registers. All arithmetic is float32.

Forward: one program per (head, block of headdim, batch row). Rows of the state are
independent, so a block of ``BLOCK_P`` rows carries its ``(BLOCK_P, d_state)`` state alone.
When gradients are needed it also stores the state before every chunk.

Backward: one program per (head, batch row), the whole headdim, walking the chunks in reverse
from the stored states and carrying ``g = dLoss/dh``. Gradients that sum over the heads of a
group (``dB``, ``dC``) are written per head and summed after the kernel; those that sum over
batch and time (``dA``, ``dD``) are accumulated per program and summed after. No atomics.

Triton is imported on first use, as in `scan_triton` (whose docstring says why).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from hybrid_mllm.core.ssd import SSDKernel

# Bound by `_kernels()` on first use.
triton = None
tl = None

# Tokens per chunk at most. Shared memory with headdim 64 and d_state 128, compiled for sm_90
# (bf16 / float32 inputs): the forward 98 / 210 KiB at 64 tokens; the backward 121 / 201 KiB at
# 32, but 322 KiB (float32) at 64, over the 227 KiB of an H100 block: so a forward that stores
# states for the backward uses chunks of 32.
MAX_CHUNK, MAX_CHUNK_GRAD = 64, 32
FWD_BLOCK_P, NUM_WARPS = 64, 4
INSTALL_HINT = "pip install triton"


# ---------------------------------------------------------------------------------------
# Kernels (compiled on first use by `_kernels`). ``s_<tensor><dim>`` are element strides;
# token offsets are int64 so that a token index times a stride cannot overflow.
# ---------------------------------------------------------------------------------------


def _chunk_decay(a, BLOCK_Q: tl.constexpr):
    """a: (Q,) log-decays of one chunk -> cs (Q,) their cumulative sum, decay (Q, Q) =
    exp(a_{s+1} + ... + a_t) on s <= t (0 above the diagonal), rest (Q,) = exp(a_{s+1} + ... + a_last)."""
    q = tl.arange(0, BLOCK_Q)
    later = q[:, None] > q[None, :]  # (k, s): k after s
    a_after = tl.where(later, a[:, None], 0.0)
    seg = tl.cumsum(a_after, axis=0)  # seg[t, s] = sum_{s < k <= t} a_k
    decay = tl.exp(tl.where(q[:, None] >= q[None, :], seg, float("-inf")))
    rest = tl.exp(tl.sum(a_after, axis=0))
    return tl.cumsum(a, axis=0), decay, rest


def _without_nan(x, dt, Bc):
    """A chunk's x (Q, P), dt (Q,) and B (Q, N) with NaN replaced by 0, and where the recurrence
    puts NaN: y_nan (Q, P) from each NaN on (x's row p; every row for dt or B), row_nan (P,) and
    col_nan (N,) in the state. The matmuls would also carry ``0 * NaN`` into earlier tokens."""
    x_nan = x != x  # noqa: PLR0124  (the NaN test: Triton has no portable isnan)
    B_nan = Bc != Bc  # noqa: PLR0124
    dt_nan = dt != dt  # noqa: PLR0124
    token_nan = dt_nan | (tl.max(B_nan.to(tl.int32), axis=1) > 0)
    step_nan = (x_nan | token_nan[:, None]).to(tl.int32)
    y_nan = tl.cumsum(step_nan, axis=0) > 0
    any_dt = tl.max(dt_nan.to(tl.int32), axis=0) > 0
    row_nan = (tl.max(x_nan.to(tl.int32), axis=0) > 0) | any_dt
    col_nan = (tl.max(B_nan.to(tl.int32), axis=0) > 0) | any_dt
    return (tl.where(x_nan, 0.0, x), tl.where(dt_nan, 0.0, dt), tl.where(B_nan, 0.0, Bc),
            y_nan, row_nan, col_nan)


def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr,
    y_ptr, h_last_ptr, ckpt_ptr,
    length, nheads, heads_per_group, headdim, d_state,
    s_xb, s_xl, s_xh, s_xp, s_tb, s_tl, s_th, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn,
    s_yb, s_yl, s_yh, s_yp,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, DOT: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Forward of headdim rows [pid1 * BLOCK_P, +BLOCK_P) of head pid0 of batch row pid2.

    x, y: (batch, L, H, P)  dt: (batch, L, H)  A, D: (H,)  B, C: (batch, L, G, N)
    h0, h_last: (batch, H, P, N) contiguous float32
    ckpt: (batch, H, cdiv(L, BLOCK_Q), P, N) float32, the state before each chunk.
    """
    h, b = tl.program_id(0).to(tl.int64), tl.program_id(2).to(tl.int64)
    bh = b * nheads + h
    grp = h // heads_per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    q = tl.arange(0, BLOCK_Q)
    p_ok, n_ok = p < headdim, n < d_state
    pn_ok = p_ok[:, None] & n_ok[None, :]
    state_off = (bh * headdim + p[:, None]) * d_state + n[None, :]  # (P, N) in (batch, H, P, N)

    A = tl.load(A_ptr + h).to(tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + h).to(tl.float32)
    if HAS_H0:
        state = tl.load(h0_ptr + state_off, mask=pn_ok, other=0.0)
    else:
        state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)

    n_chunks = tl.cdiv(length, BLOCK_Q)
    ckpt_p = ckpt_ptr + (bh * n_chunks * headdim + p[:, None]) * d_state + n[None, :]
    for c in range(n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_p + c * headdim * d_state, state, mask=pn_ok)
        t = (c * BLOCK_Q + q).to(tl.int64)
        t_ok = t < length
        dt = tl.load(dt_ptr + b * s_tb + t * s_tl + h * s_th, mask=t_ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp,
                    mask=t_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        Bc = tl.load(B_ptr + b * s_Bb + t[:, None] * s_Bl + grp * s_Bg + n[None, :] * s_Bn,
                     mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        Cc = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + grp * s_Cg + n[None, :] * s_Cn,
                     mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        x, dt, Bc, y_nan, row_nan, col_nan = _without_nan(x, dt, Bc)
        a = dt * A  # padding tokens: dt = 0, so they neither decay nor add
        cs, decay, rest = _chunk_decay(a, BLOCK_Q)

        scores = tl.dot(Cc, tl.trans(Bc), input_precision=DOT) * decay * dt[None, :]  # (Q, Q)
        y = tl.dot(scores, x, input_precision=DOT)
        y += tl.exp(cs)[:, None] * tl.dot(Cc, tl.trans(state), input_precision=DOT)
        if HAS_D:
            y += skip * x
        y = tl.where(y_nan, float("nan"), y)
        tl.store(y_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :] * s_yp,
                 y.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & p_ok[None, :])

        w = rest * dt
        state = tl.exp(tl.sum(a, axis=0)) * state + tl.dot(tl.trans(x * w[:, None]), Bc, input_precision=DOT)
        state = tl.where(row_nan[:, None] | col_nan[None, :], float("nan"), state)
    tl.store(h_last_ptr + state_off, state, mask=pn_ok)


def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ckpt_ptr, dy_ptr, dh_last_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dh0_ptr,
    length, nheads, heads_per_group, headdim, d_state,
    s_xb, s_xl, s_xh, s_xp, s_tb, s_tl, s_th, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn,
    s_gb, s_gl, s_gh, s_gp,
    HAS_D: tl.constexpr, DOT: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Backward of head pid0 of batch row pid2, all headdim rows.

    Inputs as in the forward, plus dy (batch, L, H, P) (strides s_g*), dh_last (batch, H, P, N)
    contiguous float32 and the forward's ckpt. Outputs, contiguous float32 except dx (x's type):
    dx (batch, L, H, P), ddt (batch, L, H), dB, dC (batch, L, H, N) per head, dA, dD (batch, H),
    dh0 (batch, H, P, N).

    Per chunk, with S = C B^T, G = dy x^T, T = decay S G dt_s, k_s = rest_s dt_s, g the
    gradient at the chunk's end: dx = (S decay dt)^T dy + k B g^T + D dy;
    dC = (decay dt G) B + exp(cs) dy h_0; dB = (decay dt G)^T C + k x g;
    g_0 = exp(cs_last) g + (exp(cs) dy)^T C; and d a_k (through every exponent holding a_k) is
    the sum over j >= k of d cs_j = rowsum(T)_j - colsum(T)_j + ... (terms below).
    """
    h, b = tl.program_id(0).to(tl.int64), tl.program_id(2).to(tl.int64)
    bh = b * nheads + h
    grp = h // heads_per_group
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    q = tl.arange(0, BLOCK_Q)
    p_ok, n_ok = p < headdim, n < d_state
    pn_ok = p_ok[:, None] & n_ok[None, :]
    state_off = (bh * headdim + p[:, None]) * d_state + n[None, :]

    A = tl.load(A_ptr + h).to(tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + h).to(tl.float32)
    g = tl.load(dh_last_ptr + state_off, mask=pn_ok, other=0.0)
    dA_acc = tl.zeros([BLOCK_Q], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_Q], dtype=tl.float32)

    n_chunks = tl.cdiv(length, BLOCK_Q)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(ckpt_ptr + ((bh * n_chunks + c) * headdim + p[:, None]) * d_state + n[None, :],
                     mask=pn_ok, other=0.0)
        t = (c * BLOCK_Q + q).to(tl.int64)
        t_ok = t < length
        tp_ok = t_ok[:, None] & p_ok[None, :]
        tn_ok = t_ok[:, None] & n_ok[None, :]
        dt = tl.load(dt_ptr + b * s_tb + t * s_tl + h * s_th, mask=t_ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp,
                    mask=tp_ok, other=0.0).to(tl.float32)
        gy = tl.load(dy_ptr + b * s_gb + t[:, None] * s_gl + h * s_gh + p[None, :] * s_gp,
                     mask=tp_ok, other=0.0).to(tl.float32)
        Bc = tl.load(B_ptr + b * s_Bb + t[:, None] * s_Bl + grp * s_Bg + n[None, :] * s_Bn,
                     mask=tn_ok, other=0.0).to(tl.float32)
        Cc = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + grp * s_Cg + n[None, :] * s_Cn,
                     mask=tn_ok, other=0.0).to(tl.float32)
        a = dt * A
        cs, decay, rest = _chunk_decay(a, BLOCK_Q)
        exp_cs = tl.exp(cs)
        last_decay = tl.exp(tl.sum(a, axis=0))
        k = rest * dt

        S = tl.dot(Cc, tl.trans(Bc), input_precision=DOT)  # (Q, Q): C_t . B_s
        G = tl.dot(gy, tl.trans(x), input_precision=DOT)  # (Q, Q): dy_t . x_s
        decay_dt = decay * dt[None, :]
        T0 = decay * S * G
        T = T0 * dt[None, :]
        LG = decay_dt * G
        x_g = tl.dot(x, g, input_precision=DOT)  # (Q, N)
        dy_h0 = tl.dot(gy, h0, input_precision=DOT)  # (Q, N)

        dx = tl.dot(tl.trans(S * decay_dt), gy, input_precision=DOT)
        dx += k[:, None] * tl.dot(Bc, tl.trans(g), input_precision=DOT)
        if HAS_D:
            dx += skip * gy
            dD_acc += tl.sum(gy * x, axis=1)
        dC = tl.dot(LG, Bc, input_precision=DOT) + exp_cs[:, None] * dy_h0
        dB = tl.dot(tl.trans(LG), Cc, input_precision=DOT) + k[:, None] * x_g

        # d dt: its direct factors (intra block, state input), then d a through the exponents.
        bxg = tl.sum(Bc * x_g, axis=1)  # sum_{p,n} g[p, n] x_s[p] B_s[n]
        ddt = tl.sum(T0, axis=0) + rest * bxg
        E = k * bxg
        end = last_decay * tl.sum(tl.sum(g * h0, axis=1), axis=0) + tl.sum(E, axis=0)
        dcs = tl.sum(T, axis=1) - tl.sum(T, axis=0) + exp_cs * tl.sum(Cc * dy_h0, axis=1) - E
        dcs += tl.where(q == BLOCK_Q - 1, end, 0.0)
        da = tl.sum(tl.where(q[:, None] >= q[None, :], dcs[:, None], 0.0), axis=0)  # sum_{j >= k} dcs_j
        ddt += A * da
        dA_acc += dt * da

        g = last_decay * g + tl.dot(tl.trans(gy * exp_cs[:, None]), Cc, input_precision=DOT)

        tl.store(dx_ptr + ((b * length + t[:, None]) * nheads + h) * headdim + p[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=tp_ok)
        tl.store(ddt_ptr + (b * length + t) * nheads + h, ddt, mask=t_ok)
        bc_off = ((b * length + t[:, None]) * nheads + h) * d_state + n[None, :]
        tl.store(dB_ptr + bc_off, dB, mask=tn_ok)
        tl.store(dC_ptr + bc_off, dC, mask=tn_ok)

    tl.store(dh0_ptr + state_off, g, mask=pn_ok)
    tl.store(dA_ptr + bh, tl.sum(dA_acc, axis=0))
    if HAS_D:
        tl.store(dD_ptr + bh, tl.sum(dD_acc, axis=0))


@functools.cache
def _kernels() -> SimpleNamespace:
    """Import Triton and compile-wrap the kernels (first call only)."""
    global triton, tl, _chunk_decay, _without_nan
    import triton
    import triton.language as tl

    _chunk_decay, _without_nan = triton.jit(_chunk_decay), triton.jit(_without_nan)
    return SimpleNamespace(fwd=triton.jit(_ssd_fwd_kernel), bwd=triton.jit(_ssd_bwd_kernel))


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------


def _block(x: int, minimum: int = 16) -> int:
    """The next power of 2 >= x, at least `minimum` (tl.dot's smallest tile side)."""
    return max(minimum, 1 << max(int(x) - 1, 0).bit_length())


def chunk_block(chunk_size: int, largest: int = MAX_CHUNK) -> int:
    """Tokens per chunk for `chunk_size`: a power of 2 in [16, largest] (the result does not
    depend on it; the chunk is a blocking of the same recurrence)."""
    return min(largest, _block(chunk_size))


def fwd_block_p(headdim: int) -> int:
    """Rows of headdim per forward program."""
    return min(FWD_BLOCK_P, _block(headdim))


def dot_precision(dtype: torch.dtype) -> str:
    """float32 matmuls for float32 inputs; TF32 for half inputs, whose rounding is coarser."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides4(t: Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def check_shapes(x, dt, A, B, C, D, state) -> None:
    """Raise ValueError naming the first tensor whose shape does not fit x's (batch, L, H, P)."""
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    if ngroups == 0 or nheads % ngroups:
        raise ValueError(f"SSD scan: ngroups = {ngroups} must divide the {nheads} heads")
    expected = {"dt": (dt, (batch, length, nheads)), "A": (A, (nheads,)),
                "B": (B, (batch, length, ngroups, d_state)), "C": (C, (batch, length, ngroups, d_state)),
                "D": (D, (nheads,)), "state": (state, (batch, nheads, headdim, d_state))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"SSD scan: {name} has shape {tuple(tensor.shape)}, expected {shape}")


def _forward(x, dt, A, B, C, D, state, chunk: int, store_checkpoints: bool):
    """Launch the forward kernel. -> y (batch, L, H, P) like x, last state (batch, H, P, N) f32, ckpt or None."""
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if length == 0 or y.numel() == 0:
        h = state.float().clone() if state is not None else x.new_zeros(batch, nheads, headdim, d_state,
                                                                       dtype=torch.float32)
        return y, h, None
    h_last = torch.empty(batch, nheads, headdim, d_state, device=x.device, dtype=torch.float32)
    h0 = state.float().contiguous() if state is not None else h_last
    ckpt = None
    if store_checkpoints:
        ckpt = torch.empty(batch, nheads, -(-length // chunk), headdim, d_state, device=x.device,
                           dtype=torch.float32)
    block_p = fwd_block_p(headdim)
    grid = (nheads, -(-headdim // block_p), batch)
    _kernels().fwd[grid](
        x, dt, A, B, C, D if D is not None else A, h0, y, h_last, ckpt if ckpt is not None else h_last,
        length, nheads, nheads // ngroups, headdim, d_state,
        *_strides4(x), dt.stride(0), dt.stride(1), dt.stride(2), *_strides4(B), *_strides4(C), *_strides4(y),
        HAS_D=D is not None, HAS_H0=state is not None, STORE_CKPT=store_checkpoints, DOT=dot_precision(x.dtype),
        BLOCK_Q=chunk, BLOCK_P=block_p, BLOCK_N=_block(d_state), num_warps=NUM_WARPS,
    )
    return y, h_last, ckpt


def _backward(x, dt, A, B, C, D, ckpt, chunk, dy, dh_last):
    """Launch the backward kernel and sum the partial results.

    -> dx, ddt, dA, dB, dC, dD (None without D), d state (float32); each other grad in its input's dtype.
    """
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    f32 = {"device": x.device, "dtype": torch.float32}
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    ddt = torch.empty(batch, length, nheads, **f32)
    dB = torch.empty(batch, length, nheads, d_state, **f32)
    dC = torch.empty(batch, length, nheads, d_state, **f32)
    dA = torch.empty(batch, nheads, **f32)
    dD = torch.empty(batch, nheads, **f32) if D is not None else None
    dh0 = torch.empty(batch, nheads, headdim, d_state, **f32)
    _kernels().bwd[(nheads, 1, batch)](
        x, dt, A, B, C, D if D is not None else A, ckpt, dy, dh_last.float().contiguous(),
        dx, ddt, dB, dC, dA, dD if dD is not None else dA, dh0,
        length, nheads, nheads // ngroups, headdim, d_state,
        *_strides4(x), dt.stride(0), dt.stride(1), dt.stride(2), *_strides4(B), *_strides4(C), *_strides4(dy),
        HAS_D=D is not None, DOT=dot_precision(x.dtype),
        BLOCK_Q=chunk, BLOCK_P=_block(headdim), BLOCK_N=_block(d_state), num_warps=NUM_WARPS,
    )

    def per_group(grad: Tensor) -> Tensor:  # (batch, L, H, N) -> (batch, L, G, N)
        return grad.view(batch, length, ngroups, nheads // ngroups, d_state).sum(3)

    return (dx, ddt.to(dt.dtype), dA.sum(0).to(A.dtype), per_group(dB).to(B.dtype), per_group(dC).to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dh0)


class _SSDScanFn(torch.autograd.Function):
    """Autograd wrapper: the forward stores the state before each chunk; the backward recomputes from it."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, state, chunk):
        y, h_last, ckpt = _forward(x, dt, A, B, C, D, state, chunk, store_checkpoints=True)
        ctx.save_for_backward(x, dt, A, B, C, D, ckpt)
        ctx.chunk = chunk
        ctx.state_dtype = state.dtype if state is not None else None
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        x, dt, A, B, C, D, ckpt = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        if dh_last is None:
            dh_last = x.new_zeros(*x.shape[:1], *x.shape[2:], B.shape[3], dtype=torch.float32)
        if ckpt is None:  # empty input: y is empty, the last state is the initial state
            grads = [torch.zeros_like(t) if t is not None else None for t in (x, dt, A, B, C, D)]
            dh0 = dh_last
        else:
            *grads, dh0 = _backward(x, dt, A, B, C, D, ckpt, ctx.chunk, dy, dh_last)
        dstate = dh0.to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (*grads, dstate, None)


def ssd_scan_triton(x, dt, A, B, C, D=None, state=None, chunk_size=256):
    """The signature and shapes of `hybrid_mllm.core.ssd.ssd_scan` (without ``impl``).

    x: (batch, L, H, P)  dt: (batch, L, H) (softplus already applied)  A, D: (H,)
    B, C: (batch, L, G, N)  state: (batch, H, P, N) -> y: (batch, L, H, P) in x's dtype,
    last state: (batch, H, P, N) float32. Inputs may be float32, float16 or bfloat16 and
    non-contiguous; all arithmetic is float32. CUDA tensors (or any device with
    ``TRITON_INTERPRET=1``). The per-chunk states for the backward are stored only when a
    gradient is needed.
    """
    check_shapes(x, dt, A, B, C, D, state)
    inputs = (x, dt, A, B, C, D, state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _SSDScanFn.apply(x, dt, A, B, C, D, state, chunk_block(chunk_size, MAX_CHUNK_GRAD))
    y, h_last, _ = _forward(x, dt, A, B, C, D, state, chunk_block(chunk_size), store_checkpoints=False)
    return y, h_last


def triton_available(device: torch.device | str) -> str | None:
    """None when the Triton SSD scan runs on `device`, else the reason and the install hint."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the Triton SSD scan runs on CUDA tensors only, not {device.type} ({INSTALL_HINT} on a CUDA machine)"
    try:
        import triton  # noqa: F401  (imported here, not at module import)
    except ImportError:
        return f"triton is not installed: {INSTALL_HINT}"
    return None


TRITON_SSD = SSDKernel(
    fn=ssd_scan_triton,
    priority={"cuda": 50},
    available=triton_available,
    description="Triton: chunks of up to 64 tokens in the SSD matmul form, state passed in registers, "
                "backward from per-chunk states",
)
