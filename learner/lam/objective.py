"""What one LAM update minimises, LAPO's and MaskLAM's alike:

    loss = reconstruction + vq_coef * vq + probe_coef * probe

reconstruction  the FDM's pixel error predicting the target frame o_{t+k} from the context
                frames and the latent: squared error summed over RGB, averaged over every
                pixel (LAPO, `loss="mse"`) or over the agent's pixels only (MaskLAM,
                `loss="masked"`), so background motion costs MaskLAM nothing.
vq              the quantiser's codebook + commitment loss (0 without a quantiser).
probe           a linear probe's MSE predicting the true action a_t from the *detached*
                latent: it reports how much action the latent holds, and no gradient of it
                reaches the IDM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learner.lam.batch import LAMBatch
from learner.lam.config import LAMConfig
from learner.lam.model import LatentActionModel


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Squared error summed over RGB, averaged over pixels: over all of them (LAPO, mask None),
    or over the agent's only (MaskLAM): sum M (o_hat - o)^2 / sum M, over the whole batch.

    With an all-ones mask the two are equal, so both methods train on one loss scale.
    """
    squared = (prediction - target).pow(2).sum(dim=1)  # (B, H, W)
    if mask is None:
        return squared.mean()
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)


def lam_losses(model: LatentActionModel, config: LAMConfig, batch: LAMBatch) -> dict[str, torch.Tensor]:
    """The objective of one batch (`loss`) and its parts."""
    prediction, z, vq = model(batch.idm_input, batch.fdm_input)
    mask = batch.target_mask if config.method.loss == "masked" else None
    # In fp32 whatever precision the forward ran in (learner/compute.py: bf16 autocast).
    reconstruction = reconstruction_loss(prediction.float(), batch.target, mask)
    probe = F.mse_loss(model.probe(z.detach()).float(), batch.action)
    loss = reconstruction + config.optim.vq_coef * vq + config.optim.probe_coef * probe
    return {"loss": loss, "reconstruction": reconstruction, "vq": vq, "probe": probe}
