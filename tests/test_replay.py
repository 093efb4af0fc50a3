"""The Redis replay against a real redis-server: storage, FIFO capacity, sampling alignment,
readiness, the segment queue, rate limiting, the embedded launcher, and the replay as the
only door to Redis."""

from __future__ import annotations

import re
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import redis

from common.codec import decode_chunk
from common.replay import (EmbeddedRedis, RateLimiter, RateLimiterConfig, RateLimiterTimeout, RedisServerNotFound,
                           ReplayClient, ReplayConfig, find_redis_server)
from conftest import synthetic_chunk
from segmenter.backends import OracleBackend
from segmenter.config import SegmenterConfig
from segmenter.service import SegmenterService

ROOT = Path(__file__).resolve().parents[1]


def test_insert_round_trips_the_whole_chunk(replay_factory):
    replay = replay_factory()
    chunk = synthetic_chunk(num_steps=6, size=8, first_step=40)
    chunk_id = replay.insert(chunk)
    stored = decode_chunk(replay.get_chunk_blob(chunk_id))
    np.testing.assert_array_equal(stored.frames, chunk.frames)
    np.testing.assert_array_equal(stored.actions, chunk.actions)
    assert stored.chunk_id == chunk_id
    stats = replay.stats()
    assert (stats.inserted_chunks, stats.inserted_steps, stats.ready_steps) == (1, 6, 6)


def test_sampled_windows_keep_frames_masks_actions_aligned(replay_factory):
    """Every array of the synthetic chunks encodes the global step index: any off-by-one
    between frames, masks, actions, rewards or background velocity shows here."""
    replay = replay_factory()
    for episode in range(12):
        replay.insert(synthetic_chunk(num_steps=16, size=8, first_step=episode * 20, episode_id=f"ep{episode}"))
    window = 5
    batch = replay.sample(300, window, np.random.default_rng(1))
    step = batch.frames[:, :, 0, 0, 0].astype(np.int64)
    assert batch.frames.shape == (300, window, 8, 8, 3) and batch.masks.shape == (300, window, 8, 8)
    np.testing.assert_array_equal(np.diff(step, axis=1), 1)
    np.testing.assert_array_equal(batch.masks[:, :, 3, 3], step % 2)
    np.testing.assert_array_equal(batch.actions[:, :, 0], step[:, :-1])
    np.testing.assert_array_equal(batch.rewards, step[:, :-1])
    np.testing.assert_array_equal(batch.bg_velocity[:, :, 1], -step[:, :-1])
    # starts cover the whole valid range of each chunk, and frames match their chunk's offset
    assert batch.starts.min() == 0 and batch.starts.max() == 16 + 1 - window
    np.testing.assert_array_equal(step[:, 0] % 20, batch.starts)


def test_windows_longer_than_short_chunks_skip_them(replay_factory):
    replay = replay_factory()
    replay.insert(synthetic_chunk(num_steps=2, first_step=100))
    long_id = replay.insert(synthetic_chunk(num_steps=10, first_step=0))
    batch = replay.sample(50, 6, np.random.default_rng(0))
    assert set(batch.chunk_ids.tolist()) == {long_id}
    with pytest.raises(RuntimeError, match="at least 12 frames"):
        replay.sample(4, 12, np.random.default_rng(0))


def test_a_batch_wider_than_the_step_array_cache_keeps_every_row_aligned(replay_factory):
    """The sampler caches checked step arrays for at most `capacity_chunks` chunks; a batch over
    more chunks than that (a replay evicting while the learner samples) pushes the first rows'
    arrays out of the cache before the batch is assembled. Each row keeps its own."""
    writer = replay_factory()
    for i in range(12):
        writer.insert(synthetic_chunk(num_steps=8, first_step=20 * i))
    batch = replay_factory(capacity_chunks=2).sample(64, 3, np.random.default_rng(0))
    step = batch.frames[:, :, 0, 0, 0].astype(np.int64)
    np.testing.assert_array_equal(batch.actions[:, :, 0], step[:, :-1])
    assert len(set(batch.chunk_ids.tolist())) > 2


