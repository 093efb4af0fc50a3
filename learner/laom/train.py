"""Training one LAOM (one method, one seed) on an in-memory dataset, with probes along the way.

Same contract as `learner.lam.train.train_lam`: AdamW with a (warmed-up) cosine schedule
to 0, losses logged every `log_every` updates, the offline probes every `eval_every`
(the learning curves), OUT/checkpoint.pt with the config (resumed when it matches),
OUT/metrics.json with the same keys, evaluation time not counted in `train_seconds`.

One update: the FDM's error predicting the EMA target encoder's feature map of o_{t+1}
from (e_t, z), z = IDM(e_t, e_{t+k}) on augmented observations; LAOM-Labels adds
`label_coef` x the MSE of a linear action head on the latent of a separate batch drawn
only from the labelled transitions; the online probe reads the detached latent. After
the optimiser's step the target encoder moves towards the encoder by `target_tau`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.windows import Windows
from learner.compute import Compute, ComputeConfig
from learner.data import TransitionData, idm_windows, sample_windows
from learner.laom.augment import augment
from learner.laom.batch import LAOMBatch, labelled_starts, make_batch
from learner.laom.config import LAOMConfig, LAOMMethodConfig, LAOMModelConfig, LAOMOptimConfig
from learner.laom.model import LAOM
from learner.lam.train import cosine_schedule
from learner.offline_run import CHECKPOINT, OfflineRun
from learner.probe import ENCODE_BATCH, ProbeSet, encode_in_batches, evaluate_probes


def build_model(config: LAOMConfig, image_size: int, action_dim: int) -> LAOM:
    return LAOM(config.model, 3 * config.method.frame_stack, image_size, action_dim, action_head=config.method.labels)


def masked_observation(obs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Background pixels of every frame of (B, 3S, H, W) observations set to black (-1); masks (B, S, H, W)."""
    b, channels, h, w = obs.shape
    frames = obs.reshape(b, channels // 3, 3, h, w)
    return ((frames + 1) * masks[:, :, None] - 1).reshape(b, channels, h, w)


def feature_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Squared error over feature maps (B, C, s, s): the mean over everything (weights None), or
    sum w (pred - target)^2 / (C sum w) over the batch with per-location weights w (B, s, s)."""
    squared = (prediction - target).pow(2)
    if weights is None:
        return squared.mean()
    return (squared * weights[:, None]).sum() / (weights.sum() * target.shape[1]).clamp_min(1e-6)


def target_and_weights(model: LAOM, method: LAOMMethodConfig, batch: LAOMBatch, generator: torch.Generator | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The target encoder's features of o_{t+1} (masked, augmented as the method says) and, for
    `target_masking="features"`, the agent's share of each feature-map location (its last frame's mask)."""
    next_obs, masks = batch.next_obs, batch.next_masks
    if method.target_masking == "input":
        next_obs = masked_observation(next_obs, masks)
    if generator is not None:  # the mask is warped with its observation
        next_obs, masks = augment(torch.cat([next_obs, masks], dim=1), generator).split(
            [next_obs.shape[1], masks.shape[1]], dim=1)
    target = model.target_features(next_obs)
    if method.target_masking != "features":
        return target, None
    return target, F.adaptive_avg_pool2d(masks[:, -1:], target.shape[-2:])[:, 0]


def laom_losses(model: LAOM, config: LAOMConfig, batch: LAOMBatch, labelled: LAOMBatch | None,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The objective of one step (`loss`) and its parts: `reconstruction` (the FDM's error in the
    target encoder's feature space; named as the LAM's so the comparison plots them side by side),
    `probe`, and `label` (LAOM-Labels)."""
    method = config.method
    draw = generator if method.augment else None
    obs, future = batch.obs, batch.future
    if draw is not None:
        obs, future = augment(obs, draw), augment(future, draw)
    prediction, z = model(obs, future)
    target, weights = target_and_weights(model, method, batch, draw)
    # In fp32 whatever precision the forward ran in (learner/compute.py: bf16 autocast).
    reconstruction = feature_loss(prediction.float(), target.float(), weights)
    probe = F.mse_loss(model.probe(z.detach()).float(), batch.action)
    losses = {"reconstruction": reconstruction, "probe": probe}
    loss = reconstruction + config.optim.probe_coef * probe
    if labelled is not None:
        obs, future = labelled.obs, labelled.future
        if draw is not None:
            obs, future = augment(obs, draw), augment(future, draw)
        losses["label"] = F.mse_loss(model.action_head(model.latent(obs, future)[0]).float(), labelled.action)
        loss = loss + config.optim.label_coef * losses["label"]
    return {"loss": loss, **losses}


def apply_update(model: LAOM, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 loss: torch.Tensor, tau: float) -> None:
    """One optimiser step on `loss`, one schedule step, then the target encoder's EMA step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    model.update_target(tau)


def laom_step(model: LAOM, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
              config: LAOMConfig, batch: LAOMBatch, labelled: LAOMBatch | None, generator: torch.Generator,
              compute: Compute) -> dict[str, torch.Tensor]:
    """One update: the objective under `compute`'s autocast, then `apply_update`. The step of
    `train_laom` and benchmarks.lam (the batches already in `compute`'s layout)."""
    with compute.autocast():
        losses = laom_losses(model, config, batch, labelled, generator)
    apply_update(model, optimizer, scheduler, losses["loss"], config.optim.target_tau)
    return losses


@torch.no_grad()
def encode_windows(model: LAOM, method: LAOMMethodConfig, windows: Windows) -> tuple[torch.Tensor, LAOMBatch]:
    """(latents with k = 1, the batch) for windows of `method.probe_window` frames; no augmentation."""
    device = next(model.parameters()).device
    batch = make_batch(windows, method, np.ones(len(windows.frames), np.int64))
    z, _ = model.latent(batch.obs.to(device), batch.future.to(device))
    return z, batch


@torch.no_grad()
def encode_probe_set(model: LAOM, config: LAOMConfig, probe_set: ProbeSet
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(latents, online-probe predictions, actions, background velocities) of every window."""
    return encode_in_batches(model, probe_set, lambda part: encode_windows(model, config.method, part))


@torch.no_grad()
def latent_actions(model: LAOM, config: LAOMConfig, data: TransitionData, rows: np.ndarray) -> np.ndarray:
    """The frozen model's latent action z_t = IDM(e(o_t), e(o_{t+1})) for every row t (the
    downstream protocol's targets)."""
    model.eval()
    method, latents = config.method, []
    for i in range(0, len(rows), ENCODE_BATCH):
        part = rows[i:i + ENCODE_BATCH]
        z, _ = encode_windows(model, method, idm_windows(data, part, method))
        latents.append(z.float().cpu().numpy())
    return np.concatenate(latents)


def train_laom(config: LAOMConfig, data: TransitionData, probe_sets: dict[str, ProbeSet], out: str | Path,
               seed: int, eval_every: int, label: str = "laom", log_every: int = 50, device: str = "cpu",
               compute: ComputeConfig = ComputeConfig()) -> dict:
    """Train to `config.optim.updates` (resuming from OUT/checkpoint.pt), write OUT/metrics.json;
    each step in `compute`'s layout and precision (learner/compute.py)."""
    optim = config.optim
    run = OfflineRun(out, config, seed, optim.updates, label, log_every)
    if (finished := run.finished()) is not None:
        return finished
    torch.manual_seed(seed)
    image_size = data.frames.shape[1]
    step_compute = Compute.resolve(compute, device)
    model = step_compute.prepare(build_model(config, image_size, data.action_dim).to(device))
    optimizer = torch.optim.AdamW(model.online_parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = cosine_schedule(optimizer, optim.updates, warmup=round(optim.warmup * optim.updates))
    run.resume(device, model=model, optimizer=optimizer, scheduler=scheduler)

    method = config.method
    starts = data.window_starts(method.window)
    if len(starts) == 0:
        raise ValueError(f"no chunk holds the {method.window} consecutive frames this method needs")
    label_starts = labelled_starts(data, method.window, method.label_budget) if method.labels else None
    if label_starts is not None and len(label_starts) == 0:
        raise ValueError(f"no {method.window}-frame window lies within the first {method.label_budget} transitions")
    rng, generator = run.rng_seeds()

    def draw(pool: np.ndarray, size: int) -> LAOMBatch:
        windows = sample_windows(data, pool, size, method.window, rng)
        offsets = rng.integers(1, method.max_future_offset + 1, size=size)
        return make_batch(windows, method, offsets).to(device).in_layout(step_compute)

    if not run.state["probes"]:
        run.record_probes(evaluate_probes(model, config, probe_sets, encode=encode_probe_set))
    while run.update < optim.updates:
        run.start_update()
        batch = draw(starts, optim.batch_size)
        labelled = draw(label_starts, optim.label_batch_size) if label_starts is not None else None
        losses = laom_step(model, optimizer, scheduler, config, batch, labelled, generator, step_compute)
        if run.end_update(losses) or run.update % eval_every == 0:
            run.record_probes(evaluate_probes(model, config, probe_sets, encode=encode_probe_set))
            run.save(model=model, optimizer=optimizer, scheduler=scheduler, image_size=image_size,
                     action_dim=data.action_dim)
    return run.finish(sum(p.numel() for p in model.online_parameters()), step_compute.describe())


def load_model(out: str | Path) -> tuple[LAOM, LAOMConfig]:
    """The model saved in OUT/checkpoint.pt and its config."""
    checkpoint = torch.load(Path(out) / CHECKPOINT, map_location="cpu", weights_only=True)
    saved = checkpoint["config"]
    config = LAOMConfig(LAOMModelConfig(**saved["model"]), LAOMMethodConfig(**saved["method"]),
                        LAOMOptimConfig(**saved["optim"]))
    model = build_model(config, checkpoint["image_size"], checkpoint["action_dim"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, config
