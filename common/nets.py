"""Network blocks shared by several roles: the IMPALA CNN (Espeholt et al., 2018) and the
tanh-Gaussian MLP actor.

The LAM's inverse dynamics model and world model (learner/) and the latent policy that
actors act with are all built from these stages, so they are defined once, here. The
MLP actor is the SAC experts' policy, the action decoder and the online RL actor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def orthogonal_init(module: nn.Module, gain: float = 2**0.5) -> None:
    """Orthogonal weights and zero biases for every conv and linear layer (as the authors)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3, channels unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStage(nn.Module):
    """conv 3x3 -> max-pool 3/2 (halves the side) -> `num_blocks` residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(out_channels) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(self.conv(x)))


def impala_channels(scale: int, base: tuple[int, ...] = (16, 32, 32)) -> tuple[int, ...]:
    """The stage widths 16/32/32 x scale (scale 4 in the paper)."""
    return tuple(c * scale for c in base)


class ImpalaEncoder(nn.Module):
    """Stages of `ImpalaStage`; `forward` returns every stage's output (finest first),
    so a decoder can use them as skip connections and a head can flatten the last."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], num_blocks: int = 2):
        super().__init__()
        widths = (in_channels, *channels)
        self.stages = nn.ModuleList(ImpalaStage(a, b, num_blocks) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    @staticmethod
    def output_side(image_size: int, num_stages: int) -> int:
        side = image_size
        for _ in range(num_stages):
            side = (side + 1) // 2
        return side


def mlp(inputs: int, outputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


class TanhGaussianActor(nn.Module):
    """pi(a|s): a Gaussian squashed by tanh into [-1, 1]^A."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, hidden)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        log_prob -= (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return action, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs).chunk(2, dim=-1)[0])
