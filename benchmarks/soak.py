"""`python -m benchmarks.soak --actors 16 --minutes 20 --out FILE`: does a long run stay healthy?

Runs `python -m learner.main` with N actors against a Redis of its own, capped as a run's
embedded Redis is (`EmbeddedRedis.for_replay`), with a replay capacity small enough that
the replay evicts all the time. After `--warmup-minutes` (Ray, the probe set, the first
chunks) it samples every `--sample-s` seconds, for `--minutes`:
  * the resident memory (RSS, from /proc) of every process: the learner, each rollout
    actor, the segmenter, Ray's own processes and redis-server;
  * Redis's used_memory against its maxmemory cap, and the replay's eviction count.
Then it stops the learner as Ctrl-C does, counts the lines of its log (which carries the
actors' and segmenter's output too) with a traceback or an ERROR, prints a table (RSS per
process at start and end) and writes everything as JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from common.cli import run_main
from common.config import at_least, blame, parse, positive, save_resolved_config, writable
from common.processes import command_line, process_tree, rss_bytes
from common.replay import EmbeddedRedis, ReplayClient, ReplayConfig
from learner.main import parse_learner_config

ROLES = (("ray::RolloutWorker", "rollout actor"), ("ray::SegmenterService", "segmenter"),
         ("ray::evaluate", "evaluation"), ("ray::", "ray worker"), ("raylet", "ray"), ("gcs_server", "ray"),
         ("ray/", "ray"))
ERROR_LINE = re.compile(r"Traceback|\bERROR\b")


@dataclass
class SoakConfig:
    """A long learner.main run with continuous eviction: RSS of every process, Redis memory, errors."""

    actors: int = field(default=16, metadata={"help": "rollout actors"})
    minutes: float = field(default=20.0, metadata={"help": "minutes measured (after the warm-up)"})
    warmup_minutes: float = field(default=3.0, metadata={"help": "minutes before the first sample"})
    sample_s: float = field(default=30.0, metadata={"help": "seconds between samples"})
    capacity_chunks: int = field(default=400, metadata={"help": "replay capacity in chunks (small: it evicts)"})
    capacity_bytes: int = field(default=128 * 2**20, metadata={"help": "replay capacity in bytes"})
    out: str = field(default="benchmarks/results/soak.json", metadata={"help": "JSON file to write"})
    run_dir: str = field(default="runs/soak", metadata={"help": "the learner's run folder and log go under here"})
    learner_args: str = field(default="", metadata={
        "help": "more learner.main flags, as one string: --learner-args='--image-size 16'"})

    def validate(self) -> None:
        at_least(self, 1, "actors", "capacity_chunks", "capacity_bytes")
        positive(self, "minutes", "sample_s")
        at_least(self, 0, "warmup_minutes")
        writable(self, "out", folder=False)
        writable(self, "run_dir")
        with blame("learner_args"):  # the learner.main run as the soak starts it, refused before it starts
            parse_learner_config(learner_argv(self, Path(self.run_dir) / "soak"))


def role(pid: int, learner: int, redis_pid: int) -> str:
    if pid == learner:
        return "learner"
    if pid == redis_pid:
        return "redis-server"
    line = command_line(pid)
    return next((name for marker, name in ROLES if marker in line), "other")


def sample(learner: int, redis_server: EmbeddedRedis, replay: ReplayClient) -> dict:
    """RSS of every process of the run, Redis memory and the replay's counters, now."""
    memory = redis.Redis.from_url(redis_server.url).info("memory")
    stats = replay.stats()
    processes = {}
    for pid in [*process_tree(learner), redis_server.process.pid]:
        rss = rss_bytes(pid)
        if rss:
            processes[pid] = {"role": role(pid, learner, redis_server.process.pid), "rss_mb": rss / 2**20}
    return {"time": time.time(), "processes": processes,
            "redis_used_mb": memory["used_memory"] / 2**20, "redis_maxmemory_mb": memory["maxmemory"] / 2**20,
            "evicted_chunks": stats.evicted_chunks, "stored_chunks": stats.stored_chunks,
            "inserted_steps": stats.inserted_steps, "dead_letters": stats.dead_letters}


