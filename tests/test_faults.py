"""Fault injection against real processes: Redis outages and restarts, kill -9, bad input in
every key and stream the system reads (chunks, the to-segment stream, published weights),
config errors of the real commands, an unprotected Redis on the network, a segmenter actor
killed mid-batch and a checkpoint writer killed mid-write. `pytest -m faults` runs these (and
the other tests marked `faults`); docs/reliability.md maps each promise to its test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgpack
import numpy as np
import pytest
import ray
import redis

from actors.rollout import ActorConfig, RolloutWorker
from common import metrics as m
from common.cli import ConfigError
from common.cluster import init_ray
from common.codec import SCHEMA_VERSION, encode_chunk
from common.envs import EnvConfig
from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.metrics import Metrics
from common.replay import EmbeddedRedis, RateLimiterConfig, RedisUnavailable, ReplayClient, ReplayConfig
from common.replay.redis_server import free_loopback_port
from common.replay.safety import required_maxmemory
from common.weights import WeightsChannel
from conftest import actor_pids, synthetic_chunk
from learner.fleet import ActorFleet, FleetFailed
from learner.loop import read_checkpoint
from learner.publish import encode_policy
from segmenter.config import SegmenterConfig
from segmenter.service import SegmenterService, start_segmenters

pytestmark = pytest.mark.faults
T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
FAST_SEGMENTER = dict(batch_frames=40, max_wait_ms=50, poll_ms=50)


@pytest.fixture
def persistent_redis(tmp_path):
    """A private redis-server with AOF in tmp_path, restartable on the same port."""
    with EmbeddedRedis(appendonly=True, data_dir=str(tmp_path / "redis")) as server:
        yield server


def during_outage(server: EmbeddedRedis, seconds: float, operation: Callable[[], T] = lambda: None) -> T:
    """Stop the server (SIGTERM), run `operation` in a thread, start the server again on the
    same port after `seconds`, and return what `operation` returned. (The restart happens
    here: redis-server's parent-death signal follows the thread that started it.)"""
    server.stop()
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(operation)
        time.sleep(seconds)
        server.start()
        return result.result(timeout=60)


def outage_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]


# -- Redis outages ---------------------------------------------------------------------------
def test_replay_operations_wait_out_redis_restarts(persistent_redis, caplog):
    """insert, sample, stats and mark_ready each meet a stopped Redis, wait, reconnect and go on."""
    caplog.set_level(logging.INFO, logger="masklam.replay")
    metrics = Metrics("prometheus")
    replay = ReplayClient(persistent_redis.url, ReplayConfig(run_name="outage", outage_deadline_s=30), metrics)
    waiting = synthetic_chunk(first_step=500)
    waiting_id = replay.insert(waiting, segment=True)
    replay.insert(synthetic_chunk(first_step=0))
    operations = {
        "insert": lambda: replay.insert(synthetic_chunk(first_step=100)),
        "sample": lambda: replay.sample(16, 3, np.random.default_rng(0)),
        "stats": replay.stats,
        "mark_ready": lambda: replay.mark_ready(waiting_id, waiting.masks),
    }
    results = {}
    for name, operation in operations.items():
        started = time.monotonic()
        results[name] = during_outage(persistent_redis, 1.0, operation)
        assert time.monotonic() - started >= 1.0, f"{name} did not meet the outage"

    assert results["sample"].frames.shape == (16, 3, 8, 8, 3) and results["mark_ready"] is True
    stats = replay.stats()
    assert stats.inserted_chunks == stats.stored_chunks == 3 and stats.ready_chunks == 3
    assert len(outage_warnings(caplog)) == 4  # one line per outage
    assert not any(r.exc_info for r in caplog.records)
    assert persistent_redis.password not in caplog.text
    assert metrics.value(m.REPLAY_RECONNECTS) == 4 == replay.guard.outages
    assert 3.5 <= metrics.value(m.REPLAY_RECONNECT_WAIT_SECONDS) < 20


