"""The pixel policy of the downstream protocol: latent policy pi(o) -> z, then decoder z -> a.

The latent policy is an IMPALA CNN over the last few RGB frames (no mask: at deployment
there is no segmenter in the loop) regressing the frozen IDM's latent action (latent
behaviour cloning, the authors' stage 2). The decoder maps that latent to a real action;
it is a tanh-Gaussian MLP so that the online RL can fine-tune it as an actor, and its
deterministic output (tanh of the mean) is what behaviour cloning and evaluation use.
Both the learner (which trains them) and the actors (which act with them) build them
from `PixelPolicySpec`, so a published set of weights fits on either side.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.nets import ImpalaEncoder, TanhGaussianActor, impala_channels, orthogonal_init


@dataclass(frozen=True)
class PixelPolicySpec:
    """Everything that fixes the shapes of the latent policy and its decoder."""

    image_size: int
    action_dim: int
    latent_dim: int
    frames: int = 3  # stacked RGB frames o_{t-frames+1} .. o_t
    scale: int = 1  # IMPALA widths 16/32/32 x scale
    num_blocks: int = 2
    decoder_hidden: int = 256


def frames_to_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) frame stacks -> float (B, 3F, H, W) in [-0.5, 0.5]."""
    tensor = torch.as_tensor(frames)
    b, f, h, w, c = tensor.shape
    return tensor.permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w).float().div_(255.0).sub_(0.5)


class LatentPolicy(nn.Module):
    """Frame stack -> latent action, with a linear probe to the true action on the detached
    latent (reported during behaviour cloning, never shaping the policy)."""

    def __init__(self, spec: PixelPolicySpec):
        super().__init__()
        channels = impala_channels(spec.scale)
        self.encoder = ImpalaEncoder(3 * spec.frames, channels, spec.num_blocks)
        side = ImpalaEncoder.output_side(spec.image_size, len(channels))
        self.head = nn.Linear(channels[-1] * side * side, spec.latent_dim)
        self.probe = nn.Linear(spec.latent_dim, spec.action_dim)
        orthogonal_init(self, gain=1.0)

    def forward(self, policy_input: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(policy_input)[-1]).flatten(1))


class PixelPolicy(nn.Module):
    """Latent policy + action decoder: the whole pixel policy, as published to the actors."""

    def __init__(self, spec: PixelPolicySpec):
        super().__init__()
        self.spec = spec
        self.latent_policy = LatentPolicy(spec)
        self.decoder = TanhGaussianActor(spec.latent_dim, spec.action_dim, spec.decoder_hidden)

    @torch.no_grad()
    def act(self, frames: np.ndarray) -> np.ndarray:
        """Deterministic actions for uint8 frame stacks (B, F, H, W, 3)."""
        z = self.latent_policy(frames_to_input(frames))
        return self.decoder.deterministic(z).numpy()


class FrameStacker:
    """The last `frames` frames of each env; an episode starts by repeating its first frame."""

    def __init__(self, num_envs: int, frames: int):
        self.stacks: list[deque] = [deque(maxlen=frames) for _ in range(num_envs)]

    def reset(self, index: int) -> None:
        self.stacks[index].clear()

    def push(self, index: int, frame: np.ndarray) -> None:
        """Append `frame`, unless it is the very frame pushed last (an env that did not step)."""
        stack = self.stacks[index]
        if stack and stack[-1] is frame:
            return
        if not stack:
            stack.extend([frame] * (stack.maxlen - 1))
        stack.append(frame)

    def batch(self) -> np.ndarray:
        return np.stack([np.stack(stack) for stack in self.stacks])
