"""The latent action model: IDM (frames -> latent action) and FDM (context + latent -> next frame).

The IDM is an IMPALA CNN over the stacked input frames with a linear head to the latent.
The FDM is an IMPALA-style encoder-decoder: the encoder's stages are mirrored by
upsampling stages with skip connections (a U-Net, as LAPO's world model), and the latent
enters every decoder stage as a per-channel bias, so the prediction cannot ignore it.
Only the latent carries information about the future frame: that is what makes it an
action. An optional vector quantiser sits between them; a linear probe reads the
detached latent (it reports, it never trains the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.nets import ImpalaEncoder, ResidualBlock, impala_channels, orthogonal_init
from learner.lam.config import ModelConfig


class VectorQuantizer(nn.Module):
    """VQ-VAE quantiser (van den Oord et al., 2017) on `groups` sub-vectors of the latent,
    with a straight-through gradient; loss = codebook + beta * commitment."""

    def __init__(self, latent_dim: int, num_codes: int, groups: int, beta: float):
        super().__init__()
        if latent_dim % groups:
            raise ValueError(f"latent_dim {latent_dim} must be divisible by vq_groups {groups}")
        self.groups, self.beta = groups, beta
        self.codebook = nn.Parameter(torch.randn(num_codes, latent_dim // groups) / (latent_dim // groups) ** 0.5)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = z.reshape(-1, self.codebook.shape[1])
        codes = torch.cdist(parts, self.codebook).argmin(dim=1)
        quantised = self.codebook[codes].reshape(z.shape)
        loss = F.mse_loss(quantised, z.detach()) + self.beta * F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), loss


class InverseDynamics(nn.Module):
    """IMPALA CNN over stacked frames -> latent action."""

    def __init__(self, in_channels: int, image_size: int, config: ModelConfig):
        super().__init__()
        channels = impala_channels(config.idm_scale)
        self.encoder = ImpalaEncoder(in_channels, channels, config.num_blocks)
        side = ImpalaEncoder.output_side(image_size, len(channels))
        self.head = nn.Linear(channels[-1] * side * side, config.latent_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = self.encoder(frames)[-1]
        return self.head(torch.relu(features).flatten(1))


class DecoderStage(nn.Module):
    """Upsample x2, concatenate the encoder's skip, conv to `out_channels`, add the latent's
    bias, then residual blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, latent_dim: int, num_blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1)
        self.latent_bias = nn.Linear(latent_dim, out_channels)
        self.blocks = nn.Sequential(*(ResidualBlock(out_channels) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        x = self.conv(torch.cat([x, skip], dim=1)) + self.latent_bias(z)[:, :, None, None]
        return self.blocks(x)


class ForwardDynamics(nn.Module):
    """Context frames + latent -> predicted RGB target frame (in the [-0.5, 0.5] scale)."""

    def __init__(self, in_channels: int, config: ModelConfig):
        super().__init__()
        channels = impala_channels(config.fdm_scale)
        self.encoder = ImpalaEncoder(in_channels, channels, config.num_blocks)
        self.bottleneck_bias = nn.Linear(config.latent_dim, channels[-1])
        # Decoder stages from coarse to fine; the last one's skip is the input itself.
        skips = (*channels[:-1][::-1], in_channels)
        outs = (*channels[:-1][::-1], channels[0])
        ins = (channels[-1], *outs[:-1])
        self.decoder = nn.ModuleList(DecoderStage(i, s, o, config.latent_dim, config.num_blocks)
                                     for i, s, o in zip(ins, skips, outs))
        self.output = nn.Conv2d(channels[0], 3, 3, padding=1)

    def forward(self, context: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        features = self.encoder(context)
        x = features[-1] + self.bottleneck_bias(z)[:, :, None, None]
        skips = [*features[:-1][::-1], context]
        for stage, skip in zip(self.decoder, skips):
            x = stage(x, skip, z)
        return self.output(torch.relu(x))


class LatentActionModel(nn.Module):
    """IDM + (optional VQ) + FDM + online linear probe."""

    def __init__(self, config: ModelConfig, idm_channels: int, fdm_channels: int, image_size: int, action_dim: int):
        super().__init__()
        self.idm = InverseDynamics(idm_channels, image_size, config)
        self.fdm = ForwardDynamics(fdm_channels, config)
        self.quantizer = (VectorQuantizer(config.latent_dim, config.vq_codes, config.vq_groups, config.vq_beta)
                          if config.quantizer == "vq" else None)
        self.probe = nn.Linear(config.latent_dim, action_dim)
        # Gain 1, not ReLU's sqrt(2): with residual sums and U-Net skips, sqrt(2) grows
        # activations ~10x per stage. The output starts near 0 (a grey frame).
        orthogonal_init(self, gain=1.0)
        orthogonal_init(self.fdm.output, gain=0.1)

    def encode(self, idm_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent the FDM sees, VQ loss); the loss is 0 without a quantiser."""
        z = self.idm(idm_input)
        if self.quantizer is None:
            return z, z.new_zeros(())
        return self.quantizer(z)

    def forward(self, idm_input: torch.Tensor, fdm_input: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predicted target frame, latent, VQ loss)."""
        z, vq_loss = self.encode(idm_input)
        return self.fdm(fdm_input, z), z, vq_loss