def test_an_insert_whose_reply_was_lost_is_stored_once(replay_factory):
    """The store script ran, then the connection dropped before its reply: the retry finds
    the chunk's id already stored and stores nothing."""
    replay = replay_factory()
    store, outcomes = replay.scripts.insert, []

    def commit_then_drop(**kwargs):
        outcomes.append(store(**kwargs))
        if len(outcomes) == 1:
            raise redis.ConnectionError("connection dropped after the script ran")
        return outcomes[-1]

    replay.scripts.insert = commit_then_drop
    chunk_id = replay.insert(synthetic_chunk(), segment=True)
    assert outcomes == [1, 0]
    stats = replay.stats()
    assert (stats.inserted_chunks, stats.stored_chunks, stats.inserted_steps) == (1, 1, 8)
    assert replay.redis.xlen(replay.keys.to_segment) == 1 and replay.chunk_ids_after(0) == [chunk_id]


def test_an_outage_past_the_deadline_fails_with_redis_unavailable(persistent_redis, caplog):
    replay = ReplayClient(persistent_redis.url, ReplayConfig(run_name="gone", outage_deadline_s=1.0),
                          Metrics("prometheus"))
    persistent_redis.stop()
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="stayed unreachable"):
        replay.stats()
    assert 0.9 <= time.monotonic() - started < 5
    assert len(outage_warnings(caplog)) == 1


def test_segmenter_process_survives_a_redis_restart_and_logs_no_secret(persistent_redis, tmp_path):
    """A real `python -m segmenter.main` serves, Redis restarts under it, it finishes every chunk;
    its log has one warning for the outage, no traceback, and no password anywhere."""
    replay = ReplayClient(persistent_redis.url, ReplayConfig(run_name="segout"))
    before = [replay.insert(synthetic_chunk(first_step=10 * i), segment=True) for i in range(4)]
    out = tmp_path / "seg"
    env = {**os.environ, "MASKLAM_REDIS_URL": persistent_redis.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "segmenter.main", "--replay.run-name", "segout", "--segmenter.poll-ms", "100",
         "--segmenter.max-wait-ms", "50", "--replay.outage-deadline-s", "60", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert replay.wait_for(lambda s: s.ready_chunks == 4, timeout_s=120), "the segmenter never started"
        during_outage(persistent_redis, 2.0)
        after = [replay.insert(synthetic_chunk(first_step=100 + 10 * i), segment=True) for i in range(4)]
        assert replay.wait_for(lambda s: s.ready_chunks == 8, timeout_s=60)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert set(int(i) for i in replay.redis.zrange(replay.keys.ready, 0, -1)) == set(before + after)
    assert len([line for line in stderr.splitlines() if "unreachable" in line]) == 1
    assert "Traceback" not in stderr
    written = "".join(p.read_text() for p in out.iterdir())
    for text in (stdout, stderr, written):
        assert persistent_redis.password not in text


# -- persistence and memory ------------------------------------------------------------------
def test_a_replay_with_aof_survives_kill_9_and_a_clean_restart_of_redis(persistent_redis):
    replay = ReplayClient(persistent_redis.url, ReplayConfig(run_name="aof"))
    ready = [replay.insert(synthetic_chunk(first_step=20 * i)) for i in range(3)]
    waiting = [replay.insert(synthetic_chunk(first_step=100 + 20 * i), segment=True) for i in range(2)]
    before = replay.stats()
    for restart in ("kill -9", "SIGTERM"):
        if restart == "kill -9":
            persistent_redis.process.kill()
            persistent_redis.process.wait()
        else:
            persistent_redis.stop()
        persistent_redis.start()
        fresh = ReplayClient(persistent_redis.url, ReplayConfig(run_name="aof"))
        assert fresh.stats() == before, restart
        batch = fresh.sample(32, 4, np.random.default_rng(0))
        assert set(batch.chunk_ids.tolist()) <= set(ready)
        np.testing.assert_array_equal(np.diff(batch.frames[:, :, 0, 0, 0].astype(int), axis=1), 1)
        entries = fresh.redis.xrange(fresh.keys.to_segment)
        assert [int(fields[b"id"]) for _, fields in entries] == waiting
        before = fresh.stats()  # with the samples just counted


def test_redis_memory_cap_leaves_room_and_clients_refuse_one_that_does_not(tmp_path):
    config = ReplayConfig(run_name="mem", capacity_bytes=50 * 2**20, capacity_chunks=3)
    with EmbeddedRedis.for_replay(config) as server:
        admin = redis.Redis.from_url(server.url)
        assert int(admin.config_get("maxmemory")["maxmemory"]) == required_maxmemory(config.capacity_bytes)
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        replay = ReplayClient(server.url, config)
        for i in range(5):  # the replay's own FIFO evicts, and counts it
            replay.insert(synthetic_chunk(first_step=10 * i))
        assert replay.stats().evicted_chunks == 2 and replay.stats().stored_chunks == 3
        with pytest.raises(ConfigError, match="maxmemory .* below"):
            ReplayClient(server.url, ReplayConfig(run_name="mem", capacity_bytes=100 * 2**20))
        admin.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ConfigError, match="allkeys-lru"):
            ReplayClient(server.url, config)


