"""Mamba-2 mixer (Dao & Gu, 2024), the SSM layer of Bamba, Nemotron-H, Granite-4.0-H and Falcon-H1.

Parameter names follow mamba-ssm's ``Mamba2`` and transformers' ``Mamba2Mixer`` so that
checkpoints convert one to one (the conv's weight is kept as ``(conv_dim, d_conv)``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_mllm.core.decode import dense
from hybrid_mllm.core.errors import RegistryError
from hybrid_mllm.core.mixer import State, StateSpec, padding_mask_or_none
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.ssd import AUTO, ssd_scan

from .conv import causal_conv1d


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of `group_size` channels with a SiLU gate, in float32:
    ``norm(y * silu(z)) * weight``, or ``norm(y) * weight * silu(z)`` when norm_before_gate.
    y, z: (..., d) -> (..., d) in y's dtype."""

    def __init__(self, d: int, *, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gate = F.silu(z.float())
        y32 = y.float() if self.norm_before_gate else y.float() * gate
        groups = y32.unflatten(-1, (-1, self.group_size))  # (..., G, group_size)
        y32 = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        y32 = y32 * self.weight.float()
        return (y32 * gate if self.norm_before_gate else y32).to(y.dtype)


class Mamba2(nn.Module):
    """Mamba-2 block: in_proj -> (z, xBC, dt); xBC -> causal conv1d -> SiLU -> (x, B, C);
    dt -> softplus(dt + dt_bias), clamped to dt_limit; SSD scan with A = -exp(A_log) per head and
    skip D; gated RMSNorm of y with z (or y * SiLU(z) without rmsnorm) -> out_proj.

    d_inner = expand * d_model unless given (Falcon-H1's ``mamba_d_ssm`` need not be a multiple of d_model;
    expand is then unused), nheads = d_inner // headdim, conv_dim = d_inner + 2 ngroups d_state.
    State: ``conv_state (B, conv_dim, d_conv - 1)`` and ``ssm_state (B, nheads, headdim, d_state)`` float32.
    """

    state_specs = (StateSpec("conv_state"), StateSpec("ssm_state"))

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        d_inner: int | None = None,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        norm_eps: float = 1e-5,
        impl: str = AUTO,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_options(d_model, d_state=d_state, d_conv=d_conv, expand=expand, d_inner=d_inner, headdim=headdim,
                       ngroups=ngroups, chunk_size=chunk_size, dt_min=dt_min, dt_max=dt_max, dt_limit=dt_limit,
                       impl=impl)
        d_inner = d_inner or expand * d_model
        nheads = d_inner // headdim
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.nheads, self.ngroups, self.chunk_size = headdim, nheads, ngroups, chunk_size
        self.dt_limit, self.impl = (float(dt_limit[0]), float(dt_limit[1])), impl
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + nheads, bias=bias, **factory)  # z, xBC, dt
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **factory))  # depthwise (conv_dim, K)
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim, **factory)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(nheads, **factory))
        self.A_log = nn.Parameter(torch.empty(nheads, **factory))
        self.D = nn.Parameter(torch.empty(nheads, **factory))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=norm_eps,
                                 norm_before_gate=norm_before_gate, **factory) if rmsnorm else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **factory)
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        if self.A_log.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba-ssm's initialisation: dt log-uniform in [dt_min, dt_max], A uniform in [1, 16]."""
        dt_min, dt_max, floor = self._dt_init
        for module in (self.in_proj, self.out_proj):
            module.reset_parameters()
        if self.norm is not None:
            self.norm.weight.fill_(1.0)
        bound = 1 / math.sqrt(self.d_conv)
        self.conv_weight.uniform_(-bound, bound)
        if self.conv_bias is not None:
            self.conv_bias.uniform_(-bound, bound)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D.fill_(1.0)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        device = device or self.A_log.device
        dtype = dtype or self.in_proj.weight.dtype
        return (
            torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), (conv_state, ssm_state)."""
        scan = functools.partial(ssd_scan, chunk_size=self.chunk_size, impl=self.impl)
        return self.mix(x, state, mask, conv=causal_conv1d, scan=scan)

    def mix(self, x: Tensor, state: State | None, mask: Tensor | None, *, conv: Callable,
            scan: Callable) -> tuple[Tensor, State]:
        """`forward` with the conv and the scan given: the eager kernels, or an export's
        single-node ops. Their signatures are `conv.causal_conv1d`'s and
        ``scan(x, dt, A, B, C, D, state)`` (`hybrid_mllm.core.ssd.ssd_scan` with its chunk size bound)."""
        mask = padding_mask_or_none(mask, x)
        conv_state, ssm_state = state if state is not None else self.init_state(x.shape[0], device=x.device)
        z, xBC, dt = dense(self.in_proj, x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)  # padding enters the conv as zeros
        xBC, conv_state = conv(xBC.transpose(1, 2), self.conv_weight, self.conv_bias, conv_state)
        xs, B, C = F.silu(xBC.transpose(1, 2)).split([self.d_inner, self.ngroups * self.d_state,
                                                        self.ngroups * self.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)  # (B, L, nheads)
        if mask is not None:
            dt = dt * mask[..., None]  # dt = 0: exp(0 * A) = 1 and nothing is added, the state passes unchanged
        y, ssm_state = scan(xs.unflatten(-1, (self.nheads, self.headdim)), dt, -torch.exp(self.A_log.float()),
                            B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)),
                            self.D.float(), ssm_state)
        y = y.flatten(-2)  # (B, L, d_inner)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        return dense(self.out_proj, y), (conv_state, ssm_state)


def _check_options(d_model: int, *, d_state: int, d_conv: int, expand: int, d_inner: int | None, headdim: int,
                   ngroups: int, chunk_size: int, dt_min: float, dt_max: float, dt_limit, impl: str) -> None:
    """ValueError (RegistryError for an unknown impl) naming the first bad option and how to fix it."""
    for name, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand), ("d_inner", d_inner),
                        ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    width = f"d_inner = {d_inner}" if d_inner else f"d_inner = expand * d_model = {expand * d_model}"
    d_inner = d_inner or expand * d_model
    if d_inner % headdim:
        raise ValueError(f"headdim {headdim} must divide {width}; use one of {_divisors(d_inner)}")
    nheads = d_inner // headdim
    if nheads % ngroups:
        raise ValueError(f"ngroups {ngroups} must divide nheads = d_inner / headdim = {nheads}; "
                         f"use one of {_divisors(nheads)}")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if len(dt_limit) != 2 or not 0 <= dt_limit[0] < dt_limit[1]:
        raise ValueError(f"dt_limit must be [low, high] with 0 <= low < high, got {list(dt_limit)}; "
                         f"[0.0, .inf] sets no limit")
    if impl != AUTO:
        try:
            get_registry().get("ssd_kernel", impl)
        except RegistryError as e:  # unknown name: 'did you mean', with the option named
            raise RegistryError(f"impl: {e} (or auto)") from None


def _divisors(n: int, most: int = 6) -> str:
    """The largest divisors of n, e.g. '64, 32, 16, 8, 4, 2'."""
    found = [d for d in range(n, 0, -1) if n % d == 0][:most]
    return ", ".join(map(str, found))
