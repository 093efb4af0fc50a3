"""Rollout actors on a real local Ray with real MuJoCo frames, writing to a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from actors.rollout import ActorConfig, RolloutWorker, start_rollout_actors
from common.cluster import init_ray
from common.codec import decode_chunk
from common.dataset import iter_chunks, read_description
from common.envs import EnvConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL_ENV = EnvConfig(env_id="Hopper-v5", distractor="correlated", max_episode_steps=40)


@pytest.fixture(scope="module")
def local_ray():
    init_ray(None, logical_cpus=4)
    yield
    ray.shutdown()


def _stored_chunks(replay):
    return [decode_chunk(replay.get_chunk_blob(i)) for i in replay.chunk_ids_after(0)]


def test_worker_chunks_cover_every_step_once_and_never_cross_episodes(redis_server, replay_factory):
    replay = replay_factory()
    worker = RolloutWorker(0, SMALL_ENV, ActorConfig(envs_per_actor=2, chunk_length=16), redis_server.url,
                           replay.config)
    report = worker.collect(150)
    worker.close()
    chunks = _stored_chunks(replay)
    assert report.env_steps == 150 == sum(c.num_steps for c in chunks) == replay.stats().inserted_steps
    by_episode: dict[str, list] = {}
    for chunk in chunks:
        assert chunk.num_steps <= 16
        assert chunk.frames.shape == (chunk.num_steps + 1, 64, 64, 3)
        assert not (chunk.terminated[:-1] | chunk.truncated[:-1]).any(), "an episode end inside a chunk"
        by_episode.setdefault(chunk.episode_id, []).append(chunk)
    assert report.episodes >= 2  # 150 steps over 2 envs with 40-step episodes
    for episode_chunks in by_episode.values():
        episode_chunks.sort(key=lambda c: c.start_step)
        for before, after in zip(episode_chunks, episode_chunks[1:]):
            assert after.start_step == before.start_step + before.num_steps
            np.testing.assert_array_equal(after.frames[0], before.frames[-1])  # shared boundary frame
            np.testing.assert_array_equal(after.states[0], before.states[-1])


def test_two_ray_actors_write_concurrently_without_loss(local_ray, redis_server, replay_factory):
    replay = replay_factory()
    actors = start_rollout_actors(2, SMALL_ENV, ActorConfig(chunk_length=8), redis_server.url, replay.config)
    reports = ray.get([a.collect.remote(n) for a, n in zip(actors, (90, 70))])
    for actor in actors:
        ray.kill(actor)
    chunks = _stored_chunks(replay)
    assert [r.env_steps for r in reports] == [90, 70]
    assert sum(r.chunks for r in reports) == len(chunks) == replay.stats().inserted_chunks
    per_actor = {a: sum(c.num_steps for c in chunks if c.actor_id == a) for a in (0, 1)}
    assert per_actor == {0: 90, 1: 70}
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    # different actors see different envs: their first frames differ
    firsts = {c.actor_id: c.frames[0] for c in chunks if c.start_step == 0}
    assert not np.array_equal(firsts[0], firsts[1])


def test_collect_command_writes_summary_config_and_dataset(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("MASKLAM_REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "actors.collect", "--num-actors", "2", "--total-env-steps", "120",
         "--env", "HalfCheetah-v5", "--distractor", "exogenous", "--actor.chunk-length", "16", "--check-batch", "32",
         "--save-dataset", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] == summary["steps_inserted"] == 120
    assert summary["read_back"]["frames_shape"] == [32, 4, 64, 64, 3]
    assert 0.0 < summary["read_back"]["mask_fraction"] < 0.6
    config = json.loads((out / "config.json").read_text())
    assert config["env"]["distractor"] == "exogenous"
    chunks = list(iter_chunks(out))
    assert sum(c.num_steps for c in chunks) == 120 == read_description(out)["env_steps"]
    assert {c.env_id for c in chunks} == {"HalfCheetah-v5"}
    assert "steps/s" in result.stdout


def test_worker_exports_steps_chunks_and_insert_latency(redis_server, replay_factory):
    from common import metrics as m

    replay = replay_factory()
    worker = RolloutWorker(0, SMALL_ENV, ActorConfig(chunk_length=10), redis_server.url, replay.config,
                           metrics=m.Metrics("prometheus"))
    report = worker.collect(25)
    worker.close()
    assert worker.metrics.value(m.ACTOR_ENV_STEPS) == 25 == report.env_steps
    assert worker.metrics.value(m.ACTOR_CHUNKS) == report.chunks == replay.stats().inserted_chunks
    assert worker.metrics.value(m.ACTOR_INSERT_SECONDS) == report.chunks  # one latency sample per chunk
