"""Where an engine was built and where it runs: an engine is only valid for the GPU model
(compute capability) and TensorRT version it was built with."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EngineMismatchError, import_tensorrt


@dataclass(frozen=True)
class Platform:
    """Where an engine is built or run."""

    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        return f"{self.gpu} ({self.sm}) with TensorRT {self.tensorrt}"


def platform_here() -> Platform:
    """This machine's TensorRT version and GPU (device 0)."""
    import torch

    trt = import_tensorrt()
    return Platform(trt.__version__, torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))


def check_compatible(built: Platform, here: Platform, *, engine: str) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU."""
    if built.tensorrt != here.tensorrt or built.compute_capability != here.compute_capability or built.gpu != here.gpu:
        raise EngineMismatchError(f"{engine} was built for {built.describe()}, but this is {here.describe()}: "
                                  "rebuild it here with hybrid-export --trt")
