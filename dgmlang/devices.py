"""Devices and dtypes: reading a user's choice, and moving data to the model's device.

A compiled model computes on one device in one float dtype (`CompiledModel.to`). Users name
them as strings or torch objects; `device_of` and `dtype_of` turn the choice into torch's
and refuse, with a `DGMUsageError` saying what to install or pick, a device this torch
cannot use. Data is checked on the CPU (`dgmlang.data`) and moved a batch at a time with
`to_device`: through pinned memory and a non-blocking copy for CUDA.

>>> device_of("cpu"), dtype_of("float64")
(device(type='cpu'), torch.float64)
>>> to_device({"x": torch.zeros(2)}, device_of(None))["x"].device
device(type='cpu')
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from dgmlang.errors import DGMUsageError

__all__ = ["CUDA_INSTALL", "DEVICES", "DTYPES", "check_pair", "device_of", "dtype_of", "to_device"]

#: The device names `device_of` accepts (with ``cuda:N`` for the N-th GPU).
DEVICES = ("cpu", "cuda", "cuda:N", "mps")
#: The float dtypes a model computes in, by name.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: How to get a torch that can use an NVIDIA GPU (the hint of a refused "cuda").
CUDA_INSTALL = ("install torch's CUDA build, e.g. `pip install torch==2.13.0 --index-url "
                "https://download.pytorch.org/whl/cu126` (see https://pytorch.org/get-started/"
                "locally/), on a machine with an NVIDIA GPU and its driver")


def device_of(spec: Any) -> torch.device:
    """The torch device named by `spec`: None (the CPU), "cpu", "cuda", "cuda:N", "mps" or a
    `torch.device`. A GPU this torch cannot use is a `DGMUsageError` saying why.

    >>> device_of("cuda:x")
    Traceback (most recent call last):
    ...
    dgmlang.errors.DGMUsageError: unknown device 'cuda:x'
        hint: use one of cpu, cuda, cuda:N, mps
    """
    if spec is None:
        return torch.device("cpu")
    if not isinstance(spec, (str, torch.device)):
        raise DGMUsageError(f"device must be a string or a torch.device, not {type(spec).__name__}",
                            hint=f"use one of {', '.join(DEVICES)}")
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or \
            (device.type != "cuda" and device.index not in (None, 0)):
        raise DGMUsageError(f"unknown device {str(spec)!r}", hint=f"use one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "torch finds no usable NVIDIA GPU (driver missing or no GPU)")
            raise DGMUsageError(f"device {str(spec)!r} asked for, but {why}", hint=CUDA_INSTALL)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DGMUsageError(f"device {str(spec)!r}: this machine has {count} CUDA device(s)",
                                hint=f"use cuda:0 .. cuda:{count - 1}")
        if device.index is None:  # as a module's tensors will report it
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        device = torch.device(device.type)  # "cpu:0" is the CPU, as tensors report it
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DGMUsageError(f"device {str(spec)!r} asked for, but torch's MPS backend (Apple "
                            "GPUs) is not available here", hint="use cpu")
    return device


def dtype_of(spec: Any) -> torch.dtype:
    """The float dtype named by `spec`: None (float32), "float32", "float64" or the torch
    dtype itself.

    >>> dtype_of(torch.float64)
    torch.float64
    """
    if spec is None:
        return torch.float32
    if isinstance(spec, torch.dtype) and spec in DTYPES.values():
        return spec
    if isinstance(spec, str) and spec.strip().lower() in DTYPES:
        return DTYPES[spec.strip().lower()]
    raise DGMUsageError(f"unknown dtype {spec!r}: a model computes in float32 or float64",
                        hint="use dtype='float32' (the default) or 'float64'")


def check_pair(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a dtype the device cannot compute in (MPS has no float64)."""
    if device.type == "mps" and dtype == torch.float64:
        raise DGMUsageError("the MPS device (Apple GPUs) has no float64",
                            hint="use dtype float32 on mps, or device cpu for float64")


def to_device(values: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """`values` on `device` (tensors already there are kept as they are). To a CUDA device
    the CPU tensors go through pinned memory with a non-blocking copy."""
    pin = device.type == "cuda"
    moved = {}
    for name, value in values.items():
        if value.device != device:
            if pin and value.device.type == "cpu":
                value = value.pin_memory().to(device, non_blocking=True)
            else:
                value = value.to(device)
        moved[name] = value
    return moved