@pytest.mark.faults
def test_fifo_eviction_by_chunk_count(replay_factory):
    replay = replay_factory(capacity_chunks=5)
    ids = [replay.insert(synthetic_chunk(first_step=10 * i)) for i in range(9)]
    stats = replay.stats()
    assert stats.stored_chunks == 5 and stats.evicted_chunks == 4
    assert [replay.get_chunk_blob(i) is None for i in ids] == [True] * 4 + [False] * 5
    sampled = set(replay.sample(200, 2, np.random.default_rng(0)).chunk_ids.tolist())
    assert sampled <= set(ids[4:]) and len(sampled) == 5
    assert replay.redis.hlen(replay.keys.meta) == 5


def test_fifo_eviction_by_bytes_keeps_accounting_exact(replay_factory):
    probe = replay_factory()
    probe.insert(synthetic_chunk(num_steps=8, size=16))
    per_chunk = probe.stats().stored_bytes
    probe.clear()
    replay = replay_factory(capacity_bytes=int(per_chunk * 3.5))
    for i in range(10):
        replay.insert(synthetic_chunk(num_steps=8, size=16, first_step=10 * i))
    stats = replay.stats()
    assert stats.stored_chunks == 3
    assert stats.stored_bytes == 3 * per_chunk <= replay.config.capacity_bytes
    assert stats.stored_steps == 24


def test_chunks_waiting_for_masks_are_not_sampled_until_ready(replay_factory):
    replay = replay_factory()
    ready_id = replay.insert(synthetic_chunk(first_step=0))
    waiting = synthetic_chunk(first_step=100)
    waiting_id = replay.insert(waiting, segment=True)
    assert replay.redis.xlen(replay.keys.to_segment) == 1
    assert set(replay.sample(100, 2, np.random.default_rng(0)).chunk_ids.tolist()) == {ready_id}
    new_masks = 1 - waiting.masks
    assert replay.mark_ready(waiting_id, new_masks)
    batch = replay.sample(200, 2, np.random.default_rng(0))
    assert waiting_id in batch.chunk_ids
    rows = batch.chunk_ids == waiting_id
    # the segmenter's masks are served, not the chunk's ground truth
    np.testing.assert_array_equal(batch.masks[rows][:, :, 0, 0], 1 - batch.frames[rows][:, :, 0, 0, 0] % 2)


def test_mark_ready_after_eviction_does_not_resurrect(replay_factory):
    replay = replay_factory(capacity_chunks=1)
    chunk = synthetic_chunk()
    old = replay.insert(chunk, segment=True)
    replay.insert(synthetic_chunk(first_step=50))
    assert not replay.mark_ready(old, chunk.masks)
    assert not replay.redis.exists(replay.keys.mask(old))


