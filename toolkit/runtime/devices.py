"""Which torch device a Device choice means here (torch imported only when called)."""

from __future__ import annotations

from toolkit.config import Device
from toolkit.errors import ToolkitError


class DeviceError(ToolkitError):
    pass


def resolve_device(device: Device | str):
    """A torch.device for `device`; `auto` picks CUDA when a GPU is visible. Asking for cuda
    where torch sees none is a clear error, not a crash later."""
    import torch

    device = Device(device)
    if device is Device.cuda and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for, but torch sees no CUDA GPU; use device cpu "
                          "or install a CUDA build of torch on a machine with an NVIDIA GPU")
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)
