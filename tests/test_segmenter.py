"""The segmenter service against a real redis-server: ready chunks, shared work, crash
recovery with a real SIGKILL, dead letters, evictions, the CLI and the Ray actor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from common import metrics as m
from common.cli import ConfigError
from common.cluster import init_ray
from common.metrics import Metrics
from conftest import synthetic_chunk
from segmenter.config import SegmenterConfig
from segmenter.imperfection import ImperfectionConfig, morph
from segmenter.main import main as segmenter_main
from segmenter.service import SegmenterService, placement_options, start_segmenters

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(batch_frames=40, max_wait_ms=50, poll_ms=50)


def masked_chunk(rng: np.random.Generator, first_step: int = 0, density: float = 0.5):
    """A synthetic chunk with random per-pixel masks, so any mix-up of masks shows."""
    chunk = synthetic_chunk(num_steps=8, size=16, first_step=first_step)
    chunk.masks = (rng.random(chunk.masks.shape) < density).astype(np.uint8)
    return chunk


def insert_chunks(replay, n: int, seed: int = 0, density: float = 0.5) -> dict[int, np.ndarray]:
    """Insert `n` chunks for segmentation; returns their ground-truth masks by id."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        chunk = masked_chunk(rng, first_step=8 * i, density=density)
        truth[replay.insert(chunk, segment=True)] = chunk.masks.copy()
    return truth


def stored_masks(replay, chunk_id: int, like: np.ndarray) -> np.ndarray | None:
    raw = replay.redis.get(replay.keys.mask(chunk_id))
    return None if raw is None else np.frombuffer(raw, np.uint8).reshape(like.shape)


def service(redis_server, replay, metrics: Metrics | None = None, **overrides) -> SegmenterService:
    config = SegmenterConfig(**{**FAST, **overrides})
    return SegmenterService(config, redis_server.url, replay.config, metrics=metrics or Metrics("prometheus"))


def test_stream_of_chunks_becomes_ready_chunks_with_their_masks(redis_server, replay_factory):
    replay = replay_factory()
    truth = insert_chunks(replay, 12)
    metrics = Metrics("prometheus")
    seg = service(redis_server, replay, metrics)
    summary = seg.run(max_seconds=30, stop_when_idle=True)

    for chunk_id, masks in truth.items():
        np.testing.assert_array_equal(stored_masks(replay, chunk_id, masks), masks)
    assert replay.stats().ready_chunks == 12
    batch = replay.sample(16, 3, np.random.default_rng(0))
    for cid, start, masks in zip(batch.chunk_ids, batch.starts, batch.masks):
        np.testing.assert_array_equal(masks, truth[int(cid)][start:start + 3])
    assert summary["chunks"] == 12 and summary["frames"] == 12 * 9 and summary["mean_iou"] == 1.0
    assert summary["batches"] >= 3  # 40-frame batches of 9-frame chunks
    assert seg.queue.backlog() == (0, 0)  # finished entries are deleted, none left pending
    assert metrics.value(m.SEGMENTER_FRAMES) == 12 * 9
    assert metrics.value(m.SEGMENTER_BATCH_SECONDS) == summary["batches"]
    assert metrics.value(m.SEGMENTER_QUEUE_ENTRIES) == 0
    assert replay.redis.hget(replay.keys.segmenter_stats, "chunks") == b"12"


def test_imperfection_knobs_shape_the_served_masks(redis_server, replay_factory):
    replay = replay_factory()
    truth = insert_chunks(replay, 6, density=0.05)  # sparse, so that dilated masks are never all ones
    seg = service(redis_server, replay, imperfection=ImperfectionConfig(mask_radius=1, mask_dropout=0.3))
    summary = seg.run(max_seconds=30, stop_when_idle=True)
    dropped = 0
    for chunk_id, masks in truth.items():
        served = stored_masks(replay, chunk_id, masks)
        dilated = morph(masks, 1)
        for frame_served, frame_dilated in zip(served, dilated):
            if frame_served.all() and not frame_dilated.all():
                dropped += 1
            else:
                np.testing.assert_array_equal(frame_served, frame_dilated)
    assert dropped == summary["dropped_masks"] > 0
    assert summary["mean_iou"] < 1.0  # dilated masks are scored against the undilated truth