def test_concurrent_writers_lose_nothing(replay_factory):
    writers, per_writer = 4, 15

    def write(actor: int) -> None:
        client = replay_factory()
        for i in range(per_writer):
            client.insert(synthetic_chunk(num_steps=3, first_step=i, actor_id=actor, episode_id=f"{actor}-{i}"))

    threads = [threading.Thread(target=write, args=(a,)) for a in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replay = replay_factory()
    stats = replay.stats()
    assert stats.inserted_chunks == stats.stored_chunks == writers * per_writer
    assert stats.inserted_steps == writers * per_writer * 3
    ids = replay.chunk_ids_after(0)
    assert len(ids) == len(set(ids)) == writers * per_writer


def test_rate_limiter_holds_samples_per_insert_in_band(replay_factory):
    """An eager writer thread and an eager sampler, both throttled only by the limiter:
    the achieved samples-per-insert stays inside the configured band."""
    config = RateLimiterConfig(samples_per_insert=4.0, min_ready_steps=40, error_buffer=80.0)
    steps_per_chunk, batch = 8, 16
    stop = threading.Event()
    writer_replay, learner_replay = replay_factory(), replay_factory()
    writer_limiter, learner_limiter = RateLimiter(writer_replay, config), RateLimiter(learner_replay, config)
    diffs = []

    def write():
        i = 0
        while not stop.is_set():
            writer_limiter.await_insert(steps_per_chunk, should_stop=stop.is_set)
            if not stop.is_set():
                writer_replay.insert(synthetic_chunk(num_steps=steps_per_chunk, first_step=i))
                i += 1

    thread = threading.Thread(target=write)
    thread.start()
    rng = np.random.default_rng(0)
    for _ in range(60):
        learner_limiter.await_sample(batch, timeout_s=30)
        learner_replay.sample(batch, 2, rng)
        stats = learner_replay.stats()
        diffs.append(stats.ready_steps * config.samples_per_insert - stats.sampled_steps)
    stop.set()
    thread.join()
    stats = learner_replay.stats()
    achieved = stats.sampled_steps / stats.ready_steps
    assert learner_limiter.min_diff - batch <= min(diffs) and max(diffs) <= learner_limiter.max_diff + config.samples_per_insert * steps_per_chunk
    assert abs(achieved - config.samples_per_insert) < 2.0, achieved
    assert stats.insert_wait_s > 0 and stats.sample_wait_s > 0


def test_rate_limiter_times_out_with_a_named_reason(replay_factory):
    limiter = RateLimiter(replay_factory(), RateLimiterConfig(samples_per_insert=1, min_ready_steps=10))
    with pytest.raises(RateLimiterTimeout, match="waited .* to sample"):
        limiter.await_sample(4, timeout_s=0.2)


class SlowOracle(OracleBackend):
    """The oracle at a set pace: a segmenter far slower than the actors (SAM on a CPU)."""

    def __init__(self, seconds_per_batch: float):
        self.seconds_per_batch = seconds_per_batch

    def segment(self, chunks):
        time.sleep(self.seconds_per_batch)
        return super().segment(chunks)


def test_a_slow_segmenter_holds_the_actors_back_and_loses_no_chunk(redis_server, replay_factory):
    """Two writers insert chunks for the segmenter through the rate limiter, as fast as it lets
    them, into a replay of 24 chunks; a real segmenter service, slowed to about 25 chunks/s,
    masks them. The ratio is off, so only the segmenter's backlog holds the writers: FIFO
    eviction runs all along, yet every chunk is segmented before it is evicted."""
    config = RateLimiterConfig(samples_per_insert=0.0, min_ready_steps=0, max_unsegmented_chunks=8)
    writers, per_writer = 2, 60
    backlog: list[int] = []

    def write(actor: int) -> None:
        client = replay_factory(capacity_chunks=24)
        limiter = RateLimiter(client, config)
        for i in range(per_writer):
            limiter.await_insert(8)
            client.insert(synthetic_chunk(num_steps=8, first_step=10 * i, actor_id=actor), segment=True)
            backlog.append(client.stats().unsegmented_chunks)

    replay = replay_factory(capacity_chunks=24)
    service = SegmenterService(SegmenterConfig(batch_frames=40, max_wait_ms=50, poll_ms=50), redis_server.url,
                               replay.config)
    service.backend = SlowOracle(seconds_per_batch=0.2)
    serving = threading.Thread(target=service.run, kwargs={"max_seconds": 120})
    serving.start()
    threads = [threading.Thread(target=write, args=(a,)) for a in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replay.wait_for(lambda s: s.unsegmented_chunks == 0, timeout_s=60)
    service.stop()
    serving.join()
    stats = replay.stats()
    assert stats.inserted_chunks == writers * per_writer and stats.evicted_chunks >= writers * per_writer - 24
    assert service.stats.evicted == 0 and stats.ready_chunks == writers * per_writer  # each one segmented
    assert max(backlog) <= config.max_unsegmented_chunks + writers
    assert stats.insert_wait_s > 0


@pytest.mark.faults
def test_embedded_server_requires_password_binds_loopback_and_stops():
    with EmbeddedRedis() as server:
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()
        client = redis.Redis.from_url(server.url)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
        process = server.process
    assert process.poll() is not None


def test_missing_redis_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("common.replay.redis_server._SEARCH_DIRS", ())
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    with pytest.raises(RedisServerNotFound, match="apt-get install redis-server"):
        find_redis_server()


def test_run_prefixes_isolate_runs(redis_server):
    a = ReplayClient(redis_server.url, ReplayConfig(run_name="iso-a"))
    b = ReplayClient(redis_server.url, ReplayConfig(run_name="iso-b"))
    try:
        a.insert(synthetic_chunk())
        assert b.stats().inserted_chunks == 0 and a.stats().inserted_chunks == 1
        with pytest.raises(ValueError, match="run name"):
            ReplayClient(redis_server.url, ReplayConfig(run_name="bad:name"))
    finally:
        a.clear()
        b.clear()


def test_newest_ready_gives_the_newest_chunks_with_their_served_masks_oldest_first(replay_factory):
    replay = replay_factory()
    ready = [replay.insert(synthetic_chunk(num_steps=8, first_step=10 * i)) for i in range(3)]
    waiting = synthetic_chunk(num_steps=8, first_step=100)
    waiting_id = replay.insert(waiting, segment=True)
    replay.insert(synthetic_chunk(num_steps=8, first_step=200), segment=True)  # never segmented: not ready
    assert replay.mark_ready(waiting_id, 1 - waiting.masks)
    chunks = replay.newest_ready(max_steps=12)  # two chunks of 8 steps hold 12
    assert [c.chunk_id for c in chunks] == [ready[2], waiting_id]
    np.testing.assert_array_equal(chunks[1].masks, 1 - waiting.masks)  # served, not the ground truth
    assert [c.chunk_id for c in replay.newest_ready(max_steps=10**6)] == [*ready, waiting_id]


def test_segment_queue_shares_claims_and_acknowledges_entries(replay_factory):
    replay = replay_factory()
    ids = [replay.insert(synthetic_chunk(first_step=10 * i), segment=True) for i in range(3)]
    first = replay.segment_queue("segmenter", "first")
    second = replay.segment_queue("segmenter", "second")  # joining an existing group is harmless
    taken, own = first.read(count=2, block_ms=10), second.read(count=5, block_ms=10)
    assert [e.chunk_id for e in taken] == ids[:2] and [e.chunk_id for e in own] == ids[2:]
    assert second.read(5, 10) == [] and first.backlog() == (3, 3)
    first.acknowledge([taken[0].entry_id], {"chunks": 1})
    second.acknowledge([own[0].entry_id], {"chunks": 1})
    time.sleep(0.05)
    claimed = second.claim(min_idle_ms=20, count=10)  # `first` is presumed dead
    assert [(e.chunk_id, e.deliveries) for e in claimed] == [(ids[1], 2)]
    assert first.backlog() == (1, 1) and first.length() == 1
    second.acknowledge([claimed[0].entry_id], {"chunks": 1})
    assert first.backlog() == (0, 0)
    first.leave()  # holds nothing now: gone from the group
    assert [c["name"] for c in replay.redis.xinfo_consumers(replay.keys.to_segment, "segmenter")] == [b"second"]
    assert replay.redis.hgetall(replay.keys.segmenter_stats) == {b"chunks": b"3", b"claimed": b"1"}


def test_lua_scripts_ship_as_package_data():
    """The scripts are files beside the code; an installed package must carry them."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    scripts = sorted((ROOT / "common/replay/lua").glob("*.lua"))
    assert scripts and all(any(p.match(g) for g in package_data["common.replay"])
                           for p in (s.relative_to(ROOT / "common/replay") for s in scripts))


def test_no_role_outside_the_replay_touches_a_redis_key():
    """Actors, the segmenter, the learner and the benchmarks go through `ReplayClient` (and its
    segment queue); only common/replay knows the key layout and talks to Redis for the replay."""
    offenders = []
    for role in ("actors", "segmenter", "learner", "benchmarks"):
        for path in (ROOT / role).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\.redis\b|\.keys\.|\bReplayKeys\b", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
