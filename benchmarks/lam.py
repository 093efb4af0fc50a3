"""`python -m benchmarks.lam --out FILE`: LAM training updates/s of each preset on this CPU.

Times full updates (batch assembly, forward, backward, AdamW step) on synthetic windows
at each preset's batch size and frame size, for LAPO and MaskLAM (the paper preset also
for masklam-paper, whose IDM sees 6 frames). Prints a table and writes JSON.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.report import write_report
from common.config import parse_config
from learner.data import Windows
from learner.lam.batch import make_batch, reconstruction_loss
from learner.lam.config import lam_config
from learner.lam.train import build_model


@dataclass
class LAMBenchConfig:
    """LAM training throughput benchmark."""

    out: str = field(default="benchmarks/results/lam.json", metadata={"help": "JSON file to write"})
    threads: int = field(default=1, metadata={"help": "torch threads (the comparison trains with 1 per process)"})
    seconds: float = field(default=20.0, metadata={"help": "timed seconds per case (after a warm-up update)"})
    cases: str = field(default="ci:lapo:32,ci:masklam:32,ci:masklam-paper:32",
                       metadata={"help": "preset:method:image_size[:batch], comma-separated"})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda)"})


def measure(preset: str, method: str, image_size: int, seconds: float, device: str, batch_size: int = 0,
            action_dim: int = 6) -> dict:
    """Updates/s at the preset's batch size (or `batch_size` when given)."""
    config = lam_config(preset, method, **({"batch_size": batch_size} if batch_size else {}))
    model = build_model(config, image_size, action_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    b, window = config.optim.batch_size, config.method.window
    windows = Windows(rng.integers(0, 256, (b, window, image_size, image_size, 3), dtype=np.uint8),
                      rng.integers(0, 2, (b, window, image_size, image_size), dtype=np.uint8),
                      rng.uniform(-1, 1, (b, window, action_dim)).astype(np.float32),
                      rng.normal(size=(b, window, 2)).astype(np.float32))
    masked = config.method.loss == "masked"

    def update() -> None:
        offsets = rng.integers(1, config.method.max_future_offset + 1, size=b)
        batch = make_batch(windows, config.method, config.model, offsets, generator).to(device)
        prediction, _, _ = model(batch.idm_input, batch.fdm_input)
        loss = reconstruction_loss(prediction, batch.target, batch.target_mask if masked else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    update()  # warm-up: first calls allocate
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        update()
        count += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"preset": preset, "method": method, "image_size": image_size, "batch_size": b, "device": device,
            "parameters": sum(p.numel() for p in model.parameters()), "updates": count,
            "updates_per_s": count / elapsed, "samples_per_s": count * b / elapsed}


def main(argv: list[str] | None = None) -> int:
    config = parse_config(LAMBenchConfig, argv)
    torch.set_num_threads(config.threads)
    rows = []
    for case in config.cases.split(","):
        preset, method, size, *batch = case.split(":")
        rows.append(measure(preset, method, int(size), config.seconds, config.device, int(batch[0]) if batch else 0))
        r = rows[-1]
        print(f"  {r['preset']:<6} {r['method']:<14} {r['image_size']:>3}px batch {r['batch_size']:>4} "
              f"{r['parameters'] / 1e6:6.2f} M params  {r['updates_per_s']:7.2f} updates/s  "
              f"{r['samples_per_s']:8.0f} samples/s", flush=True)
    result = {"device": config.device, "threads": config.threads, "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "rows": rows}
    write_report(config.out, result, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
