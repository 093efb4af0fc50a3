"""`python -m benchmarks.segmenter --out FILE`: segmenter throughput and mask quality.

Measures, through the real service on a private redis-server:
  * the rate at which one rollout actor produces frames (the demand: one worker
    collecting into Redis, the same code a Ray actor runs);
  * frames/s and batch latency (p50/p95/p99) of the `oracle`, the `student` (serving)
    and `sam` backends, per batch size, with the queue filled up front, so the figure
    is the service's capacity (fetch, decode, segment, write masks, acknowledge); the
    headline `<backend>_frames_per_s` is the best batch size's, and frames per CPU-second
    are reported beside the wall-clock figures because other jobs may share the cores;
  * the student's IoU against ground truth on held-out frames (evaluation split:
    backgrounds it never trained on), after training online on the oracle's masks of
    the training split, and how long that training took.
SAM runs with `--sam-checkpoint` when given; otherwise with random weights of
`--sam-model-type` saved to a temporary checkpoint (default `tiny`, the test model; use
vit_b with `--device cuda` on a GPU). Random weights find no plausible agent, so every
frame takes the bootstrap path (automatic mask generation): a pessimistic timing.
Prints a table and writes the figures as JSON, with the resolved config beside them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from actors.rollout import ActorConfig, RolloutWorker
from benchmarks.report import write_report
from common.cli import run_main
from common.codec import Chunk, decode_chunk
from common.config import at_least, blame, comma_list, parse, positive_int, writable
from common.devices import check_device
from common.envs import EnvConfig
from common.metrics import Metrics
from common.replay import EmbeddedRedis, ReplayClient, ReplayConfig
from segmenter.backends.sam import SamConfig
from segmenter.backends.sam_models import BUILDERS, check_sam_checkpoint
from segmenter.backends.student import StudentConfig
from segmenter.config import SegmenterConfig
from segmenter.service import SegmenterService

DEMAND_ACTORS = 4


@dataclass
class SegmenterBenchConfig:
    """Segmenter throughput and mask-quality benchmark."""

    out: str = field(default="benchmarks/results/segmenter.json", metadata={"help": "JSON file to write"})
    train_steps: int = field(default=4000, metadata={"help": "decisions collected on training backgrounds"})
    eval_steps: int = field(default=1000, metadata={"help": "decisions collected on held-out evaluation backgrounds"})
    batch_sizes: str = field(default="64,256", metadata={"help": "comma-separated batch sizes (frames) to time"})
    sam_chunks: int = field(default=4, metadata={"help": "held-out chunks segmented by SAM"})
    sam_checkpoint: str | None = field(default=None, metadata={
        "help": "SAM checkpoint; default: random weights of --sam-model-type"})
    sam_model_type: Literal["vit_b", "vit_l", "vit_h", "tiny"] = field(default="tiny", metadata={
        "help": "SAM model type"})
    sam_batch_frames: int = field(default=64, metadata={"help": "batch size (frames) of the SAM run"})
    device: str = field(default="cpu", metadata={"help": "torch device of the sam and student backends"})
    torch_threads: int = field(default=1, metadata={
        "help": "torch CPU threads (0 = one per core; 1 is fastest when other jobs share the cores)"})
    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=EnvConfig)  # the task, unprefixed
    actor: ActorConfig = field(default_factory=ActorConfig)

    def batches(self) -> list[int]:
        return comma_list(self, "batch_sizes", positive_int, "a positive batch size", "pass sizes such as 64,256")

    def validate(self) -> None:
        writable(self, "out", folder=False)
        at_least(self, 1, "train_steps", "eval_steps", "sam_chunks", "sam_batch_frames")
        at_least(self, 0, "torch_threads")
        self.batches()
        if self.sam_checkpoint:
            with blame("sam_checkpoint", "pass a checkpoint of --sam-model-type, or none for random weights"):
                check_sam_checkpoint(self.sam_model_type, self.sam_checkpoint)
        with blame("device", "pass cpu, auto, or a GPU this machine has"):
            check_device(self.device)
        with blame("actor"):
            self.actor.check_expert(self.env)


def collect(config: SegmenterBenchConfig, url: str, split: str, steps: int) -> tuple[list[Chunk], float]:
    """Chunks of `steps` decisions from one rollout worker, and its frames/s into Redis."""
    actor_config = dataclasses.replace(config.actor, split=split, seed=config.actor.seed + (split == "eval"))
    replay = ReplayClient(url, ReplayConfig(run_name=f"bench-source-{split}"))
    worker = RolloutWorker(0, config.env, actor_config, url, replay.config)
    worker.collect(20)  # warm-up: first renders compile shaders and fill caches
    replay.clear()
    report = worker.collect(steps)
    worker.close()
    chunks = [decode_chunk(replay.get_chunk_blob(i)) for i in replay.chunk_ids_after(0)]
    replay.clear()
    return chunks, report.steps_per_s


def serve(service: SegmenterService, replay: ReplayClient, chunks: list[Chunk]) -> dict:
    """Queue `chunks`, run the service until the stream is empty; summary plus frames per
    wall second and per CPU second of this process (the latter is what a busy machine,
    shared with other jobs, cannot distort)."""
    for chunk in chunks:
        replay.insert(chunk, segment=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    summary = service.run(max_seconds=3600, stop_when_idle=True)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["cpu_seconds"] = time.process_time() - start_cpu
    summary["frames_per_s"] = summary["frames"] / summary["wall_seconds"]
    summary["frames_per_cpu_s"] = summary["frames"] / summary["cpu_seconds"]
    return summary


def make_service(bench: SegmenterBenchConfig, url: str, run_name: str,
                 **settings) -> tuple[SegmenterService, ReplayClient]:
    replay_config = ReplayConfig(run_name=run_name, capacity_chunks=100_000, capacity_bytes=8 * 2**30)
    config = SegmenterConfig(poll_ms=20, max_wait_ms=50, device=bench.device, torch_threads=bench.torch_threads,
                             **settings)
    return SegmenterService(config, url, replay_config, metrics=Metrics("prometheus")), ReplayClient(url, replay_config)


def timing(summary: dict) -> dict:
    return {k: summary[k] for k in ("frames", "frames_per_s", "frames_per_cpu_s", "batch_p50_s", "batch_p95_s",
                                    "batch_p99_s", "mean_iou")}


def bench_oracle(config: SegmenterBenchConfig, url: str, chunks: list[Chunk], batch_sizes: list[int]) -> dict:
    results = {}
    for size in batch_sizes:
        service, replay = make_service(config, url, f"bench-oracle-{size}", batch_frames=size)
        results[size] = timing(serve(service, replay, chunks))
        replay.clear()
    return results


def bench_student(config: SegmenterBenchConfig, url: str, train: list[Chunk], held_out: list[Chunk],
                  batch_sizes: list[int]) -> dict:
    """Train online on the oracle's masks of `train`, then serve `held_out` at each batch size."""
    train_frames = sum(len(c.frames) for c in train)
    student = StudentConfig(student_train_frames=train_frames, student_serve_iou=0.0, student_audit_fraction=0.0)
    service, replay = make_service(config, url, "bench-student", backend="student", batch_frames=256,
                                   student=student)
    trained = serve(service, replay, train)
    results = {"train_seconds": trained["wall_seconds"], "train_cpu_seconds": trained["cpu_seconds"],
               "train_frames": train_frames,
               "teacher_iou": trained["student_teacher_iou"], "serving": bool(trained["student_serving"]),
               "bf16": bool(trained["student_bf16"])}
    for size in batch_sizes:
        service.config.batch_frames = size
        service.reset_stats()
        results[size] = timing(serve(service, replay, held_out))
    replay.clear()
    return results


