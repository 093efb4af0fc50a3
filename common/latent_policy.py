"""The pixel policy of the downstream protocol: latent policy pi(o) -> z, then decoder z -> a.

The latent policy is an IMPALA CNN over the last few RGB frames (no mask: at deployment
there is no segmenter in the loop) regressing the frozen IDM's latent action (latent
behaviour cloning, the authors' stage 2). The decoder maps that latent to a real action;
it is a tanh-Gaussian MLP so that the online RL can fine-tune it as an actor, and its
deterministic output (tanh of the mean) is what behaviour cloning and evaluation use.
The learner trains them here in torch and publishes them as an ONNX graph of
`PixelPolicy.forward` (`learner.publish`); actors run that graph without torch, knowing
only `PixelPolicySpec` and its graph signature (`common.policy_spec`, re-exported here).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.nets import ImpalaEncoder, TanhGaussianActor, impala_channels, orthogonal_init
from common.policy_spec import PixelPolicySpec

__all__ = ["LatentPolicy", "PixelPolicy", "PixelPolicySpec", "frames_to_input"]


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

    def features(self, policy_input: torch.Tensor) -> torch.Tensor:
        """The trunk's view of the frame stack (pose, velocities, gait phase): what a critic
        needs to value a state, which the latent action alone does not carry."""
        return torch.relu(self.encoder(policy_input)[-1]).flatten(1)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def forward(self, policy_input: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(policy_input))


class PixelPolicy(nn.Module):
    """Latent policy + action decoder: the whole pixel policy, as published to the actors."""

    def __init__(self, spec: PixelPolicySpec):
        super().__init__()
        self.spec = spec
        self.latent_policy = LatentPolicy(spec)
        self.decoder = TanhGaussianActor(spec.latent_dim, spec.action_dim, spec.decoder_hidden)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frame stacks (B, F, H, W, 3) -> (latent, deterministic action): the published
        computation, whose graph `PixelPolicySpec.signature` describes."""
        z = self.latent_policy(frames_to_input(frames))
        return z, self.decoder.deterministic(z)
