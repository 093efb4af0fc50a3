"""Training one LAM (one method, one seed) on an in-memory dataset, with probes along the way.

`train_lam` runs AdamW with a cosine schedule to 0, logs losses, evaluates the offline
probes every `eval_every` updates (the learning curves), checkpoints the model with its
config, and resumes from the checkpoint if one is there. Evaluation time is not counted
in `train_seconds`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learner.data import TransitionData, Windows, gather_windows, sample_windows
from learner.lam.batch import LAMBatch, input_channels, make_batch, reconstruction_loss
from learner.lam.config import LAMConfig, MethodConfig, ModelConfig, OptimConfig
from learner.lam.model import LatentActionModel
from learner.offline_run import CHECKPOINT, OfflineRun
from learner.probe import nmse, ridge_probe

ENCODE_BATCH = 256


@dataclass
class ProbeSet:
    """Held-out windows (k = 1) and which of them fit the probe (the rest score it)."""

    windows: Windows
    fit: np.ndarray  # bool (N,)


def make_probe_set(data: TransitionData, window: int, max_samples: int, seed: int) -> ProbeSet:
    """Up to `max_samples` windows; fit/score split by whole episodes (by chunk if under 4 episodes)."""
    starts = data.window_starts(window)
    if len(starts) > max_samples:
        starts = np.sort(np.random.default_rng(seed).choice(starts, max_samples, replace=False))
    chunk = np.searchsorted(data.chunk_start, starts, side="right") - 1
    unit = data.chunk_episode[chunk] if len(np.unique(data.chunk_episode)) >= 4 else chunk
    return ProbeSet(gather_windows(data, starts, window), fit=unit % 2 == 0)


def build_model(config: LAMConfig, image_size: int, action_dim: int) -> LatentActionModel:
    idm_channels, fdm_channels = input_channels(config.method, config.model)
    return LatentActionModel(config.model, idm_channels, fdm_channels, image_size, action_dim)


@torch.no_grad()
def encode_probe_set(model: LatentActionModel, config: LAMConfig, probe_set: ProbeSet
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(latents, online-probe predictions, actions, background velocities) of every window."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)

    def encode(part: Windows) -> tuple[torch.Tensor, LAMBatch]:
        batch = make_batch(part, config.method, config.model, np.ones(len(part.frames), np.int64), generator)
        return model.encode(batch.idm_input.to(device))[0], batch

    return encode_in_batches(model, probe_set, encode)


def encode_in_batches(model: torch.nn.Module, probe_set: ProbeSet,
                      encode: Callable[[Windows], tuple[torch.Tensor, LAMBatch]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run `encode` (windows -> latent, batch with .action and .bg_velocity) over a probe set in
    slices, in eval mode: (latents, online-probe predictions, actions, background velocities).
    Shared by the model families; each brings its own `encode`."""
    model.eval()
    latents, predictions, actions, velocity = [], [], [], []
    for i in range(0, len(probe_set.fit), ENCODE_BATCH):
        part = Windows(*(getattr(probe_set.windows, f.name)[i:i + ENCODE_BATCH] for f in dataclasses.fields(Windows)))
        z, batch = encode(part)
        latents.append(z.float().cpu().numpy())
        predictions.append(model.probe(z).float().cpu().numpy())
        actions.append(batch.action.numpy())
        velocity.append(batch.bg_velocity.numpy())
    model.train()
    return tuple(np.concatenate(parts) for parts in (latents, predictions, actions, velocity))


@torch.no_grad()
def latent_actions(model: LatentActionModel, config: LAMConfig, data: TransitionData, rows: np.ndarray) -> np.ndarray:
    """The frozen IDM's latent action z_t (future offset 1) for every row t: the targets of the
    downstream protocol's latent behaviour cloning."""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    method, latents = config.method, []
    for i in range(0, len(rows), ENCODE_BATCH):
        part = rows[i:i + ENCODE_BATCH]
        windows = gather_windows(data, part - method.context_frames + 1, method.probe_window)
        batch = make_batch(windows, method, config.model, np.ones(len(part), np.int64), generator)
        latents.append(model.encode(batch.idm_input)[0].numpy())
    return np.concatenate(latents)


