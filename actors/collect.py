"""`python -m actors.collect`: N rollout actors fill the replay (and optionally a dataset on disk).

Starts (or joins) Redis and Ray, runs the actors for a number of decisions in total,
shows progress, then reads a batch back through the sampler to check the round trip,
and writes `OUT/summary.json` and `OUT/config.json`. With `--save-dataset` every chunk
is also drained from the replay into `OUT/chunks.bin` as it arrives (for the offline
experiments), and the run fails loudly if any chunk was evicted before it was saved.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import ray
import tyro

from actors.rollout import ActorConfig, RolloutReport, start_rollout_actors
from common.cli import run_main
from common.cluster import check_ray_address, init_ray
from common.config import (at_least, blame, config_to_dict, parse, redis_url, require, save_resolved_config,
                           writable)
from common.dataset import DatasetWriter
from common.envs import EnvConfig, env_spec
from common.progress import Progress
from common.replay import ReplayClient, ReplayConfig, redis_url_or_embedded

READ_BACK_WINDOW = 4  # frames per transition sampled back at the end (a 3-frame stack and the next)


@dataclass
class CollectConfig:
    """Collect distractor rollouts with Ray actors into the Redis replay."""

    num_actors: int = field(default=2, metadata={"help": "rollout actors (one CPU each)"})
    total_env_steps: int = field(default=10_000, metadata={"help": "decisions to collect over all actors"})
    out: str = field(default="runs/collect", metadata={"help": "folder for summary.json, config.json (and the dataset)"})
    save_dataset: bool = field(default=False, metadata={"help": "also write every chunk to OUT/chunks.bin"})
    redis_url: str | None = field(default=None, metadata={"help": "Redis URL with credentials; default: $MASKLAM_REDIS_URL or a private embedded server"})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster to join ('auto' on a ray-up head); default: local Ray"})
    check_batch: int = field(default=256, metadata={"help": "transitions sampled back at the end to check the round trip"})
    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=EnvConfig)  # the task, unprefixed
    actor: ActorConfig = field(default_factory=ActorConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def validate(self) -> None:
        """Each part checks itself (common.config.validate); here, what holds across the parts."""
        at_least(self, 1, "num_actors", "total_env_steps", "check_batch")
        writable(self, "out")
        redis_url(self)
        with blame("ray_address", "pass auto, local, ray://HOST:PORT or HOST:PORT"):
            check_ray_address(self.ray_address)
        with blame("actor"):
            self.actor.check_expert(self.env)
        require(self.actor.chunk_length + 1 >= READ_BACK_WINDOW, "actor.chunk_length", f"gives chunks shorter than "
                f"the {READ_BACK_WINDOW} frames read back to check the replay", f"pass {READ_BACK_WINDOW - 1} or more")


def drain_new_chunks(replay: ReplayClient, writer: DatasetWriter, last_id: int) -> int:
    """Append every chunk stored after `last_id` to the dataset; returns the newest id saved."""
    while ids := replay.chunk_ids_after(last_id):
        for chunk_id in ids:
            blob = replay.get_chunk_blob(chunk_id)
            if blob is None:
                raise RuntimeError(f"chunk {chunk_id} was evicted before it was saved; raise --replay.capacity-chunks "
                                   "or --replay.capacity-bytes so the replay holds the whole collection")
            writer.append_blob(blob)
            last_id = chunk_id
    return last_id


def run_collection(config: CollectConfig, redis_url: str) -> dict:
    """Run the actors to completion against `redis_url`; returns the summary."""
    out = Path(config.out)
    replay = ReplayClient(redis_url, config.replay)
    init_ray(config.ray_address, logical_cpus=config.num_actors + 1)
    actors = start_rollout_actors(config.num_actors, config.env, config.actor, redis_url, config.replay)
    base, extra = divmod(config.total_env_steps, config.num_actors)
    pending = [actor.collect.remote(base + (i < extra)) for i, actor in enumerate(actors)]
    spec = env_spec(config.env)
    writer = DatasetWriter(out, {"env": spec, "collect": config_to_dict(config)}) if config.save_dataset else None
    progress = Progress("collect", config.total_env_steps)
    start, last_id, reports = time.perf_counter(), 0, []
    while pending:
        done, pending = ray.wait(pending, timeout=0.5)
        reports += ray.get(done)
        stats = replay.stats()
        progress.update(stats.inserted_steps, chunks=stats.inserted_chunks, replay_mb=stats.stored_bytes / 1e6)
        if writer is not None:
            last_id = drain_new_chunks(replay, writer, last_id)
    progress.update(replay.stats().inserted_steps, force=True)
    progress.close()
    wall_s = time.perf_counter() - start
    for actor in actors:
        ray.kill(actor)
    stats = replay.stats()
    if writer is not None:
        drain_new_chunks(replay, writer, last_id)
        writer.close(env_steps=stats.inserted_steps)
    check = _read_back(replay, config.check_batch, config.actor.seed)
    return _summary(config, reports, stats, wall_s, check, spec)


def _read_back(replay: ReplayClient, batch: int, seed: int) -> dict:
    """Sample a batch of 3-frame stacks + next frame and check it is well formed."""
    t0 = time.perf_counter()
    windows = replay.sample(batch, window=READ_BACK_WINDOW, rng=np.random.default_rng(seed))
    ms = 1000 * (time.perf_counter() - t0)
    return {"batch": batch, "frames_shape": list(windows.frames.shape), "sample_ms": ms,
            "mask_fraction": float(windows.masks.mean()), "frame_std": float(windows.frames.std()),
            "distinct_chunks": int(len(set(windows.chunk_ids.tolist())))}


def _summary(config: CollectConfig, reports: list[RolloutReport], stats, wall_s: float, check: dict,
             spec: dict) -> dict:
    per_actor = [r.steps_per_s for r in reports]
    return {
        "env": spec,
        "num_actors": config.num_actors,
        "env_steps": sum(r.env_steps for r in reports),
        "chunks_inserted": stats.inserted_chunks,
        "steps_inserted": stats.inserted_steps,
        "episodes": sum(r.episodes for r in reports),
        "wall_seconds": wall_s,
        "steps_per_s": sum(r.env_steps for r in reports) / wall_s,
        "actor_steps_per_s_mean": float(np.mean(per_actor)),
        "insert_wait_s": sum(r.insert_wait_s for r in reports),
        "replay_stored_mb": stats.stored_bytes / 1e6,
        "replay_evicted_chunks": stats.evicted_chunks,
        "read_back": check,
    }


def print_summary(summary: dict) -> None:
    rows = [("env", f"{summary['env']['env_id']} / {summary['env']['distractor']['mode']} distractor"),
            ("actors", summary["num_actors"]), ("env steps", summary["env_steps"]),
            ("chunks", summary["chunks_inserted"]), ("episodes", summary["episodes"]),
            ("wall time", f"{summary['wall_seconds']:.1f} s"), ("steps/s (all actors)", f"{summary['steps_per_s']:.1f}"),
            ("steps/s per actor", f"{summary['actor_steps_per_s_mean']:.1f}"),
            ("replay stored", f"{summary['replay_stored_mb']:.1f} MB"),
            ("read-back batch", f"{summary['read_back']['frames_shape']} in {summary['read_back']['sample_ms']:.1f} ms"),
            ("agent pixels in batch", f"{100 * summary['read_back']['mask_fraction']:.1f} %")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))


def main(argv: list[str] | None = None) -> int:
    config = parse(CollectConfig, argv, "python -m actors.collect")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, out)
    with redis_url_or_embedded(config.redis_url, config.replay) as url:
        summary = run_collection(config, url)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
