"""`python -m benchmarks.lam --out FILE`: training-step throughput of every network, today's path against the new one.

Each case times one training update as the trainers run it, on synthetic data of the
preset's frame size: the LAM's `lam_step` (batch assembly, the whole objective, backward,
AdamW), the latent policy's `latent_bc_step` (stage 2 and the online learner), and LAOM's
`laom_step`. Every case runs twice in the same process, alternating in rounds so a busy
machine slows both alike: the plain path (fp32, NCHW: `learner.compute.PLAIN`) and the path
`--compute.*` selects (default: channels-last, bf16 autocast where the CPU has bf16 units).
`speedup` is the new path's samples/s over the plain path's.

FLOPs are counted by torch's FlopCounterMode over one update (forward and backward; the
convolutions' share reported apart). The peak they are compared with is measured, not
looked up: the best GFLOP/s of a 1024^3 matrix product on the same threads, in fp32 and in
bf16, which is what this core's FMA units (and AMX tiles, where present) deliver.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.report import write_report
from common.cli import run_main
from common.config import at_least, blame, comma_list, parse, positive, writable
from common.devices import check_device
from common.latent_policy import LatentPolicy, PixelPolicySpec
from common.windows import Windows
from learner.compute import PLAIN, Compute, ComputeConfig, cpu_features
from learner.downstream import latent_bc_step
from learner.lam.config import lam_config
from learner.lam.train import build_model as build_lam, cosine_schedule, lam_step
from learner.laom.batch import make_batch as make_laom_batch
from learner.laom.config import laom_config
from learner.laom.train import build_model as build_laom, laom_step

ACTION_DIM = 6
CONV_OPS = ("convolution", "convolution_backward")


@dataclass
class LAMBenchConfig:
    """Training-step throughput: the plain fp32 NCHW path against --compute.*."""

    out: str = field(default="benchmarks/results/lam.json", metadata={"help": "JSON file to write"})
    threads: int = field(default=1, metadata={"help": "torch threads (the comparison trains with 1 per process)"})
    seconds: float = field(default=20.0, metadata={"help": "timed seconds per case and path (after warm-up updates)"})
    rounds: int = field(default=4, metadata={"help": "alternations of the two paths within those seconds"})
    cases: str = field(default="lam:ci:masklam:32:32,lam:ci:masklam:32:128,policy:ci:-:32:64,laom:ci:laom:32:32",
                       metadata={"help": "network:preset:method:image_size:batch, comma-separated; network is "
                                         "lam (LAPO/MaskLAM step), policy (latent BC step) or laom"})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda)"})
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def validate(self) -> None:
        writable(self, "out", folder=False)
        at_least(self, 1, "threads", "rounds")
        positive(self, "seconds")
        with blame("device", "pass cpu, auto, or a GPU this machine has"):
            check_device(self.device)
        comma_list(self, "cases", known_case, "network:preset:method:image_size:batch with a known network (lam, "
                   "policy, laom), preset and method", "pass cases such as lam:ci:masklam:32:32,policy:ci:-:32:64")


def known_case(case: str) -> bool:
    """Whether a --cases item names a network, preset and method that exist, and positive sizes
    (a ValueError for one without five fields or with sizes that are not integers)."""
    network, preset, method, size, batch = case.split(":")
    configs = {"lam": lambda: lam_config(preset, method), "laom": lambda: laom_config(preset, method),
               "policy": lambda: lam_config(preset, "masklam")}
    if network not in configs:
        return False
    configs[network]()
    return int(size) >= 1 and int(batch) >= 1


def synthetic_windows(batch: int, window: int, image_size: int, rng: np.random.Generator) -> Windows:
    steps = np.zeros((batch, window - 1), np.float32)
    return Windows(frames=rng.integers(0, 256, (batch, window, image_size, image_size, 3), dtype=np.uint8),
                   masks=rng.integers(0, 2, (batch, window, image_size, image_size), dtype=np.uint8),
                   actions=rng.uniform(-1, 1, (batch, window - 1, ACTION_DIM)).astype(np.float32), rewards=steps,
                   terminated=steps.astype(bool), truncated=steps.astype(bool),
                   bg_velocity=rng.normal(size=(batch, window - 1, 2)).astype(np.float32),
                   chunk_ids=np.zeros(batch, np.int64), starts=np.zeros(batch, np.int64))


def training_step(network: str, preset: str, method: str, image_size: int, batch: int, device: str,
                  compute: Compute) -> tuple[Callable[[], None], int]:
    """(one update of that network as its trainer runs it, its parameter count), with fixed seeds."""
    torch.manual_seed(0)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    if network == "lam":
        config = lam_config(preset, method, batch_size=batch)
        model = compute.prepare(build_lam(config, image_size, ACTION_DIM).to(device))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        windows = synthetic_windows(batch, config.method.window, image_size, rng)
        return (lambda: lam_step(model, optimizer, config, windows, rng, generator, compute=compute),
                sum(p.numel() for p in model.parameters()))
    if network == "policy":
        lam = lam_config(preset, "masklam")
        spec = PixelPolicySpec(image_size=image_size, action_dim=ACTION_DIM, latent_dim=lam.model.latent_dim)
        model = compute.prepare(LatentPolicy(spec).to(device))
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)
        inputs = torch.rand(batch, 3 * spec.frames, image_size, image_size, device=device) - 0.5
        target, action = torch.randn(batch, spec.latent_dim, device=device), torch.rand(batch, ACTION_DIM, device=device)
        return (lambda: latent_bc_step(model, optimizer, inputs, target, compute, action, lam.optim.probe_coef),
                sum(p.numel() for p in model.parameters()))
    if network == "laom":
        config = laom_config(preset, method, batch_size=batch)
        model = compute.prepare(build_laom(config, image_size, ACTION_DIM).to(device))
        optimizer = torch.optim.AdamW(model.online_parameters(), lr=config.optim.lr)
        scheduler = cosine_schedule(optimizer, 10**9)
        windows = synthetic_windows(batch, config.method.window, image_size, rng)
        offsets = rng.integers(1, config.method.max_future_offset + 1, size=batch)
        laid_out = make_laom_batch(windows, config.method, offsets).to(device).in_layout(compute)
        labelled = laid_out if config.method.labels else None
        return (lambda: laom_step(model, optimizer, scheduler, config, laid_out, labelled, generator, compute),
                sum(p.numel() for p in model.online_parameters()))
    raise ValueError(f"unknown network {network!r}: lam, policy or laom")


def step_flops(step: Callable[[], None]) -> tuple[int, int]:
    """(all FLOPs, convolution FLOPs) of one call of `step`, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        step()
    by_op = counter.get_flop_counts()["Global"]
    conv = sum(n for op, n in by_op.items() if str(op).split(".")[1] in CONV_OPS)
    return counter.get_total_flops(), conv


