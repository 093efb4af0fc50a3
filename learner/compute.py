"""How every training step computes: channels-last memory layout and bf16 autocast.

Why: the networks here are small IMPALA CNNs on 32-64 px frames, and on a CPU their
convolutions are most of an update. oneDNN runs them in bf16 several times faster than
in fp32 on cores with bf16 units (AVX-512 BF16, AMX), and in the channels-last (NHWC)
layout it skips the reorders around each convolution. Neither changes what is learned:
under autocast the weights, their gradients and the optimiser state stay fp32 (each op
casts its inputs), and the losses are computed in fp32 from fp32 casts of the outputs.
Checkpoints, published weights and the ONNX graph the actors run stay fp32 in the
standard layout, so inference is bit-compatible with a model trained without this.

`ComputeConfig` is the flag group (`--compute.channels-last`, `--compute.bf16`);
`Compute.resolve` decides it for one device once, and every trainer (LAM, LAOM, latent
BC, the action decoder, the online learner and its SAC step) asks the `Compute` it was
given to lay out its model and inputs and to open its autocast region.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

# CPU flags that decide what the training step can use, in /proc/cpuinfo's names.
_CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class ComputeConfig:
    """How training steps compute (inference and published weights are always fp32)."""

    channels_last: bool = field(default=True, metadata={
        "help": "train convolutional networks in the channels-last (NHWC) memory layout"})
    bf16: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "bf16 autocast of the forward passes: auto = where the device has bf16 units "
                "(CPU: AVX-512 BF16 or AMX; GPU: Ampere or newer), on = always (emulated, slow, without them)"})


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The training-relevant flags of this machine's CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in _CPU_FEATURES if f in flags)


@functools.cache
def has_bf16_units(device_type: str) -> bool:
    """Whether bf16 matmuls/convolutions run natively (not emulated) on this kind of device.
    On the CPU this is oneDNN's own check, so a cap such as ONEDNN_MAX_CPU_ISA=AVX2 is honoured."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


@dataclass(frozen=True)
class Compute:
    """The resolved choice for one device; `Compute.resolve(ComputeConfig(channels_last=False, bf16="off"), d)`
    is the plain fp32 NCHW path."""

    device_type: str
    channels_last: bool
    bf16: bool

    @staticmethod
    def resolve(config: ComputeConfig, device: torch.device | str) -> "Compute":
        device_type = torch.device(device).type
        bf16 = config.bf16 == "on" or (config.bf16 == "auto" and has_bf16_units(device_type))
        return Compute(device_type, config.channels_last, bf16)

    def prepare(self, module: nn.Module) -> nn.Module:
        """The module in the training layout (in place; 4-D weights only, the rest is unchanged)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """An image batch (B, C, H, W) in the training layout; other tensors as they are."""
        if self.channels_last and tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        """The region the forward pass runs in: bf16 autocast, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def describe(self) -> dict:
        return {"device_type": self.device_type, "channels_last": self.channels_last, "bf16": self.bf16,
                "bf16_units": has_bf16_units(self.device_type), "cpu_features": list(cpu_features())}


PLAIN = ComputeConfig(channels_last=False, bf16="off")  # fp32, NCHW: the path before this module existed
