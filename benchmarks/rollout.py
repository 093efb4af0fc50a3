"""`python -m benchmarks.rollout --out FILE`: rollout and replay throughput.

Measures, on one machine:
  * env steps/s of a bare render loop (same env and render settings, no Ray, no Redis),
    of one Ray actor writing chunks to Redis, and of two actors together;
  * replay insert MB/s, the time to sample a batch of 256 windows (3-frame stack + next
    frame at 64x64) and its MB/s, beside plain pipelined GETs of blobs of the same size
    on the same server (the practical limit) and `redis-benchmark` on that server.
Prints a table and writes the figures as JSON (with the resolved config beside them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import ray
import tyro

from actors.rollout import ActorConfig, RolloutActor, RolloutWorker, env_seed
from benchmarks.report import write_report
from common.cli import run_main
from common.cluster import init_ray
from common.codec import decode_chunk
from common.config import at_least, blame, parse, require, writable
from common.envs import EnvConfig, make_env
from common.replay import EmbeddedRedis, ReplayClient, ReplayConfig, connect


@dataclass
class RolloutBenchConfig:
    """Rollout and replay throughput benchmark."""

    out: str = field(default="benchmarks/results/rollout.json", metadata={"help": "JSON file to write"})
    env_steps: int = field(default=600, metadata={"help": "decisions per measurement (bare loop and per actor)"})
    batch: int = field(default=256, metadata={"help": "transitions per sampled batch"})
    window: int = field(default=4, metadata={"help": "frames per sampled transition (3-frame stack + next)"})
    replay_chunks: int = field(default=300, metadata={"help": "chunks inserted for the replay figures"})
    repeats: int = field(default=20, metadata={"help": "timed repetitions of each replay measurement"})
    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=EnvConfig)  # the task, unprefixed
    actor: ActorConfig = field(default_factory=ActorConfig)

    def validate(self) -> None:
        writable(self, "out", folder=False)
        at_least(self, 1, "env_steps", "batch", "window", "replay_chunks", "repeats")
        require(self.window <= self.actor.chunk_length + 1, "window", f"is more than the {self.actor.chunk_length + 1}"
                " frames of a chunk (--actor.chunk-length)", "pass a shorter window, or longer chunks")
        with blame("actor"):
            self.actor.check_expert(self.env)


def bare_steps_per_s(env_config: EnvConfig, steps: int, seed: int) -> float:
    env = make_env(env_config)
    rng = np.random.default_rng(seed)
    env.reset(seed=env_seed(seed, 0, 0))
    action_dim = env.action_space.shape[0]

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, action_dim))
        if terminated or truncated:
            env.reset()

    for _ in range(20):  # warm-up: first renders compile shaders and fill caches
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def actors_steps_per_s(num_actors: int, config: RolloutBenchConfig, url: str) -> tuple[float, list[float]]:
    """Aggregate and per-actor steps/s of actors collecting into Redis (start-up excluded)."""
    replay_config = ReplayConfig(run_name=f"bench-actors{num_actors}")
    actors = [RolloutActor.options(num_cpus=1).remote(i, config.env, config.actor, url, replay_config)
              for i in range(num_actors)]
    ray.get([a.collect.remote(20) for a in actors])  # warm-up inside each actor
    start = time.perf_counter()
    reports = ray.get([a.collect.remote(config.env_steps) for a in actors])
    wall = time.perf_counter() - start
    for actor in actors:
        ray.kill(actor)
    ReplayClient(url, replay_config).clear()
    return sum(r.env_steps for r in reports) / wall, [r.steps_per_s for r in reports]


def replay_figures(config: RolloutBenchConfig, server: EmbeddedRedis) -> dict:
    """Insert real chunks, then time sampling against raw pipelined GETs of the same bytes."""
    replay = ReplayClient(server.url, ReplayConfig(run_name="bench-replay", capacity_chunks=config.replay_chunks))
    source = ReplayClient(server.url, ReplayConfig(run_name="bench-source"))
    worker = RolloutWorker(0, config.env, config.actor, server.url, source.config)
    worker.collect(config.actor.chunk_length * 4)
    chunks = [source.get_chunk_blob(i) for i in source.chunk_ids_after(0)]
    decoded = [decode_chunk(blob) for blob in chunks if blob]
    decoded = [c for c in decoded if c.num_steps + 1 >= config.window] or decoded
    start = time.perf_counter()
    inserted = 0
    for i in range(config.replay_chunks):
        chunk = decoded[i % len(decoded)]
        replay.insert(chunk)
        inserted += chunk.frames.nbytes + chunk.masks.nbytes
    insert_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    replay.sample(config.batch, config.window, rng)
    start = time.perf_counter()
    for _ in range(config.repeats):
        batch = replay.sample(config.batch, config.window, rng)
    sample_s = (time.perf_counter() - start) / config.repeats
    batch_bytes = batch.frames.nbytes + batch.masks.nbytes

    blob = np.random.default_rng(1).integers(0, 255, batch_bytes // config.batch, dtype=np.uint8).tobytes()
    raw = connect(server.url)  # the same server without the replay: the practical limit
    for i in range(config.batch):
        raw.set(f"bench-raw:{i}", blob)
    start = time.perf_counter()
    for _ in range(config.repeats):
        pipe = raw.pipeline(transaction=False)
        for i in range(config.batch):
            pipe.get(f"bench-raw:{i}")
        pipe.execute()
    raw_s = (time.perf_counter() - start) / config.repeats
    worker.close()
    return {
        "insert_mb_per_s": inserted / insert_s / 1e6,
        "sample_batch256_ms": 1000 * sample_s,
        "sample_batch_pixel_mb": batch.frames.nbytes / 1e6,
        "sample_mb_per_s": batch_bytes / sample_s / 1e6,
        "raw_get_mb_per_s": batch_bytes / raw_s / 1e6,
        "sample_vs_raw_ratio": raw_s / sample_s,
        "redis_benchmark": redis_benchmark(server, len(blob)),
    }


def redis_benchmark(server: EmbeddedRedis, value_bytes: int) -> dict:
    """SET/GET throughput from redis-benchmark (pipelined) with values of the window size."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not installed (apt-get install redis-tools)"}
    command = [binary, "-h", "127.0.0.1", "-p", str(server.port), "-a", server.password,
               "-t", "set,get", "-d", str(value_bytes), "-n", "4000", "-P", "16", "-q", "--csv"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    figures = {}
    for line in result.stdout.splitlines()[1:]:
        name, rps = line.split(",")[:2]
        rps = float(rps.strip('"'))
        figures[f"{name.strip(chr(34)).lower()}_mb_per_s"] = rps * value_bytes / 1e6
    return figures


def main(argv: list[str] | None = None) -> int:
    config = parse(RolloutBenchConfig, argv, "python -m benchmarks.rollout")
    out = Path(config.out)
    figures: dict = {"env_id": config.env.env_id, "distractor": config.env.distractor,
                     "image_size": config.env.image_size}
    print(f"bare render loop: {config.env_steps} steps of {config.env.env_id} ...", file=sys.stderr)
    figures["bare_steps_per_s"] = bare_steps_per_s(config.env, config.env_steps, config.actor.seed)
    with EmbeddedRedis() as server:
        init_ray(None, logical_cpus=3)
        print("one actor ...", file=sys.stderr)
        figures["actor1_steps_per_s"], _ = actors_steps_per_s(1, config, server.url)
        print("two actors ...", file=sys.stderr)
        figures["actor2_steps_per_s"], figures["actor2_per_actor_steps_per_s"] = actors_steps_per_s(2, config, server.url)
        print("replay insert / sample ...", file=sys.stderr)
        figures.update(replay_figures(config, server))
    figures["actor_vs_bare_ratio"] = figures["actor1_steps_per_s"] / figures["bare_steps_per_s"]
    print_table(figures)
    write_report(out, figures, config)
    return 0


def print_table(figures: dict) -> None:
    rows = [("bare render loop", f"{figures['bare_steps_per_s']:.0f} steps/s"),
            ("1 actor -> Redis", f"{figures['actor1_steps_per_s']:.0f} steps/s"),
            ("2 actors -> Redis (total)", f"{figures['actor2_steps_per_s']:.0f} steps/s"),
            ("actor / bare", f"{figures['actor_vs_bare_ratio']:.2f}  (target >= 0.8)"),
            ("replay insert", f"{figures['insert_mb_per_s']:.0f} MB/s"),
            ("sample 256 x 4 frames", f"{figures['sample_batch256_ms']:.1f} ms ({figures['sample_batch_pixel_mb']:.1f} MB of frames)"),
            ("sample throughput", f"{figures['sample_mb_per_s']:.0f} MB/s"),
            ("raw pipelined GET", f"{figures['raw_get_mb_per_s']:.0f} MB/s"),
            ("sample / raw", f"{figures['sample_vs_raw_ratio']:.2f}  (target >= 0.5)")]
    rows += [(f"redis-benchmark {k}", f"{v:.0f}" if isinstance(v, float) else v)
             for k, v in figures["redis_benchmark"].items()]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"| {k:<{width}} | {v} |" for k, v in rows))


if __name__ == "__main__":
    sys.exit(run_main(main))