# -- bad input -------------------------------------------------------------------------------
FOREIGN = b"GIF89a" + bytes(range(256)) * 200  # not msgpack of a chunk, whatever its length


def _other_size(chunk_id: int) -> bytes:
    """A valid chunk under its own id, but of another frame size than its info record says."""
    chunk = synthetic_chunk(size=16)
    chunk.chunk_id = chunk_id
    return encode_chunk(chunk)[0]


def _reversion(blob: bytes) -> bytes:
    items = msgpack.unpackb(blob, raw=False)
    items[0]["schema"] = SCHEMA_VERSION + 1
    return msgpack.packb(items, use_bin_type=True)


def _reshape(blob: bytes) -> bytes:
    """Same bytes, but the frames descriptor claims a shape that disagrees with the masks."""
    items = msgpack.unpackb(blob, raw=False)
    t1, h, w, c = items[1][0][2]
    items[1][0][2] = [t1 - 1, h * t1 // (t1 - 1), w, c] if (h * t1) % (t1 - 1) == 0 else [t1 * h, 1, w, c]
    return msgpack.packb(items, use_bin_type=True)


def test_sampling_dead_letters_bad_chunks_and_still_returns_valid_batches(replay_factory):
    writer = replay_factory()
    ids = [writer.insert(synthetic_chunk(num_steps=8, size=8, first_step=20 * i)) for i in range(16)]
    good, bad = ids[:6], ids[6:]
    r, k = writer.redis, writer.keys
    good_bytes = sum(int(r.hget(k.size, c)) for c in good)
    blob = {cid: writer.get_chunk_blob(cid) for cid in bad}
    corruptions = {
        "foreign": lambda c: r.set(k.chunk(c), FOREIGN[:len(blob[c])]),
        "truncated": lambda c: r.set(k.chunk(c), blob[c][:-100]),
        "wrong version": lambda c: r.set(k.chunk(c), _reversion(blob[c])),
        "wrong shape": lambda c: r.set(k.chunk(c), _other_size(c)),
        "oversized": lambda c: r.set(k.chunk(c), b"\x00" * 40_000),
        "wrong type": lambda c: (r.delete(k.chunk(c)), r.rpush(k.chunk(c), b"x")),
        "non-binary masks": lambda c: r.set(k.mask(c), b"\x07" * 9 * 64),
        "short masks": lambda c: r.set(k.mask(c), b"\x01" * 64),
        "bad meta": lambda c: r.hset(k.meta, c, b"\xc1junk"),
        "bad info": lambda c: r.hset(k.info, c, b"T:offset:H:W"),
    }
    for cid, corrupt in zip(bad, corruptions.values()):
        corrupt(cid)

    learner = replay_factory(max_chunk_bytes=20_000)
    rng = np.random.default_rng(0)
    for _ in range(30):
        batch = learner.sample(64, 3, rng)
        assert set(batch.chunk_ids.tolist()) <= set(good)
        step = batch.frames[:, :, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(np.diff(step, axis=1), 1)
        np.testing.assert_array_equal(batch.actions[:, :, 0], step[:, :-1])
        assert batch.masks.max() <= 1
        if learner.stats().dead_letters == len(bad):
            break
    stats = learner.stats()
    assert stats.dead_letters == len(bad)
    assert stats.stored_chunks == stats.ready_chunks_stored == len(good)
    assert stats.stored_bytes == good_bytes
    records = [json.loads(x) for x in r.lrange(k.dead_letter, 0, -1)]
    assert sorted(int(x["chunk_id"]) for x in records) == bad
    errors = {int(x["chunk_id"]): x["error"] for x in records}
    assert all(e.startswith(("ChunkDecodeError", "ChunkTooLarge")) for e in errors.values())
    assert "over the 20000-byte limit" in errors[bad[4]] and "not binary" in errors[bad[6]]
    assert not any(r.exists(k.chunk(c)) or r.exists(k.mask(c)) for c in bad)


def test_the_bootstraps_read_dead_letters_bad_chunks_and_goes_on(replay_factory):
    """`newest_ready` (what the bootstrap trains on) meets a corrupt blob, a blob of another
    chunk, short and non-binary masks and an oversized blob among good chunks: each is
    dead-lettered, the read returns every good chunk, and a second read finds nothing bad."""
    replay = replay_factory(max_chunk_bytes=20_000)
    r, k = replay.redis, replay.keys
    ids = [replay.insert(synthetic_chunk(num_steps=8, first_step=20 * i)) for i in range(8)]
    bad = {ids[1]: lambda c: r.set(k.chunk(c), FOREIGN[:500]),
           ids[3]: lambda c: r.set(k.chunk(c), replay.get_chunk_blob(ids[0])),
           ids[4]: lambda c: r.set(k.mask(c), b"\x01" * 64),
           ids[5]: lambda c: r.set(k.mask(c), b"\x07" * 9 * 64),
           ids[6]: lambda c: r.set(k.chunk(c), b"\x00" * 40_000)}
    for cid, corrupt in bad.items():
        corrupt(cid)
    good = [cid for cid in ids if cid not in bad]
    assert [c.chunk_id for c in replay.newest_ready(max_steps=10**6)] == good
    errors = {int(x["chunk_id"]): x for x in map(json.loads, r.lrange(k.dead_letter, 0, -1))}
    assert sorted(errors) == sorted(bad) and replay.stats().dead_letters == len(bad)
    assert {x["source"] for x in errors.values()} == {"newest_ready"}
    assert "not valid msgpack" in errors[ids[1]]["error"] and "carries chunk id" in errors[ids[3]]["error"]
    assert "need 576" in errors[ids[4]]["error"] and "not binary" in errors[ids[5]]["error"]
    assert errors[ids[6]]["error"].startswith("ChunkTooLarge")
    assert [c.chunk_id for c in replay.newest_ready(max_steps=16)] == good[-2:]  # the newest two chunks' 16 steps
    assert replay.stats().dead_letters == len(bad)


def test_segmenter_dead_letters_bad_stream_entries_and_goes_on(redis_server, replay_factory):
    replay = replay_factory(max_chunk_bytes=20_000)
    r, k = replay.redis, replay.keys
    good = [replay.insert(synthetic_chunk(first_step=10 * i), segment=True) for i in range(3)]
    valid = encode_chunk(synthetic_chunk())[0]
    planted = {9001: FOREIGN[:500], 9002: valid[:-7], 9003: _reversion(valid), 9004: _reshape(valid),
               9005: b"\x00" * 50_000}
    for cid, blob in planted.items():
        r.set(k.chunk(cid), blob)
    r.rpush(k.chunk(9006), b"a list, not a blob")
    for cid in [*planted, 9006]:
        r.zadd(k.order, {cid: cid})
        r.xadd(k.to_segment, {"id": cid})
    r.xadd(k.to_segment, {"id": "not-a-number"})
    r.xadd(k.to_segment, {"other": "field"})
    good += [replay.insert(synthetic_chunk(first_step=100 + 10 * i), segment=True) for i in range(3)]

    metrics = Metrics("prometheus")
    service = SegmenterService(SegmenterConfig(**FAST_SEGMENTER), redis_server.url, replay.config, metrics=metrics)
    summary = service.run(max_seconds=30, stop_when_idle=True)

    assert summary["chunks"] == 6 and summary["dead_letter"] == 8
    assert set(int(i) for i in r.zrange(k.ready, 0, -1)) == set(good)
    assert replay.stats().dead_letters == 8 and metrics.value(m.SEGMENTER_SKIPPED_CHUNKS, reason="dead_letter") == 8
    records = [json.loads(x) for x in r.lrange(k.dead_letter, 0, -1)]
    errors = {x["chunk_id"]: x["error"] for x in records}
    assert "not valid msgpack" in errors["9001"] and "truncated" in errors["9002"]
    assert "schema version" in errors["9003"] and "shape" in errors["9004"]
    assert errors["9005"].startswith("ChunkTooLarge") and "wrong type" in errors["9006"]
    assert sum("no integer 'id'" in x["error"] for x in records) == 2
    assert not any(r.exists(k.chunk(c)) for c in [*planted, 9006]) and r.zcard(k.order) == 6
    assert r.xlen(k.to_segment) == 0


def _weights_schema(blob: bytes, **header) -> bytes:
    items = msgpack.unpackb(blob, raw=False)
    items[0] |= header
    return msgpack.packb(items, use_bin_type=True)


def test_actors_refuse_bad_weights_keep_theirs_and_dead_letter_them(redis_server, replay_factory):
    """Bad publications under the weights key, each with a higher version than the actors': both
    actors refuse it (WeightsDecodeError, a warning, no crash) and keep acting with version 3; the
    first to refuse it moves it to the dead-letter list, so it is recorded and counted once. The
    next good publication is picked up."""
    replay = replay_factory()
    r, env = replay.redis, EnvConfig(env_id="HalfCheetah-v5", image_size=16, render_size=32, max_episode_steps=30)
    actors = [RolloutWorker(i, env, ActorConfig(policy="latent", chunk_length=8), redis_server.url, replay.config)
              for i in range(2)]
    channel = WeightsChannel(replay)
    spec = PixelPolicySpec(image_size=16, action_dim=6, latent_dim=8)
    good = encode_policy(PixelPolicy(spec), version=3)
    channel.publish(good, 3)
    assert [a.collect(8, flush_partial=False).policy_version for a in actors] == [3, 3]
    acting = [a.policy.policy for a in actors]
    bad = {  # case: (blob or None for none, version key, what the dead-letter record says)
        "foreign": (FOREIGN, b"4", "not valid msgpack"),
        "truncated": (good[:-50], b"5", "truncated"),
        "wrong schema version": (_weights_schema(good, schema=99), b"6", "schema/kind"),
        "wrong tensor shapes": (_weights_schema(good, spec={**dataclasses.asdict(spec), "latent_dim": 5}), b"7",
                                "does not fit"),
        "other env": (encode_policy(PixelPolicy(dataclasses.replace(spec, action_dim=3)), 8), b"8", "3 actions"),
        "other frame size": (encode_policy(PixelPolicy(dataclasses.replace(spec, image_size=32)), 9), b"9",
                             "--image-size"),
        "blob of another version": (encode_policy(PixelPolicy(spec), 2), b"10", "carries version 2"),
        "no blob": (None, b"11", "without a blob"),
        "version not a number": (good, b"v12", "not an integer"),
    }
    for case, (blob, version, error) in bad.items():
        r.delete(channel.blob_key)
        if blob is not None:
            r.set(channel.blob_key, blob)
        r.set(channel.version_key, version)
        for actor, policy in zip(actors, acting):
            report = actor.collect(2, flush_partial=False)
            assert report.policy_version == 3 and report.env_steps == 2, case
            assert actor.policy.policy is policy, case
        assert not r.exists(channel.blob_key) and not r.exists(channel.version_key), case
        record = json.loads(r.lindex(replay.keys.dead_letter, 0))
        assert record["source"] == "weights" and error in record["error"], (case, record)
        assert record["error"].startswith("WeightsDecodeError") and record["version"] == version.decode()
    assert replay.stats().dead_letters == len(bad)  # once per publication, not once per actor

    channel.publish(encode_policy(PixelPolicy(spec), version=13), 13)
    assert [a.collect(8, flush_partial=False).policy_version for a in actors] == [13, 13]
    for actor in actors:
        actor.close()


def test_nothing_deserialises_with_pickle():
    """Data from Redis and the network is msgpack or raw bytes: nothing unpickles, unmarshals or
    opens a shelf anywhere (`pickle` may be imported only for its exception type, which a
    weights-only torch.load raises), and every torch.load is weights-only (tensors and plain
    containers)."""
    offenders = []
    for folder in ("common", "actors", "segmenter", "learner"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"^\s*(?:import|from)\s+(?:cpickle|_pickle|marshal|shelve|dill|cloudpickle)\b"
                         r"|^\s*from\s+pickle\s+import\s+(?!UnpicklingError\s*$)|pickle\.(?:loads?|Unpickler)\b",
                         text, re.M):
                offenders.append(f"{path}: pickle-like module")
            for call in _calls(text, "torch.load("):
                if "weights_only=True" not in call:
                    offenders.append(f"{path}: {call}")
    assert not offenders, offenders


def _calls(text: str, opening: str) -> list[str]:
    """Each call that starts with `opening` in `text`, up to its balancing parenthesis."""
    calls = []
    for match in re.finditer(re.escape(opening), text):
        depth, end = 0, match.start()
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start():end + 1])
    return calls


