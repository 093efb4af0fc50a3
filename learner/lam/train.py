"""Training one LAM (one method, one seed) on an in-memory dataset, with probes along the way.

`train_lam` runs AdamW with a cosine schedule to 0, logs losses, evaluates the offline
probes every `eval_every` updates (the learning curves), checkpoints the model with its
config, and resumes from the checkpoint if one is there. Evaluation time is not counted
in `train_seconds`. Its update, `lam_step`, is also the online learner's and the one
benchmarks.lam times; the loss it minimises is in learner/lam/objective.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from common.windows import Windows
from learner.compute import Compute, ComputeConfig
from learner.data import TransitionData, idm_windows, sample_windows
from learner.lam.batch import LAMBatch, input_channels, make_batch
from learner.lam.config import LAMConfig, MethodConfig, ModelConfig, OptimConfig
from learner.lam.model import LatentActionModel
from learner.lam.objective import lam_losses
from learner.offline_run import CHECKPOINT, OfflineRun
from learner.probe import ENCODE_BATCH, Encoded, ProbeSet, encode_in_batches, evaluate_probes


def build_model(config: LAMConfig, image_size: int, action_dim: int) -> LatentActionModel:
    idm_channels, fdm_channels = input_channels(config.method, config.model)
    return LatentActionModel(config.model, idm_channels, fdm_channels, image_size, action_dim)


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over `warmup` steps, then follows a cosine to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (min(step, total) - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lam_step(model: LatentActionModel, optimizer: torch.optim.Optimizer, config: LAMConfig, windows: Windows,
             rng: np.random.Generator, generator: torch.Generator,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *, compute: Compute) -> dict[str, torch.Tensor]:
    """One update on a batch of `config.method.window`-frame windows: the future offsets k ~ U{1..K}
    from `rng`, the batch on the model's device in `compute`'s layout, the objective
    (learner/lam/objective.py) under its autocast, an optimiser step and, offline, a schedule
    step (the online learner keeps a constant rate).
    The one LAM update of offline training, the online learner and benchmarks.lam."""
    method = config.method
    offsets = rng.integers(1, method.max_future_offset + 1, size=len(windows.frames))
    device = next(model.parameters()).device
    batch = make_batch(windows, method, config.model, offsets, generator).to(device)
    batch.idm_input, batch.fdm_input = compute.layout(batch.idm_input), compute.layout(batch.fdm_input)
    with compute.autocast():
        losses = lam_losses(model, config, batch)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return losses


@torch.no_grad()
def encode_windows(model: LatentActionModel, config: LAMConfig, windows: Windows, generator: torch.Generator
                   ) -> tuple[torch.Tensor, LAMBatch]:
    """(latents on the model's device, the batch on the CPU) for windows of `probe_window` frames, k = 1."""
    device = next(model.parameters()).device
    batch = make_batch(windows, config.method, config.model, np.ones(len(windows.frames), np.int64), generator)
    return model.encode(batch.idm_input.to(device))[0], batch


def encode_probe_set(model: LatentActionModel, config: LAMConfig, probe_set: ProbeSet) -> Encoded:
    """(latents, online-probe predictions, actions, background velocities) of every window."""
    generator = torch.Generator().manual_seed(0)
    return encode_in_batches(model, probe_set, lambda part: encode_windows(model, config, part, generator))


@torch.no_grad()
def latent_actions(model: LatentActionModel, config: LAMConfig, data: TransitionData, rows: np.ndarray) -> np.ndarray:
    """The frozen IDM's latent action z_t (future offset 1) for every row t, on the CPU whatever
    the model's device: the targets of the downstream protocol's latent behaviour cloning."""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    method, latents = config.method, []
    for i in range(0, len(rows), ENCODE_BATCH):
        part = rows[i:i + ENCODE_BATCH]
        windows = idm_windows(data, part, method)
        latents.append(encode_windows(model, config, windows, generator)[0].float().cpu().numpy())
    return np.concatenate(latents)


def train_lam(config: LAMConfig, data: TransitionData, probe_sets: dict[str, ProbeSet], out: str | Path,
              seed: int, eval_every: int, label: str = "lam", log_every: int = 50, device: str = "cpu",
              compute: ComputeConfig = ComputeConfig()) -> dict:
    """Train to `config.optim.updates` (resuming from OUT/checkpoint.pt), write OUT/metrics.json.

    Returns the metrics: final probe scores, final losses, timings and the curves.
    """
    run = OfflineRun(out, config, seed, config.optim.updates, label, log_every)
    if (finished := run.finished()) is not None:
        return finished
    torch.manual_seed(seed)
    image_size = data.frames.shape[1]
    step_compute = Compute.resolve(compute, device)
    model = step_compute.prepare(build_model(config, image_size, data.action_dim).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = cosine_schedule(optimizer, config.optim.updates)
    run.resume(device, model=model, optimizer=optimizer, scheduler=scheduler)

    method = config.method
    starts = data.window_starts(method.window)
    if len(starts) == 0:
        raise ValueError(f"no chunk holds the {method.window} consecutive frames this method needs")
    rng, generator = run.rng_seeds()
    if not run.state["probes"]:
        run.record_probes(evaluate_probes(model, config, probe_sets, encode_probe_set))
    while run.update < config.optim.updates:
        run.start_update()
        windows = sample_windows(data, starts, config.optim.batch_size, method.window, rng)
        losses = lam_step(model, optimizer, config, windows, rng, generator, scheduler, compute=step_compute)
        if run.end_update(losses) or run.update % eval_every == 0:
            run.record_probes(evaluate_probes(model, config, probe_sets, encode_probe_set))
            run.save(model=model, optimizer=optimizer, scheduler=scheduler, image_size=image_size,
                     action_dim=data.action_dim)
    return run.finish(sum(p.numel() for p in model.parameters()), step_compute.describe())


def load_model(out: str | Path) -> tuple[LatentActionModel, dict]:
    """The model saved in OUT/checkpoint.pt and its config (as a dict)."""
    checkpoint = torch.load(Path(out) / CHECKPOINT, map_location="cpu", weights_only=True)
    saved = checkpoint["config"]
    config = LAMConfig(ModelConfig(**saved["model"]), MethodConfig(**saved["method"]), OptimConfig(**saved["optim"]))
    model = build_model(config, checkpoint["image_size"], checkpoint["action_dim"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, config