def test_two_instances_share_the_work_without_loss_or_duplicates(redis_server, replay_factory):
    replay = replay_factory()
    services = [service(redis_server, replay, batch_frames=18) for _ in range(2)]
    marked: list[list[int]] = [[], []]
    for seg, log in zip(services, marked):
        original = seg.replay.mark_ready

        def recording(chunk_id, masks, original=original, log=log):
            log.append(chunk_id)
            return original(chunk_id, masks)
        seg.replay.mark_ready = recording
    threads = [threading.Thread(target=seg.run, kwargs={"max_seconds": 60}) for seg in services]
    for t in threads:
        t.start()
    truth = {}
    for i in range(8):  # arrive in waves while both instances are reading
        truth.update(insert_chunks(replay, 5, seed=i))
        time.sleep(0.05)
    assert replay.wait_for(lambda s: s.ready_chunks == 40, timeout_s=30)
    for seg in services:
        seg.stop()
    for t in threads:
        t.join()
    first, second = set(marked[0]), set(marked[1])
    assert first and second, "both instances should have taken part"
    assert not first & second and len(marked[0]) + len(marked[1]) == 40
    assert first | second == set(truth)
    assert sum(seg.stats.chunks for seg in services) == 40


@pytest.mark.faults
def test_a_killed_instance_leaves_its_batch_to_be_claimed_and_finished(redis_server, replay_factory):
    replay = replay_factory()
    truth = insert_chunks(replay, 5)
    replay.redis.xgroup_create(replay.keys.to_segment, "segmenter", id="0")
    env = {**os.environ, "MASKLAM_REDIS_URL": redis_server.url}
    victim = subprocess.Popen(
        [sys.executable, "-m", "segmenter.main", "--replay.run-name", replay.config.run_name,
         "--segmenter.batch-frames", "100000", "--segmenter.max-wait-ms", "600000", "--segmenter.poll-ms", "100"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # start-up imports torch and segment-anything
        while replay.redis.xpending(replay.keys.to_segment, "segmenter")["pending"] < 5:
            assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the subprocess never read the chunks"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)  # mid-batch: read, not yet segmented or acknowledged
        victim.wait(timeout=10)
    finally:
        victim.kill()
        victim.stderr.close()
    assert replay.stats().ready_chunks == 0
    (dead,) = replay.redis.xinfo_consumers(replay.keys.to_segment, "segmenter")
    assert dead["pending"] == 5

    survivor = service(redis_server, replay, claim_idle_ms=300)
    summary = survivor.run(max_seconds=30, stop_when_idle=True)
    assert summary["claimed"] == 5 and summary["chunks"] == 5
    for chunk_id, masks in truth.items():
        np.testing.assert_array_equal(stored_masks(replay, chunk_id, masks), masks)
    assert replay.redis.xpending(replay.keys.to_segment, "segmenter")["pending"] == 0


@pytest.mark.faults
def test_malformed_chunks_go_to_the_dead_letter_list_and_the_service_goes_on(redis_server, replay_factory):
    replay = replay_factory()
    truth = insert_chunks(replay, 2)
    keys = replay.keys
    replay.redis.set(keys.chunk(9001), b"\x93garbage that is not a chunk")
    replay.redis.zadd(keys.order, {9001: 9001})
    replay.redis.xadd(keys.to_segment, {"id": 9001})
    replay.redis.xadd(keys.to_segment, {"chunk": "no id field"})
    truth.update(insert_chunks(replay, 2, seed=1))
    metrics = Metrics("prometheus")
    summary = service(redis_server, replay, metrics).run(max_seconds=30, stop_when_idle=True)

    assert summary["dead_letter"] == 2 and summary["chunks"] == 4
    records = [json.loads(r) for r in replay.redis.lrange(keys.prefix + "dead-letter", 0, -1)]
    by_chunk = {r["chunk_id"]: r["error"] for r in records}
    assert "ChunkDecodeError" in by_chunk["9001"]
    assert "no integer 'id'" in by_chunk[None]
    assert replay.redis.hget(keys.prefix + "segmenter-stats", "dead_letter") == b"2"
    assert metrics.value(m.SEGMENTER_SKIPPED_CHUNKS, reason="dead_letter") == 2
    assert replay.redis.get(keys.mask(9001)) is None and replay.stats().ready_chunks == 4
    assert set(int(i) for i in replay.redis.zrange(keys.ready, 0, -1)) == set(truth)


def test_chunks_evicted_before_segmentation_are_acknowledged_and_counted(redis_server, replay_factory):
    replay = replay_factory(capacity_chunks=3)
    truth = insert_chunks(replay, 7)
    summary = service(redis_server, replay).run(max_seconds=30, stop_when_idle=True)
    assert summary["evicted"] == 4 and summary["chunks"] == 3 and summary["dead_letter"] == 0
    assert set(int(i) for i in replay.redis.zrange(replay.keys.ready, 0, -1)) == set(sorted(truth)[-3:])
    assert replay.segment_queue("segmenter", "test").length() == 0


@pytest.mark.faults
def test_an_entry_that_keeps_failing_is_moved_aside_after_max_deliveries(redis_server, replay_factory):
    replay = replay_factory()
    (chunk_id,) = insert_chunks(replay, 1)
    stream = replay.keys.to_segment
    service(redis_server, replay)  # creates the group
    ((_, [(entry_id, _)]),) = replay.redis.xreadgroup("segmenter", "crashed-1", {stream: ">"})
    for name in ("crashed-2", "crashed-3"):  # two more instances took it and died
        replay.redis.xclaim(stream, "segmenter", name, 0, [entry_id])
    time.sleep(0.1)
    summary = service(redis_server, replay, claim_idle_ms=50, max_deliveries=3).run(max_seconds=30,
                                                                                    stop_when_idle=True)
    assert summary["dead_letter"] == 1 and summary["chunks"] == 0
    (record,) = [json.loads(r) for r in replay.redis.lrange(replay.keys.prefix + "dead-letter", 0, -1)]
    assert record["chunk_id"] == str(chunk_id) and "delivered 4 times" in record["error"]


@pytest.mark.faults
def test_cli_needs_a_replay_and_writes_its_config_without_the_password(redis_server, replay_factory, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("MASKLAM_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="no replay to serve"):
        segmenter_main(["--replay.run-name", "x"])
    replay = replay_factory()
    insert_chunks(replay, 3)
    out = tmp_path / "seg"
    assert segmenter_main(["--redis-url", redis_server.url, "--replay.run-name", replay.config.run_name,
                           "--stop-when-idle", "--max-seconds", "30", "--segmenter.poll-ms", "50",
                           "--out", str(out)]) == 0
    written = (out / "config.json").read_text()
    assert redis_server.password not in written
    config = json.loads(written)
    assert config["redis_url"] == "<redacted>" and config["segmenter"]["backend"] == "oracle"
    assert config["segmenter"]["poll_ms"] == 50 and config["segmenter"]["sam"]["sam_model_type"] == "vit_b"
    assert json.loads((out / "summary.json").read_text())["chunks"] == 3
    assert replay.stats().ready_chunks == 3


def test_placement_asks_for_a_gpu_and_the_segmenter_resource_only_when_the_cluster_has_them():
    assert placement_options({"CPU": 8}, 2) == {"num_cpus": 1, "max_concurrency": 2}
    gpu = placement_options({"CPU": 8, "GPU": 1, "segmenter": 1}, 2)
    assert gpu["num_gpus"] == 0.5 and gpu["resources"] == {"segmenter": 0.5}
    assert placement_options({"GPU": 4}, 2)["num_gpus"] == 1.0


def test_ray_actor_segments_a_run_and_can_be_stopped(redis_server, replay_factory):
    replay = replay_factory()
    insert_chunks(replay, 6)
    init_ray(None, logical_cpus=2)
    try:
        (actor,) = start_segmenters(1, SegmenterConfig(**FAST), redis_server.url, replay.config)
        ray.get(actor.summary.remote(), timeout=300)  # the actor is up (a loaded machine starts workers slowly)
        running = actor.run.remote()
        assert replay.wait_for(lambda s: s.ready_chunks == 6, timeout_s=120)
        ray.get(actor.stop.remote())
        summary = ray.get(running, timeout=30)
        assert summary["chunks"] == 6 and summary["backend"] == "oracle"
    finally:
        ray.shutdown()


def test_unknown_backend_is_refused(redis_server, replay_factory):
    with pytest.raises(ValueError, match="unknown segmenter backend"):
        service(redis_server, replay_factory(), backend="unknown")


def test_segmenter_metrics_follow_the_naming_rules_and_refuse_missing_labels():
    specs = [v for k, v in vars(m).items() if k.startswith("SEGMENTER_")]
    assert len(specs) == 11
    for spec in specs:
        assert spec.name.startswith("masklam_segmenter_") and not spec.name.endswith("_total")
        if spec.kind == "histogram":  # latencies in seconds, IoU as a 0..1 ratio
            assert spec.name.endswith(("_seconds", "_ratio"))
    with pytest.raises(ValueError, match="_total"):
        m.counter("things_total", "no")
    metrics = Metrics("prometheus")
    with pytest.raises(ValueError, match="needs labels"):
        metrics.inc(m.SEGMENTER_FRAMES, 3)
    metrics.inc(m.SEGMENTER_FRAMES, 3, backend="sam")
    assert metrics.value(m.SEGMENTER_FRAMES, backend="sam") == 3
