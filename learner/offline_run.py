"""The bookkeeping every offline latent-action training shares (LAPO/MaskLAM and LAOM).

A run lives in one folder: `metrics.json` once it is finished (a finished run with the
same config and seed is reused, not retrained), `checkpoint.pt` while it trains (resumed
when the config and seed match). `OfflineRun` keeps the update counter, the training
time, the loss curve (means over `log_every` updates) and the probe curve, and writes
the metrics every comparison reads. The trainers keep only their own update step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import read_checkpoint, write_checkpoint
from common.config import config_to_dict
from common.progress import Progress

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


class OfflineRun:
    def __init__(self, out: str | Path, config: Any, seed: int, total: int, label: str, log_every: int):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config, self.seed, self.total, self.log_every = config_to_dict(config), seed, total, log_every
        self.state: dict = {"update": 0, "train_seconds": 0.0, "losses": [], "probes": []}
        self.progress = Progress(label, total, unit="updates", interval_s=10.0)
        self._running: dict[str, list[float]] = {}
        self._tick = 0.0

    def finished(self) -> dict | None:
        """The metrics of this very run if it already finished."""
        path = self.out / METRICS
        if path.is_file():
            metrics = json.loads(path.read_text())
            if metrics["config"] == self.config and metrics["seed"] == self.seed:
                return metrics
        return None

    def resume(self, device: str | torch.device, **parts: Any) -> None:
        """Load model/optimiser/scheduler states (`parts` by name) from a matching checkpoint."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        checkpoint = read_checkpoint(path, device, kind="training checkpoint", required=("config", "seed", "state"),
                                     fix=f"delete {path} to train this run from the start")
        if checkpoint["config"] == self.config and checkpoint["seed"] == self.seed:
            for name, part in parts.items():
                part.load_state_dict(checkpoint[name])
            self.state = checkpoint["state"]

    def save(self, **extra: Any) -> None:
        """Checkpoint (atomically): the state dicts of `extra`'s modules and optimisers, and plain values."""
        payload = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in extra.items()}
        write_checkpoint({"config": self.config, "seed": self.seed, "state": self.state, **payload},
                         self.out / CHECKPOINT)

    @property
    def update(self) -> int:
        return self.state["update"]

    def rng_seeds(self) -> tuple[np.random.Generator, torch.Generator]:
        """Sampling streams that continue differently after a resume, but reproducibly."""
        return (np.random.default_rng([self.seed, self.update]),
                torch.Generator().manual_seed(self.seed * 1_000_003 + self.update))

    def start_update(self) -> None:
        self._tick = time.perf_counter()

    def end_update(self, losses: dict[str, torch.Tensor]) -> bool:
        """Count the update and log its losses; True when it is time to probe and checkpoint."""
        self.state["update"] += 1
        self.state["train_seconds"] += time.perf_counter() - self._tick
        for name, value in losses.items():
            self._running.setdefault(name, []).append(float(value.detach()))
        done = self.update == self.total
        if self.update % self.log_every == 0 or done:
            self.state["losses"].append({"update": self.update,
                                         **{k: float(np.mean(v)) for k, v in self._running.items()}})
            self._running = {}
        last = self.state["losses"][-1]["loss"] if self.state["losses"] else float(losses["loss"].detach())
        probes = self.state["probes"]
        self.progress.update(self.update, loss=last, probe_nmse=probes[-1]["probe_nmse"] if probes else float("nan"))
        return done

    def record_probes(self, scores: dict) -> None:
        self.state["probes"].append({"update": self.update, **scores})

    def finish(self, parameters: int, compute: dict | None = None) -> dict:
        """Write and return metrics.json: final probe scores, losses, timings and curves, and how
        the steps computed (`Compute.describe()`: layout, bf16, the CPU's features)."""
        self.progress.close()
        final, losses = self.state["probes"][-1], self.state["losses"]
        metrics = {
            "config": self.config, "seed": self.seed, "updates": self.update,
            "train_seconds": self.state["train_seconds"],
            "updates_per_s": self.update / max(self.state["train_seconds"], 1e-9),
            "parameters": parameters, "compute": compute,
            **{k: v for k, v in final.items() if k != "update"},
            "final_losses": {k: v for k, v in losses[-1].items() if k != "update"} if losses else {},
            "loss_curve": losses, "probe_curve": self.state["probes"],
        }
        (self.out / METRICS).write_text(json.dumps(metrics, indent=1) + "\n")
        return metrics