def evaluate_probes(model: LatentActionModel, config: LAMConfig, probe_sets: dict[str, ProbeSet],
                    encode: Callable = encode_probe_set) -> dict:
    """Offline ridge probes on each held-out set; the online probe and the background probe
    on the decorrelated `eval` set (the headline). `encode` is the model family's
    `encode_probe_set` (LAOM passes its own)."""
    results: dict = {}
    for name, probe_set in probe_sets.items():
        z, online, actions, velocity = encode(model, config, probe_set)
        fit, score = probe_set.fit, ~probe_set.fit
        action_score = ridge_probe(z[fit], actions[fit], z[score], actions[score])
        suffix = "" if name == "eval" else f"_{name}"
        results[f"probe_nmse{suffix}"] = action_score.nmse
        results[f"probe_nmse_per_dim{suffix}"] = action_score.per_dim
        if name == "eval":
            online_score = nmse(online[score], actions[score])
            results["probe_nmse_online"] = online_score.nmse
            results["probe_nmse_online_per_dim"] = online_score.per_dim
            results["background_nmse"] = ridge_probe(z[fit], velocity[fit], z[score], velocity[score]).nmse
    return results


def lam_losses(model: LatentActionModel, config: LAMConfig, batch: LAMBatch) -> dict[str, torch.Tensor]:
    """The objective of one batch (`loss`) and its parts: the reconstruction (masked for MaskLAM),
    the VQ loss, and the online probe on the detached latent (it reports, it never shapes the latent)."""
    prediction, z, vq_loss = model(batch.idm_input, batch.fdm_input)
    mask = batch.target_mask if config.method.loss == "masked" else None
    rec = reconstruction_loss(prediction, batch.target, mask)
    probe = torch.nn.functional.mse_loss(model.probe(z.detach()), batch.action)
    loss = rec + config.optim.vq_coef * vq_loss + config.optim.probe_coef * probe
    return {"loss": loss, "reconstruction": rec, "vq": vq_loss, "probe": probe}


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over `warmup` steps, then follows a cosine to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (min(step, total) - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_lam(config: LAMConfig, data: TransitionData, probe_sets: dict[str, ProbeSet], out: str | Path,
              seed: int, eval_every: int, label: str = "lam", log_every: int = 50, device: str = "cpu") -> dict:
    """Train to `config.optim.updates` (resuming from OUT/checkpoint.pt), write OUT/metrics.json.

    Returns the metrics: final probe scores, final losses, timings and the curves.
    """
    run = OfflineRun(out, config, seed, config.optim.updates, label, log_every)
    if (finished := run.finished()) is not None:
        return finished
    torch.manual_seed(seed)
    image_size = data.frames.shape[1]
    model = build_model(config, image_size, data.action_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = cosine_schedule(optimizer, config.optim.updates)
    run.resume(device, model=model, optimizer=optimizer, scheduler=scheduler)

    method = config.method
    starts = data.window_starts(method.window)
    if len(starts) == 0:
        raise ValueError(f"no chunk holds the {method.window} consecutive frames this method needs")
    rng, generator = run.rng_seeds()
    if not run.state["probes"]:
        run.record_probes(evaluate_probes(model, config, probe_sets))
    while run.update < config.optim.updates:
        run.start_update()
        windows = sample_windows(data, starts, config.optim.batch_size, method.window, rng)
        offsets = rng.integers(1, method.max_future_offset + 1, size=config.optim.batch_size)
        losses = lam_losses(model, config, make_batch(windows, method, config.model, offsets, generator).to(device))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        if run.end_update(losses) or run.update % eval_every == 0:
            run.record_probes(evaluate_probes(model, config, probe_sets))
            run.save(model=model, optimizer=optimizer, scheduler=scheduler, image_size=image_size,
                     action_dim=data.action_dim)
    return run.finish(sum(p.numel() for p in model.parameters()))


def load_model(out: str | Path) -> tuple[LatentActionModel, dict]:
    """The model saved in OUT/checkpoint.pt and its config (as a dict)."""
    checkpoint = torch.load(Path(out) / CHECKPOINT, map_location="cpu", weights_only=True)
    saved = checkpoint["config"]
    config = LAMConfig(ModelConfig(**saved["model"]), MethodConfig(**saved["method"]), OptimConfig(**saved["optim"]))
    model = build_model(config, checkpoint["image_size"], checkpoint["action_dim"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, config