def gemm_peak_gflops(dtype: torch.dtype, device: str, seconds: float = 1.0, n: int = 1024) -> float:
    """The best GFLOP/s of an n^3 matrix product: the measured peak these threads reach."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def time_paths(steps: dict[str, Callable[[], None]], seconds: float, rounds: int, device: str) -> dict[str, float]:
    """Updates/s of each step, alternating them in `rounds` rounds of seconds/rounds each."""
    counts, elapsed = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    for step in steps.values():
        for _ in range(2):  # warm-up: first calls allocate and pick kernels
            step()
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                step()
                counts[name] += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed[name] += time.perf_counter() - start
    return {name: counts[name] / elapsed[name] for name in steps}


def measure(case: str, config: LAMBenchConfig, peaks: dict[str, float]) -> dict:
    network, preset, method, size, batch = case.split(":")
    image_size, batch_size = int(size), int(batch)
    paths = {"plain": Compute.resolve(PLAIN, config.device), "new": Compute.resolve(config.compute, config.device)}
    steps, parameters = {}, 0
    for name, compute in paths.items():
        steps[name], parameters = training_step(network, preset, method, image_size, batch_size, config.device, compute)
    flops, conv_flops = step_flops(steps["plain"])
    rates = time_paths(steps, config.seconds, config.rounds, config.device)
    row = {"network": network, "preset": preset, "method": method, "image_size": image_size, "batch_size": batch_size,
           "parameters": parameters, "gflop_per_update": flops / 1e9, "conv_flop_share": conv_flops / max(flops, 1)}
    for name, compute in paths.items():
        gflops = rates[name] * flops / 1e9
        peak = peaks["bf16" if compute.bf16 else "fp32"]
        row[name] = {"channels_last": compute.channels_last, "bf16": compute.bf16, "updates_per_s": rates[name],
                     "samples_per_s": rates[name] * batch_size, "gflops": gflops, "peak_share": gflops / peak}
    row["speedup"] = row["new"]["samples_per_s"] / row["plain"]["samples_per_s"]
    return row


def cpu_model() -> str:
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv: list[str] | None = None) -> int:
    config = parse(LAMBenchConfig, argv, "python -m benchmarks.lam")
    torch.set_num_threads(config.threads)
    new = Compute.resolve(config.compute, config.device)
    peaks = {"fp32": gemm_peak_gflops(torch.float32, config.device)}
    peaks["bf16"] = gemm_peak_gflops(torch.bfloat16, config.device) if new.bf16 else float("nan")
    print(f"{cpu_model()}: {', '.join(cpu_features()) or 'no flags read'}; {config.threads} thread(s); "
          f"new path: {new.describe()}; measured GEMM peak {peaks['fp32']:.0f} GFLOP/s fp32, "
          f"{peaks['bf16']:.0f} bf16", flush=True)
    print(f"  {'network':<7} {'method':<8} {'px':>3} {'batch':>5} {'GFLOP/upd':>9} {'conv':>5} | "
          f"{'plain samples/s':>15} {'%peak':>6} | {'new samples/s':>13} {'%peak':>6} | speedup", flush=True)
    rows = []
    for case in config.cases.split(","):
        r = measure(case, config, peaks)
        rows.append(r)
        print(f"  {r['network']:<7} {r['method']:<8} {r['image_size']:>3} {r['batch_size']:>5} "
              f"{r['gflop_per_update']:9.2f} {r['conv_flop_share']:5.0%} | {r['plain']['samples_per_s']:15.0f} "
              f"{r['plain']['peak_share']:6.1%} | {r['new']['samples_per_s']:13.0f} {r['new']['peak_share']:6.1%} | "
              f"{r['speedup']:.2f}x", flush=True)
    result = {"device": config.device, "threads": config.threads, "torch": torch.__version__, "cpu": cpu_model(),
              "cpu_features": list(cpu_features()), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "new_path": new.describe(), "gemm_peak_gflops": peaks, "cpu_count": os.cpu_count(), "rows": rows}
    write_report(config.out, result, config)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
