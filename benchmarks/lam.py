"""`python -m benchmarks.lam --out FILE`: LAM training updates/s of each preset on this CPU.

Times the training update itself (`learner.lam.train.lam_step`: batch assembly, the whole
objective, backward, AdamW step) on synthetic windows at each preset's batch size and frame
size, for LAPO and MaskLAM (the paper preset also for masklam-paper, whose IDM sees 6
frames). Prints a table and writes JSON.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.report import write_report
from common.config import parse
from common.windows import Windows
from learner.lam.config import lam_config
from learner.lam.train import build_model, lam_step


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    b, window = config.optim.batch_size, config.method.window
    steps = np.zeros((b, window - 1), np.float32)
    windows = Windows(frames=rng.integers(0, 256, (b, window, image_size, image_size, 3), dtype=np.uint8),
                      masks=rng.integers(0, 2, (b, window, image_size, image_size), dtype=np.uint8),
                      actions=rng.uniform(-1, 1, (b, window - 1, action_dim)).astype(np.float32), rewards=steps,
                      terminated=steps.astype(bool), truncated=steps.astype(bool),
                      bg_velocity=rng.normal(size=(b, window - 1, 2)).astype(np.float32),
                      chunk_ids=np.zeros(b, np.int64), starts=np.zeros(b, np.int64))
    lam_step(model, optimizer, config, windows, rng, generator)  # warm-up: first calls allocate
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        lam_step(model, optimizer, config, windows, rng, generator)
        count += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"preset": preset, "method": method, "image_size": image_size, "batch_size": b, "device": device,
            "parameters": sum(p.numel() for p in model.parameters()), "updates": count,
            "updates_per_s": count / elapsed, "samples_per_s": count * b / elapsed}


def main(argv: list[str] | None = None) -> int:
    config = parse(LAMBenchConfig, argv, "python -m benchmarks.lam")
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
