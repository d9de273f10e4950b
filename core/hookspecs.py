"""The plugin hooks of hybrid-mllm (pluggy project name ``hybrid_mllm``).

Every hook receives a ``register`` callback and calls it once per component it
provides: ``register(name, component)`` (``register(cls, exportable)`` for exports). The
registry owns the names: a name that is already taken is an error naming both packages,
so plugins never touch globals. Hooks: encoders, mixers, connectors, FFNs, scan kernels,
SSD kernels, and the export declarations of any of them.

A third-party package exposes its hook implementations through an entry point::

    [project.entry-points.hybrid_mllm]
    my_plugin = "my_package.plugin_module"

and implements, in that module::

    from hybrid_mllm.core import hookimpl

    @hookimpl
    def register_mixers(register):
        register("my_mixer", MyMixer)

Set ``HYBRID_MLLM_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in plugins.
"""

from __future__ import annotations

import pluggy

PROJECT = "hybrid_mllm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_encoders(register):
    """Register vision encoders.

    :param register: ``register(name: str, cls: type[nn.Module])``. ``cls(*, ...)`` maps
        tiles ``(N, 3, S, S)`` to an ``EncoderOutput`` (patch grid ``(N, gh, gw, out_dim)``
        and prefix tokens); see ``hybrid_mllm.core.encoder``. Its keyword-only, annotated
        constructor options are its YAML schema.
    """


@hookspec
def register_mixers(register):
    """Register sequence mixers (attention, Mamba, ...).

    :param register: ``register(name: str, cls: type[nn.Module])``. ``cls(d_model, *, ...)``
        must follow the mixer contract (see ``hybrid_mllm.core.mixer``): causal,
        ``init_state(batch_size)`` and ``forward(x, state=None, mask=None) -> (y, new_state)``
        with ``x, y: (B, L, d_model)``. ``hybrid_mllm.testing`` checks it.
    """


@hookspec
def register_connectors(register):
    """Register connectors (vision features -> language-model embeddings).

    :param register: ``register(name: str, cls: type[nn.Module])``; ``cls(d_model, *, in_dim, ...)``
        maps ``(N, gh, gw, in_dim)`` to ``(N, gh', gw', d_model)`` and says ``out_grid((gh, gw))``.
    """


@hookspec
def register_scan_kernels(register):
    """Register selective-scan implementations.

    :param register: ``register(name: str, kernel: hybrid_mllm.core.scan.ScanKernel)``.
        ``kernel.fn`` has the signature of ``hybrid_mllm.core.scan.selective_scan``;
        ``kernel.available(device)`` says whether it can run on a device and, if not, why
        and how to install it; ``kernel.priority`` orders the ``auto`` choice per device type.
    """


@hookspec
def register_ssd_kernels(register):
    """Register SSD-scan implementations (Mamba-2's scan with a scalar decay per head).

    :param register: ``register(name: str, kernel: hybrid_mllm.core.ssd.SSDKernel)``.
        ``kernel.fn(x, dt, A, B, C, D, state, chunk_size)`` takes the shapes of
        ``hybrid_mllm.core.ssd.ssd_scan``; ``kernel.available(device)`` says whether it can run
        on a device and, if not, why and how to install it; ``kernel.priority`` orders the
        ``auto`` choice per device type.
    """


@hookspec
def register_linear_kernels(register):
    """Register fast linear layers for inference: decoding's few rows per weight, or products
    PyTorch is slow at on some CPU (bfloat16 without bfloat16 instructions).

    :param register: ``register(name: str, kernel: hybrid_mllm.core.decode.LinearKernel)``.
        ``kernel.fn`` has ``torch.nn.functional.linear``'s signature; ``kernel.accepts(x,
        weight, bias)`` says whether it takes these inputs. `hybrid_mllm.core.decode.linear`
        uses the first that accepts (by name), without gradients only, and ``F.linear``
        otherwise; kernels should not accept the same inputs.
    """


@hookspec
def register_block_steps(register):
    """Register fused decode steps of a block's halves (norm, mixer or FFN, residual in one call).

    :param register: ``register(name: str, step: hybrid_mllm.core.decode.BlockStep)``.
        ``step.accepts(module, norm, x, state)`` says whether it takes this mixer or FFN and
        input; ``step.fn`` returns ``(x + r * part(norm(x)), new_state)``. A `Block` uses the
        first that accepts, for one token while decoding only, and runs its modules otherwise.
        ``step.part`` "stack" takes all of a `HybridLM`'s blocks at once and "model" its whole
        step from token ids to logits (`hybrid_mllm.core.decode.BlockStep`).
    """


@hookspec
def register_ffns(register):
    """Register feed-forward layers (the FFN kinds of ``model.ffn_layers``; built in: ``mlp``, ``moe``).

    :param register: ``register(name: str, cls: type[nn.Module])``. ``cls(d_model, *, ...)``
        maps ``(B, L, d_model)`` to ``(y, aux_loss)``: y of the same shape and a float32 scalar
        the trainer adds to the loss (0 for a plain MLP). Its options are read from
        ``model.<name>`` in YAML. ``none`` (a block without FFN) is reserved.
    """


@hookspec
def register_exports(register):
    """Declare how components export to ONNX / TensorRT.

    :param register: ``register(cls: type[nn.Module], exportable: hybrid_mllm.core.exportable.Exportable)``:
        for every module of class `cls` (or a subclass) in a model, the module export traces in
        each flavour and the custom ops it may hold (their ONNX translations, ONNX Runtime CPU
        implementations and TensorRT plugins). A component without a declaration is traced as
        it is. Example::

            @hookimpl
            def register_exports(register):
                register(MyMixer, Exportable(trace=my_trace, ops=my_ops))
    """