def stop(process: subprocess.Popen, timeout_s: float = 600) -> int:
    """Stop the learner as Ctrl-C does (it finishes its last probe and evaluation)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def learner_argv(config: SoakConfig, out: Path) -> list[str]:
    """The flags of the learner.main run a soak measures (its run folder `out`)."""
    return ["--num-actors", str(config.actors), "--out", str(out), "--replay.run-name", "soak",
            "--replay.capacity-chunks", str(config.capacity_chunks), "--replay.capacity-bytes",
            str(config.capacity_bytes), "--total-env-steps", "none",
            "--max-minutes", str(config.warmup_minutes + config.minutes + 5), "--metrics-port", "0",
            *config.learner_args.split()]


def soak(config: SoakConfig) -> dict:
    out_dir = Path(config.run_dir) / time.strftime("soak-%Y%m%d-%H%M%S")
    replay_config = ReplayConfig(run_name="soak", capacity_chunks=config.capacity_chunks,
                                 capacity_bytes=config.capacity_bytes)
    command = [sys.executable, "-m", "learner.main", *learner_argv(config, out_dir / "run")]
    log_path = out_dir / "learner.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    with EmbeddedRedis.for_replay(replay_config) as server, log_path.open("w") as log:
        env = {**os.environ, "MASKLAM_REDIS_URL": server.url}
        learner = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            replay = ReplayClient(server.url, replay_config)
            start = time.monotonic() + 60 * config.warmup_minutes
            end = start + 60 * config.minutes
            next_sample = start
            while learner.poll() is None and (not samples or time.monotonic() < end):
                time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
                samples.append(sample(learner.pid, server, replay))
                print(f"  {len(samples):3d}  {samples[-1]['redis_used_mb']:7.1f} MB in Redis, "
                      f"{samples[-1]['evicted_chunks']:,} chunks evicted", flush=True)
                next_sample += config.sample_s
            exit_code = learner.returncode if learner.poll() is not None else stop(learner)
        finally:
            if learner.poll() is None:
                learner.kill()
    lines = log_path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if ERROR_LINE.search(line)]
    # Flatness is judged from the steady state: the first sample once the replay is full and
    # evicting (every process is up by then; a slow start-up can outlast the warm-up).
    first = next((s for s in samples if s["evicted_chunks"] > 0), samples[0]) if samples else None
    return {"config": asdict(config), "command": command, "exit_code": exit_code,
            "measured_minutes": (samples[-1]["time"] - samples[0]["time"]) / 60 if samples else 0.0,
            "steady_minutes": (samples[-1]["time"] - first["time"]) / 60 if samples else 0.0,
            "processes": compare(first, samples[-1]) if samples else [],
            "redis": {"used_mb_start": first["redis_used_mb"], "used_mb_end": samples[-1]["redis_used_mb"],
                      "used_mb_max": max(s["redis_used_mb"] for s in samples),
                      "maxmemory_mb": samples[-1]["redis_maxmemory_mb"]} if samples else {},
            "evicted_chunks": {"start": first["evicted_chunks"], "end": samples[-1]["evicted_chunks"]}
            if samples else {},
            "error_lines": len(errors), "first_error_lines": errors[:20], "log": str(log_path), "samples": samples}


def compare(first: dict, last: dict) -> list[dict]:
    """Per process of the first sample: its RSS at start and end (None if it was gone), and the
    processes that appeared since (a restarted actor, an evaluation)."""
    rows = []
    for pid, seen in first["processes"].items():
        end = last["processes"].get(pid)
        rows.append({"pid": pid, "role": seen["role"], "rss_mb_start": seen["rss_mb"],
                     "rss_mb_end": end["rss_mb"] if end else None})
    rows += [{"pid": pid, "role": seen["role"], "rss_mb_start": None, "rss_mb_end": seen["rss_mb"]}
             for pid, seen in last["processes"].items() if pid not in first["processes"]]
    return sorted(rows, key=lambda row: (row["role"], row["pid"]))


def print_table(result: dict) -> None:
    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:8.1f}"

    print(f"\n  {'process':<16} {'pid':>8} {'RSS start MB':>13} {'end MB':>9} {'change':>8}")
    for row in result["processes"]:
        start, end = row["rss_mb_start"], row["rss_mb_end"]
        change = f"{100 * (end - start) / start:+7.1f}%" if start and end else "-"
        print(f"  {row['role']:<16} {row['pid']:>8} {mb(start):>13} {mb(end):>9} {change:>8}")
    redis_memory = result["redis"]
    if redis_memory:
        print(f"\n  Redis used memory {redis_memory['used_mb_start']:.1f} -> {redis_memory['used_mb_end']:.1f} MB "
              f"(max {redis_memory['used_mb_max']:.1f}) under a cap of {redis_memory['maxmemory_mb']:.0f} MB")
        print(f"  chunks evicted {result['evicted_chunks']['start']:,} -> {result['evicted_chunks']['end']:,} "
              f"over the last {result['steady_minutes']:.1f} (steady, evicting) of {result['measured_minutes']:.1f} "
              "measured minutes")
    print(f"  log lines with a traceback or ERROR: {result['error_lines']}; learner exit code {result['exit_code']}")


def main(argv: list[str] | None = None) -> int:
    config = parse(SoakConfig, argv, "python -m benchmarks.soak")
    result = soak(config)
    print_table(result)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    save_resolved_config(config, out.parent, name=out.stem + ".config.json")
    print(f"wrote {out}")
    return 0 if result["exit_code"] == 0 and result["error_lines"] == 0 else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