def bench_sam(config: SegmenterBenchConfig, url: str, held_out: list[Chunk]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = config.sam_checkpoint
        if checkpoint is None:
            checkpoint = str(Path(tmp) / f"random_{config.sam_model_type}.pth")
            torch.manual_seed(0)
            torch.save(BUILDERS[config.sam_model_type]().state_dict(), checkpoint)
        sam = SamConfig(sam_checkpoint=checkpoint, sam_model_type=config.sam_model_type)
        service, replay = make_service(config, url, "bench-sam", backend="sam",
                                       batch_frames=config.sam_batch_frames, sam=sam)
        summary = serve(service, replay, held_out[:config.sam_chunks])
        replay.clear()
    return {**timing(summary), "model_type": config.sam_model_type, "device": config.device,
            "weights": "checkpoint" if config.sam_checkpoint else "random",
            **{k: v for k, v in summary.items() if k.startswith("sam_")}}


def main(argv: list[str] | None = None) -> int:
    config = parse(SegmenterBenchConfig, argv, "python -m benchmarks.segmenter")
    out = Path(config.out)
    batch_sizes = config.batches()
    figures: dict = {"env_id": config.env.env_id, "distractor": config.env.distractor,
                     "image_size": config.env.image_size, "cpus": os.cpu_count(),
                     "torch_threads": config.torch_threads or torch.get_num_threads(),
                     "load_average_start": os.getloadavg()}
    with EmbeddedRedis() as server:
        print(f"collecting {config.train_steps} + {config.eval_steps} decisions ...", file=sys.stderr)
        train, figures["actor_frames_per_s"] = collect(config, server.url, "train", config.train_steps)
        held_out, _ = collect(config, server.url, "eval", config.eval_steps)
        print("oracle ...", file=sys.stderr)
        figures["oracle"] = bench_oracle(config, server.url, held_out, batch_sizes)
        print("student: training online, then serving held-out frames ...", file=sys.stderr)
        figures["student"] = bench_student(config, server.url, train, held_out, batch_sizes)
        print(f"sam ({config.sam_model_type} on {config.device}) ...", file=sys.stderr)
        figures["sam"] = bench_sam(config, server.url, held_out)
    for name in ("oracle", "student"):  # headline: the batch size one would deploy (all sizes are in the JSON)
        best = max(batch_sizes, key=lambda size: figures[name][size]["frames_per_s"])
        figures[f"{name}_frames_per_s"] = figures[name][best]["frames_per_s"]
        figures[f"{name}_batch_frames"] = best
    figures["student_iou"] = figures["student"][batch_sizes[0]]["mean_iou"]  # the same masks at every size
    figures["sam_frames_per_s"] = figures["sam"]["frames_per_s"]
    demand = DEMAND_ACTORS * figures["actor_frames_per_s"]
    figures[f"keeps_up_with_{DEMAND_ACTORS}_actors"] = {
        "oracle": figures["oracle_frames_per_s"] >= demand, "student": figures["student_frames_per_s"] >= demand}
    figures["load_average_end"] = os.getloadavg()
    print_table(figures, batch_sizes)
    write_report(out, figures, config)
    return 0


def print_table(figures: dict, batch_sizes: list[int]) -> None:
    def row(name: str, t: dict) -> tuple[str, ...]:
        iou = "-" if t["mean_iou"] is None else f"{t['mean_iou']:.3f}"
        return (name, f"{t['frames_per_s']:.0f}", f"{t['frames_per_cpu_s']:.0f}", f"{1000 * t['batch_p50_s']:.1f}",
                f"{1000 * t['batch_p95_s']:.1f}",
                f"{1000 * t['batch_p99_s']:.1f}", iou)
    rows = [("backend (batch frames)", "frames/s", "frames/CPU-s", "p50 ms", "p95 ms", "p99 ms", "IoU vs GT")]
    rows += [row(f"oracle ({b})", figures["oracle"][b]) for b in batch_sizes]
    rows += [row(f"student ({b}), held-out", figures["student"][b]) for b in batch_sizes]
    sam = figures["sam"]
    rows.append(row(f"sam {sam['model_type']} {sam['device']} ({sam['weights']} weights)", sam))
    rows.append(("1 actor -> Redis", f"{figures['actor_frames_per_s']:.0f}", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    student = figures["student"]
    print(f"student: trained on {student['train_frames']} frames in {student['train_seconds']:.0f} s "
          f"({student['train_cpu_seconds']:.0f} CPU-s), "
          f"running IoU vs teacher {student['teacher_iou']:.3f}; "
          f"keeps up with {DEMAND_ACTORS} actors: {figures[f'keeps_up_with_{DEMAND_ACTORS}_actors']}; "
          f"load average {figures['load_average_start'][0]:.1f} -> {figures['load_average_end'][0]:.1f} "
          f"on {figures['cpus']} CPUs")


if __name__ == "__main__":
    sys.exit(run_main(main))