# -- config errors of the real commands --------------------------------------------------------
def _garbage_checkpoint(folder: Path, name: str = "garbage.pth") -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint" * 10)
    return str(path)


CONFIG_ERRORS = {
    "unknown env": (["actors.collect", "--env", "NoSuchEnv-v5"], "unsupported env id"),
    "bad choice": (["actors.collect", "--distractor", "rain"], "invalid choice"),
    "bad value": (["actors.collect", "--num-actors", "0"], "at least 1"),
    "bad type": (["segmenter.main", "--segmenter.batch-frames", "many"], "Error parsing --segmenter.batch-frames"),
    "wrong password": (["actors.collect", "--redis-url", "{wrong_password}"], "refused our credentials"),
    "unreachable": (["actors.collect", "--redis-url", "redis://:pw@127.0.0.1:{free_port}/0",
                     "--replay.connect-timeout-s", "1"], "stayed unreachable"),
    "missing checkpoint": (["segmenter.main", "--segmenter", "sam", "--segmenter.sam-checkpoint", "/no/sam.pth"],
                           "does not exist"),
    "unreadable checkpoint": (["segmenter.main", "--segmenter", "sam", "--segmenter.sam-checkpoint", "{garbage}"],
                              "could not be read"),
    "no replay": (["segmenter.main", "--redis-url", ""], "no replay to serve"),
    "expert env": (["learner.experts", "--env", "NoSuchEnv-v5"], "unsupported env id"),
    "compare method": (["learner.compare", "--methods", "lapo,nosuch"], "unknown method"),
    "learner env": (["learner.main", "--env", "NoSuchEnv-v5"], "unsupported env id"),
    "learner choice": (["learner.main", "--preset", "huge"], "invalid choice"),
    "learner value": (["learner.main", "--num-actors", "0"], "at least 1"),
    "learner checkpoint": (["learner.main", "--resume", "--out", "{garbage_run}"], "could not be read"),
    "learner password": (["learner.main", "--metrics-port", "0", "--redis-url", "{wrong_password}"],
                         "refused our credentials"),
    "learner segmenter": (["learner.main", "--segmenter", "sam"], "needs --segmenter.sam-checkpoint"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_errors_exit_with_one_line_and_no_traceback(case, redis_server, tmp_path):
    args, expected = CONFIG_ERRORS[case]
    out = tmp_path / "out"
    fills = {"wrong_password": lambda: redis_server.url.replace(redis_server.password, "not-the-password"),
             "free_port": free_loopback_port, "garbage": lambda: _garbage_checkpoint(tmp_path),
             "garbage_run": lambda: str(Path(_garbage_checkpoint(out, "checkpoint.pt")).parent)}
    args = [a.format(**{name: fill() for name, fill in fills.items() if f"{{{name}}}" in a}) for a in args]
    env = {**os.environ, "MASKLAM_REDIS_URL": redis_server.url if args[0] == "segmenter.main" and case != "no replay"
           else ""}
    result = subprocess.run([sys.executable, "-m", *args, "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert redis_server.password not in result.stderr + result.stdout


# -- access ---------------------------------------------------------------------------------------
def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.254", 9))  # picks the outgoing interface; sends nothing
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def test_an_unprotected_redis_on_the_network_is_refused_unless_allowed(tmp_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_loopback_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", address, "--protected-mode", "no",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://{address}:{port}/0"
        probe = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while not _answers(probe):
            assert time.monotonic() < deadline, "the test's redis-server did not start"
            time.sleep(0.05)
        for tried in (url, f"redis://:any-password@{address}:{port}/0"):  # no auth accepts any password
            with pytest.raises(ConfigError, match="answers without a password"):
                ReplayClient(tried, ReplayConfig(run_name="open"))
        replay = ReplayClient(url, ReplayConfig(run_name="open", allow_insecure_redis=True))
        assert replay.stats().inserted_chunks == 0
        result = subprocess.run([sys.executable, "-m", "actors.collect", "--redis-url", url, "--out",
                                 str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: ") and "--replay.allow-insecure-redis" in result.stderr
    finally:
        server.kill()
        server.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# -- segmenter death inside Ray -------------------------------------------------------------------
def test_a_killed_segmenter_actor_is_restarted_and_its_batch_finished(redis_server, replay_factory):
    """SIGKILL a segmenter actor's worker process mid-batch (chunks read, not yet masked): Ray
    restarts it, the interrupted `run` call resumes on the new instance, which claims the
    dead consumer's pending entries and finishes them. No chunk is lost."""
    replay = replay_factory()
    config = SegmenterConfig(batch_frames=100_000, max_wait_ms=4_000, poll_ms=100, claim_idle_ms=500)
    init_ray(None, logical_cpus=2)
    try:
        (actor,) = start_segmenters(1, config, redis_server.url, replay.config, max_restarts=1)
        ray.get(actor.summary.remote(), timeout=300)  # started
        running = actor.run.remote()
        ids = [replay.insert(synthetic_chunk(first_step=10 * i), segment=True) for i in range(5)]
        stream = replay.keys.to_segment
        deadline = time.monotonic() + 60
        while replay.redis.xpending(stream, "segmenter")["pending"] < 5:
            assert time.monotonic() < deadline, "the actor never read the chunks"
            time.sleep(0.02)
        (consumer,) = replay.redis.xinfo_consumers(stream, "segmenter")
        victim = int(consumer["name"].decode().rsplit("-", 2)[1])  # host-pid-suffix
        os.kill(victim, signal.SIGKILL)
        assert replay.stats().ready_chunks == 0  # killed mid-batch

        assert replay.wait_for(lambda s: s.ready_chunks == 5, timeout_s=240)
        assert set(int(i) for i in replay.redis.zrange(replay.keys.ready, 0, -1)) == set(ids)
        assert int(replay.redis.hget(replay.keys.segmenter_stats, "claimed")) >= 5
        assert replay.redis.xpending(stream, "segmenter")["pending"] == 0
        ray.get(actor.stop.remote(), timeout=60)
        summary = ray.get(running, timeout=60)
        assert summary["chunks"] == 5 and summary["consumer"] != consumer["name"].decode()
    finally:
        ray.shutdown()


def test_a_crash_looping_rollout_actor_fails_the_run_once_its_replacements_are_spent(redis_server, replay_factory):
    """A rollout actor whose process dies again and again (SIGKILL, as a crashing env would):
    with no Ray restarts and one replacement, the fleet replaces it once, then stops with a
    FleetFailed that names the slot, the flags and where its log is, instead of starting new
    actors forever while the learner waits for data."""
    replay = replay_factory()
    env = EnvConfig(env_id="HalfCheetah-v5", image_size=16, render_size=32, max_episode_steps=30)
    init_ray(None, logical_cpus=2)
    try:
        fleet = ActorFleet(1, env, ActorConfig(chunk_length=8), SegmenterConfig(), 0, redis_server.url,
                           replay.config, RateLimiterConfig(samples_per_insert=0, min_ready_steps=0),
                           max_restarts=0, max_replacements=1)
        deadline = time.monotonic() + 240
        while fleet.totals().env_steps == 0:  # reporting: a crash from now on is not a start-up failure
            fleet.check()
            assert time.monotonic() < deadline, "the actor never reported"
            time.sleep(0.1)
        killed: set[int] = set()
        with pytest.raises(FleetFailed) as failure:
            while True:
                fleet.check()
                assert time.monotonic() < deadline, f"the fleet is still replacing its actor ({len(killed)} killed)"
                for pid in set(actor_pids(os.getpid(), "RolloutWorker")) - killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                time.sleep(0.1)
        assert len(killed) == 2  # the first actor and its one replacement
        message = str(failure.value)
        assert message.startswith("rollout actor 0 ran out of its 0 restarts 2 times")
        assert "--max-replacements 1" in message and "crashing in a loop" in message and "logs" in message
        fleet.stop(timeout_s=10)
    finally:
        ray.shutdown()


# -- checkpoints -------------------------------------------------------------------------------------
CHECKPOINT_WRITER = """
import sys, torch
from pathlib import Path
from common.checkpoint import write_checkpoint
from learner.loop import CHECKPOINT_KEYS, read_checkpoint
path = Path(sys.argv[1])
writes = read_checkpoint(path)["counters"]["writes"] if path.exists() else 0
payload = torch.zeros(int(sys.argv[2]), dtype=torch.uint8)
while True:
    writes += 1
    write_checkpoint({**dict.fromkeys(CHECKPOINT_KEYS, {}), "counters": {"writes": writes}, "lam": {"w": payload}},
                     path)
    print(writes, flush=True)
"""


def _stop_mid_write(writer: subprocess.Popen, tmp: Path, size: int) -> None:
    """Freeze `writer` (SIGSTOP) at a moment its temporary checkpoint file is partly written."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "never caught a write under way"
        if tmp.exists() and 0 < tmp.stat().st_size < size:
            writer.send_signal(signal.SIGSTOP)
            if tmp.exists() and tmp.stat().st_size < size:
                return
            writer.send_signal(signal.SIGCONT)  # it finished that write meanwhile: the next one
        time.sleep(0.001)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """A process that keeps writing checkpoints with `common.checkpoint.write_checkpoint` is SIGKILLed
    while a write is under way (its temporary file partly written), three times, each time
    started again from what it left: the checkpoint is always the last whole one, and the
    partial file is never read in its place (read on purpose, it is refused)."""
    path, size = tmp_path / "checkpoint.pt", 64 * 2**20
    tmp = path.with_name(path.name + ".tmp")
    for kill in range(3):
        writer = subprocess.Popen([sys.executable, "-c", CHECKPOINT_WRITER, str(path), str(size)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)
        try:
            first = writer.stdout.readline()  # one whole checkpoint at least
            assert first, "the writer did not start"
            _stop_mid_write(writer, tmp, size)
            writer.send_signal(signal.SIGKILL)
            written = [int(line) for line in (first + writer.communicate(timeout=60)[0]).split()]
        finally:
            writer.kill()
        assert writer.returncode == -signal.SIGKILL and tmp.stat().st_size < size
        writes = read_checkpoint(path)["counters"]["writes"]
        assert writes in (written[-1], written[-1] + 1), (kill, written[-3:], writes)  # +1: killed before its print
        with pytest.raises(ConfigError, match="could not be read"):
            read_checkpoint(tmp)
    assert writes >= 3
