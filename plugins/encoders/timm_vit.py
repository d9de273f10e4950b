"""`timm` encoder: any timm Vision Transformer by name (ViT, CLIP, SigLIP, DINOv2 ...),
optionally with its architecture overridden (``model_args``), e.g. to match a converted
Hugging Face CLIP / SigLIP tower of any size."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from hybrid_mllm.core.encoder import EncoderOutput
from hybrid_mllm.core.errors import HybridError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# VisionTransformer arguments model_args may not set: our own options or fixed by the encoder
NOT_MODEL_ARGS = {"self": "", "img_size": "set image_size instead", "num_classes": "the head is always removed",
                  "device": "", "dtype": ""}
PLAIN = (bool, int, float, str, type(None), list, tuple)


class TimmViT(nn.Module):
    """A timm ViT cut at ``feature_layer`` (LLaVA and MMJamba take the penultimate block's
    output, -2, without the final norm). Random init, or weights from a local safetensors
    file (``pretrained_path``; timm's own key names). ``frozen`` stops its gradients.

    ``model_args`` overrides the named model's architecture: any plain-valued argument of
    timm's ``VisionTransformer`` (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``,
    ``mlp_ratio``, ``class_token``, ``pre_norm``, ``act_layer: quick_gelu`` ...), plus
    ``norm_eps`` (the LayerNorms' epsilon). ``hybrid-convert`` writes it for Hugging Face
    CLIP / SigLIP towers; the pixel normalisation still follows the name (clip, siglip).
    """

    def __init__(
        self,
        *,
        model_name: str = "vit_base_patch16_clip_224",
        image_size: int | None = None,
        feature_layer: int = -2,
        keep_cls: bool = False,
        pretrained_path: str | None = None,
        frozen: bool = False,
        model_args: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        timm = _import_timm()
        if model_name not in timm.list_models():
            raise ValueError(_unknown_model(timm, model_name))
        extra = {**_vit_kwargs(model_args or {}), **({"img_size": image_size} if image_size else {})}
        with torch.device(device if device is not None else "cpu"):  # "meta" when only checking options
            try:
                vit = timm.create_model(model_name, pretrained=False, num_classes=0, **extra)
            except TypeError as e:  # a model_args key the named model's class does not take
                raise ValueError(f"model_args do not fit timm model '{model_name}': {e}") from None
        depth = len(vit.blocks)
        layer = feature_layer if feature_layer >= 0 else depth + feature_layer
        if not 0 <= layer < depth:
            raise ValueError(f"feature_layer {feature_layer} is outside the model's {depth} blocks")
        vit.prune_intermediate_layers(indices=[layer], prune_norm=True, prune_head=True)
        self.vit, self.layer, self.keep_cls = vit, layer, keep_cls
        self.image_size = vit.patch_embed.img_size[0]
        self.grid = tuple(vit.patch_embed.grid_size)
        self.out_dim = vit.embed_dim
        self.num_prefix_tokens = vit.num_prefix_tokens if keep_cls else 0
        self.mean, self.std = _normalisation(model_name)
        if pretrained_path and str(device) != "meta":
            _load_safetensors(vit, pretrained_path, depth)
        self.to(device=device, dtype=dtype)
        if frozen:
            self.requires_grad_(False)

    def forward(self, pixels: Tensor) -> EncoderOutput:
        """pixels: (N, 3, S, S) normalised -> patches (N, gh, gw, out_dim), prefix (N, P, out_dim)."""
        with_prefix = self.num_prefix_tokens > 0  # timm returns bare patches for a model without prefix tokens
        (out,) = self.vit.forward_intermediates(
            pixels, indices=[self.layer], return_prefix_tokens=with_prefix, norm=False, output_fmt="NLC",
            intermediates_only=True)
        patches, prefix = out if with_prefix else (out, out[:, :0])
        n, _, d = patches.shape
        return EncoderOutput(patches.reshape(n, *self.grid, d), prefix)


def _import_timm():
    try:
        import timm
    except ImportError:
        raise HybridError('the timm encoder needs timm: pip install "hybrid-mllm[vision]"') from None
    return timm


def _unknown_model(timm, name: str) -> str:
    from hybrid_mllm.core.suggest import did_you_mean

    return f"unknown timm model '{name}'.{did_you_mean(name, timm.list_models('vit*'))} (list them: timm.list_models('vit*'))"


def _vit_kwargs(model_args: dict[str, Any]) -> dict[str, Any]:
    """model_args -> timm.create_model keyword arguments (``norm_eps`` -> a LayerNorm class);
    a ValueError names every key that is not a plain-valued VisionTransformer argument."""
    from timm.models.vision_transformer import VisionTransformer

    from hybrid_mllm.core.suggest import did_you_mean

    params = inspect.signature(VisionTransformer.__init__).parameters
    # act_layer / norm_layer take names ("quick_gelu", "layernorm"); their defaults are None
    allowed = [n for n, p in params.items() if n not in NOT_MODEL_ARGS and isinstance(p.default, PLAIN)] + ["norm_eps"]
    problems = []
    for key, value in model_args.items():
        if NOT_MODEL_ARGS.get(key):
            problems.append(f"model_args.{key}: not allowed here ({NOT_MODEL_ARGS[key]})")
        elif key not in allowed:
            problems.append(f"model_args.{key}: not a timm VisionTransformer argument.{did_you_mean(key, allowed)}")
        elif not isinstance(value, PLAIN):
            problems.append(f"model_args.{key}: expected a plain value, got {type(value).__name__}")
    if "norm_eps" in model_args and "norm_layer" in model_args:
        problems.append("model_args: give norm_eps or norm_layer, not both")
    if problems:
        raise ValueError("; ".join(problems))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items() if k != "norm_eps"}
    if "norm_eps" in model_args:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(model_args["norm_eps"]))
    return kwargs


def _normalisation(model_name: str) -> tuple[tuple, tuple]:
    if "siglip" in model_name:
        return HALF, HALF
    if "clip" in model_name:
        return CLIP_MEAN, CLIP_STD
    return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet


def _load_safetensors(vit: nn.Module, path: str, depth: int) -> None:
    """Load timm-named weights; the blocks after the feature layer and the head may be
    in the file (a full checkpoint) although the cut model no longer has them."""
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except (OSError, ValueError) as e:
        raise HybridError(f"cannot read encoder weights {path}: {e}") from None
    cut = tuple(f"blocks.{i}." for i in range(len(vit.blocks), depth)) + ("head", "fc_norm", "norm.", "attn_pool")
    state = {k: v for k, v in state.items() if not k.startswith(cut)}
    try:
        missing, unexpected = vit.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise HybridError(f"{path} does not fit the encoder: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise HybridError(f"{path} does not fit the encoder: missing {missing[:5]} ({len(missing)} in all), "
                          f"unexpected {unexpected[:5]} ({len(unexpected)} in all)")
