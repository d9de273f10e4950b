"""FSDP for `hybrid-train` under torchrun (``train.parallel: fsdp``): each process keeps a shard
of every parameter, gradient and AdamW moment, so models too large for one device train.

FSDP2 (`torch.distributed.fsdp.fully_shard`, gloo on CPU, NCCL on CUDA). The units: each LM
`Block`, each block of the vision encoder (any child of an encoder module named ``blocks``, e.g.
a timm ViT's), then the root, which gathers the rest (embeddings, head, norm, connectors,
encoder stem, learned separators). The root is the `LossStep`, not the model, because its
forward runs ``model.embed`` (encoder, connector, embeddings) before ``model.forward``.

Parity with DDP: the data is sharded per rank the same way, gradients are averaged over ranks
(the loop's loss scaling assumes that), accumulation skips the reduce-scatter until the last
micro-batch (`no_sync`), and `clip_grad_norm_` reduces the norm over the sharded (DTensor)
gradients. One difference: a trainable parameter that gets no gradient on a step (the video
connector on an image-only batch, an MoE expert no token chose) gets a zero gradient, not none,
because the reduce-scatter must be the same on every rank; AdamW then moves it by its momentum,
as with FSDP1's flat parameters, where DDP would leave it alone.

Checkpoints hold the full (gathered) weights and optimizer moments under the names of an
unsharded model: they load in a single process (``hybrid-run``) and resume under DDP or FSDP.
With one process there is nothing to shard: `cli_train` trains unsharded and says so.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from hybrid_mllm.core.checkpoint import unique_state_dict
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.mllm import HybridMLLM

SINGLE_PROCESS_NOTE = ("note: train.parallel: fsdp with a single process trains unsharded "
                       "(launch with torchrun --nproc-per-node N to shard over N processes)")

# the model's attribute holding its sharded loss step: `fully_shard` cannot be undone or applied
# twice, so the stages of one run share one sharded root. A plain attribute (not a registered
# submodule, not a global table whose value would keep the model alive): freed with the model.
_ROOT_ATTR = "_fsdp_root"


def shard(model: HybridMLLM, make_step: Callable[[HybridMLLM], nn.Module], *, bf16: bool) -> nn.Module:
    """Shard `model` in place (once) and return the FSDP root: ``make_step(model)``, sharded.
    `bf16`: the loop's autocast rule; then parameters are gathered and computed in bf16 and
    gradients reduced in fp32."""
    if is_sharded(model):
        return model.__dict__[_ROOT_ATTR]
    if not (dist.is_available() and dist.is_initialized()):
        raise HybridError("train.parallel: fsdp needs torch.distributed initialised: launch with "
                          "torchrun --nproc-per-node N -m hybrid_mllm.train.cli_train CONFIG")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # the model's device, not FSDP's default (CUDA whenever there is one: wrong for --device cpu)
    mesh = init_device_mesh(model.lm.embed.weight.device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for unit in units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    root = fully_shard(make_step(model), mesh=mesh, mp_policy=policy)
    root.set_reduce_scatter_unused_params(True)  # same reduce-scatter on every rank (see the module doc)
    # a Block returns its mixer state, a slice of the conv input: a view, which FSDP warns
    # about in case it is modified in place; training never touches it
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    model.__dict__[_ROOT_ATTR] = root  # bypasses nn.Module.__setattr__: not in the model's state_dict
    return root


def units(model: HybridMLLM) -> list[nn.Module]:
    """The modules sharded as their own FSDP units, innermost first: encoder blocks, LM blocks."""
    found: list[nn.Module] = []
    if model.encoder is not None:
        for name, module in model.encoder.named_modules():
            if name.rpartition(".")[2] == "blocks" and isinstance(module, (nn.ModuleList, nn.Sequential)):
                found += list(module)
    return found + list(model.lm.blocks)


def is_sharded(model: nn.Module) -> bool:
    return _ROOT_ATTR in model.__dict__


@contextlib.contextmanager
def no_sync(module: nn.Module) -> Iterator[None]:
    """DDP's ``no_sync()`` for either wrapper: gradients of this backward stay local (for FSDP,
    unsharded) and are reduced with the next synchronised one."""
    if not hasattr(module, "set_requires_gradient_sync"):
        with module.no_sync():
            yield
        return
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def full_state(model: HybridMLLM, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Gather the full weights (tied duplicates dropped, as `unique_state_dict`) and AdamW
    state by parameter name, on the CPU of rank 0; the other ranks get empty dicts. Collective:
    every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    moments = get_optimizer_state_dict(model, optimizer, options=options).get("state", {})
    if not weights:
        return {}, {}
    keep = unique_state_dict(model)
    return {name: t for name, t in weights.items() if name in keep}, moments


def shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The full `tensor` laid out as `like`: itself for a plain tensor; for a parameter or
    optimizer moment sharded by FSDP2 (a DTensor of the same shape), this process's slice,
    cut locally (every process holds the full tensor, so nothing is sent)."""
    if not torch.distributed.is_available():  # then nothing is sharded
        return tensor
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or tuple(tensor.shape) != tuple(like.shape):
        return tensor
    return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
