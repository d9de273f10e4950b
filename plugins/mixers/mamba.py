"""Mamba-1 mixer (Gu & Dao, 2023), the SSM layer of Jamba and MMJamba."""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_mllm.core.decode import dense, fast_decode, linear
from hybrid_mllm.core.mixer import State, StateSpec, padding_mask_or_none
from hybrid_mllm.core.norm import RMSNorm
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.scan import AUTO, selective_scan

from . import step_cpu
from .conv import causal_conv1d

_STEP_DTYPES = (torch.float32, torch.bfloat16)
# mixer -> (key, StepWeights): beside the module, not on it, so that copy.deepcopy and pickle
# of a model never meet the ctypes structure
_STEP_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Mamba(nn.Module):
    """Mamba-1 block: in_proj -> (x, z); x -> causal conv1d -> SiLU -> x_proj -> (dt, B, C);
    dt -> dt_proj -> softplus; selective scan with A = -exp(A_log) and skip D; y * SiLU(z) -> out_proj.
    ``inner_norms`` adds Jamba's RMSNorms on dt, B and C (before dt_proj and the scan).

    State: ``conv_state (B, d_inner, d_conv - 1)`` and ``ssm_state (B, d_inner, d_state)`` float32.
    """

    state_specs = (StateSpec("conv_state"), StateSpec("ssm_state"))

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        inner_norms: bool = False,
        norm_eps: float = 1e-6,
        impl: str = AUTO,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if impl != AUTO:
            get_registry().get("scan_kernel", impl)  # unknown name -> error with 'did you mean'
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.impl = impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, d_conv, **factory))  # depthwise (D, K)
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner, **factory)) if conv_bias else None
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        if inner_norms:
            self.dt_norm = RMSNorm(self.dt_rank, eps=norm_eps, **factory)
            self.B_norm = RMSNorm(d_state, eps=norm_eps, **factory)
            self.C_norm = RMSNorm(d_state, eps=norm_eps, **factory)
        self.inner_norms = inner_norms
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **factory))
        self.D = nn.Parameter(torch.empty(self.d_inner, **factory))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        if self.A_log.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The usual Mamba initialisation: S4D-real A, dt log-uniform in [dt_min, dt_max]."""
        dt_min, dt_max, floor = self._dt_init
        for module in (self.in_proj, self.x_proj, self.out_proj):
            module.reset_parameters()
        for norm in (getattr(self, "dt_norm", None), getattr(self, "B_norm", None), getattr(self, "C_norm", None)):
            if norm is not None:
                norm.weight.fill_(1.0)
        bound = 1 / math.sqrt(self.d_conv)
        self.conv_weight.uniform_(-bound, bound)
        if self.conv_bias is not None:
            self.conv_bias.uniform_(-bound, bound)
        std = self.dt_rank**-0.5
        self.dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        device = device or self.A_log.device
        dtype = dtype or self.in_proj.weight.dtype
        return (
            torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), (conv_state, ssm_state)."""
        if self._fused_step_applies(x, state, mask):
            return self._fused_step(x, state)
        return self.mix(x, state, mask, conv=causal_conv1d, scan=functools.partial(selective_scan, impl=self.impl))

    def _fused_step_applies(self, x: Tensor, state: State | None, mask: Tensor | None) -> bool:
        """One token on the CPU from a given state, no padding, no gradients, the default scan
        (or the fused CPU one), and the C step built: `step_cpu`'s fused step."""
        return mask is None and fast_decode() and self.fused_step_takes(x, state)

    def fused_step_takes(self, x: Tensor, state: State | None) -> bool:
        """`_fused_step_applies` but for the decoding mode and the mask (checked by the caller)."""
        return (x.shape[1] == 1 and state is not None and x.device.type == "cpu"
                and self.impl in (AUTO, "cpu_fused") and x.dtype in _STEP_DTYPES
                and state[0].dtype == x.dtype and state[1].dtype == torch.float32 and step_cpu.available() is None)

    def _fused_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x: (B, 1, d_model) -> y: (B, 1, d_model), (conv_state, ssm_state), through one C call
        between in_proj and out_proj."""
        xz = linear(x[:, 0], self.in_proj.weight, self.in_proj.bias)  # (B, 2 * d_inner)
        y, conv_state, ssm_state = step_cpu.mamba_step_cpu(self._step_weights(), xz, *state)
        return linear(y, self.out_proj.weight, self.out_proj.bias)[:, None], (conv_state, ssm_state)

    def _step_weights(self) -> step_cpu.StepWeights:
        """The fused step's float32 copies of the parameters, rebuilt when one of them changes."""
        # what StepWeights copies (not in_proj / out_proj: applied outside), read from the parameter
        # dicts: this runs every token, and a module attribute that is a parameter or a submodule
        # is found only through nn.Module's __getattr__ fallback
        own, parts = self._parameters, self._modules
        read = [own["conv_weight"], own.get("conv_bias"), parts["x_proj"]._parameters["weight"],
                *parts["dt_proj"]._parameters.values(), own["A_log"], own["D"]]
        if self.inner_norms:
            read += [parts[name]._parameters["weight"] for name in ("dt_norm", "B_norm", "C_norm")]
        key = tuple((p.data_ptr(), p._version) for p in read if p is not None)
        cached = _STEP_WEIGHTS.get(self)
        if cached is None or cached[0] != key:
            cached = _STEP_WEIGHTS[self] = (key, step_cpu.StepWeights(self))
        return cached[1]

    def mix(self, x: Tensor, state: State | None, mask: Tensor | None, *, conv: Callable,
            scan: Callable) -> tuple[Tensor, State]:
        """`forward` with the conv and the scan given: the eager kernels, or the export's
        single-node ops (`mamba_export`). Their signatures are `conv.causal_conv1d`'s and
        `hybrid_mllm.core.scan.selective_scan`'s."""
        mask = padding_mask_or_none(mask, x)
        conv_state, ssm_state = state if state is not None else self.init_state(x.shape[0], device=x.device)
        xs, z = dense(self.in_proj, x).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        if mask is not None:
            xs = xs * mask[:, None, :].to(xs.dtype)  # padding enters the conv as zeros
        xs, conv_state = conv(xs, self.conv_weight, self.conv_bias, conv_state)
        xs = F.silu(xs)
        dt, B, C = dense(self.x_proj, xs.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt = linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L), bias added in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        delta_bias, softplus = self.dt_proj.bias.float(), True
        if mask is not None:
            # delta = 0 at padding: exp(0 * A) = 1 and delta * B * u = 0, so the state passes unchanged.
            dt = F.softplus(dt.float() + delta_bias[:, None]) * mask[:, None, :]
            delta_bias, softplus = None, False
        y, ssm_state = scan(xs, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z, delta_bias, softplus,
                            ssm_state)
        return dense(self.out_proj, y.transpose(1, 2)), (conv_state, ssm_state)
