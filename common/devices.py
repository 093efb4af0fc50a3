"""Torch devices as settings name them: "auto", "cpu", "cuda", "cuda:1".

One resolver for every command and service, so "auto" means the same everywhere: the GPU
when torch sees one (inside a Ray worker: when the worker was given one), else the CPU.
"""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """The device `name` stands for ("auto": the GPU if torch sees one, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str, here: bool = True) -> None:
    """Refuse (ValueError) a name torch has no device for ("gpu"), and, when the device is used
    `here` (by this process, not by a worker elsewhere), a GPU this machine does not show."""
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise ValueError("is not a torch device") from None
    if here and device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ValueError(f"names a GPU this machine does not show ({count} visible)")
