"""The LAOM model: a shared encoder, an IDM head, a latent-space FDM head and an EMA target encoder.

encoder      o (a stack of RGB frames) -> e: an IMPALA CNN's last feature map (no quantiser
             anywhere, no pixel decoder).
IDM head     (e_t, e_{t+k}) -> z, the latent action.
FDM head     (e_t, z) -> the prediction of the *target* encoder's feature map of o_{t+1}.
             Its e_t is detached: the FDM's error reaches the encoder only through z.
target       an exponential moving average of the encoder, never trained by gradients.
probe        a linear layer on the detached latent: it reports, it never shapes the model.
action head  (LAOM-Labels only) a linear latent -> true action map, trained on labelled batches.

The heads are dense MLPs as in the reference: every block sees its conditioning input
again (the IDM head both embeddings, the FDM head the latent), so it cannot be dropped.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from common.nets import ImpalaEncoder, impala_channels, orthogonal_init
from learner.laom.config import LAOMModelConfig


class ResidualMLP(nn.Module):
    """LayerNorm(x + MLP(x)), the MLP 4x wide."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


class DenseHead(nn.Module):
    """x -> `depth` times [concat(x, condition) -> linear -> LayerNorm -> GELU -> residual MLP] -> linear.

    `inputs` may be 0: the first block then sees the condition alone (the IDM head).
    """

    def __init__(self, inputs: int, condition: int, width: int, outputs: int, depth: int):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear((inputs if i == 0 else width) + condition, width), nn.LayerNorm(width), nn.GELU())
            for i in range(depth))
        self.blocks = nn.ModuleList(ResidualMLP(width) for _ in range(depth))
        self.output = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor | None, condition: torch.Tensor) -> torch.Tensor:
        for projection, block in zip(self.projections, self.blocks):
            x = block(projection(condition if x is None else torch.cat([x, condition], dim=1)))
        return self.output(x)


class ObservationEncoder(nn.Module):
    """IMPALA CNN over a stacked observation -> its last feature map (B, C, s, s)."""

    def __init__(self, in_channels: int, config: LAOMModelConfig):
        super().__init__()
        self.impala = ImpalaEncoder(in_channels, impala_channels(config.encoder_scale), config.num_blocks)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.impala(obs)[-1]


class LAOM(nn.Module):
    """Encoder + IDM head + FDM head + EMA target encoder + probe (+ action head)."""

    def __init__(self, config: LAOMModelConfig, in_channels: int, image_size: int, action_dim: int,
                 action_head: bool = False):
        super().__init__()
        channels = impala_channels(config.encoder_scale)
        side = ImpalaEncoder.output_side(image_size, len(channels))
        self.feature_shape = (channels[-1], side, side)
        embedding = math.prod(self.feature_shape)
        self.encoder = ObservationEncoder(in_channels, config)
        self.idm_head = DenseHead(0, 2 * embedding, config.head_dim, config.latent_dim, config.head_depth)
        self.fdm_head = DenseHead(embedding, config.latent_dim, config.head_dim, embedding, config.head_depth)
        self.probe = nn.Linear(config.latent_dim, action_dim)
        self.action_head = nn.Linear(config.latent_dim, action_dim) if action_head else None
        orthogonal_init(self, gain=1.0)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: everything but the target encoder."""
        return [p for p in self.parameters() if p.requires_grad]

    def latent(self, obs: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z from (o_t, o_{t+k}), e_t flattened); both observations go through the encoder as one batch."""
        embeddings = self.encoder(torch.cat([obs, future])).flatten(1)
        e_now, e_future = embeddings.split(obs.shape[0])
        return self.idm_head(None, torch.cat([e_now, e_future], dim=1)), e_now

    def forward(self, obs: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted target feature map of o_{t+1} (B, C, s, s), latent z)."""
        z, e_now = self.latent(obs, future)
        prediction = self.fdm_head(e_now.detach(), z)  # detached: no FDM gradient into the encoder via e_t
        return prediction.reshape(-1, *self.feature_shape), z

    @torch.no_grad()
    def target_features(self, next_obs: torch.Tensor) -> torch.Tensor:
        """The EMA target encoder's feature map of o_{t+1} (the FDM's regression target)."""
        return self.target_encoder(next_obs)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- (1 - tau) target + tau online, parameter by parameter."""
        for target, online in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            target.lerp_(online, tau)
