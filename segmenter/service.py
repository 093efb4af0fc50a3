"""The segmenter service: to-segment stream in, masks out, chunks marked ready.

Every instance of a run joins the replay's segment queue (`common.replay.segment_queue`)
as one consumer of one group, so instances share the work. One `step()`:
  1. every `claim_idle_ms / 2`, claims entries that have been pending longer than
     `claim_idle_ms` (their instance is presumed dead); an entry delivered more than
     `max_deliveries` times (a chunk that keeps killing its segmenter) is moved aside
     instead;
  2. reads new entries (blocking at most until the open batch is due) and fetches their
     blobs. A chunk evicted before segmentation (FIFO capacity) is acknowledged and
     counted; a malformed entry or blob goes to the dead-letter list;
  3. when the batch holds `batch_frames` frames or its first chunk has waited
     `max_wait_ms`, runs the backend on the whole chunks, applies the imperfection
     knobs, writes masks with `ReplayClient.mark_ready`, then acknowledges the entries.
Delivery is at-least-once: an entry is acknowledged only after its masks are written,
and `mark_ready` is idempotent, so a chunk redone after a crash or a claim is harmless.
Every replay operation waits out Redis outages. A malformed chunk (refused by the
codec, over `max_chunk_bytes`, under a key of the wrong type) is removed from the
replay and recorded by `ReplayClient.dead_letter`, then acknowledged. A chunk is never
marked ready without masks of its own shape.

`SegmenterService` is a plain class (tests drive it directly); `SegmenterActor` is the
same class as a Ray actor and `start_segmenters` places instances on the cluster:

    actors = start_segmenters(2, SegmenterConfig(backend="sam", ...), url, replay_config)
    runs = [a.run.remote() for a in actors]        # ... later: a.stop.remote()
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import ray
import torch

from common import metrics as m
from common.codec import Chunk, ChunkDecodeError, decode_chunk
from common.devices import resolve_device
from common.metrics import Metrics
from common.replay import Entry, ReplayClient, ReplayConfig
from segmenter.backends import make_backend
from segmenter.config import SegmenterConfig
from segmenter.imperfection import Imperfection
from segmenter.quality import mask_iou

GAUGE_INTERVAL_S = 1.0


@dataclass
class _Work:
    """A stream entry whose chunk is in the open batch."""

    entry_id: bytes
    chunk: Chunk


@dataclass
class SegmenterStats:
    """What one instance has done (the run-wide totals are in the `<run>:segmenter-stats` hash)."""

    consumer: str
    backend: str
    chunks: int = 0
    frames: int = 0
    batches: int = 0
    evicted: int = 0
    dead_letter: int = 0
    claimed: int = 0
    dropped_masks: int = 0
    busy_seconds: float = 0.0
    iou_sum: float = 0.0
    iou_frames: int = 0
    batch_seconds: deque = field(default_factory=lambda: deque(maxlen=2000))

    def summary(self) -> dict:
        """JSON-safe figures: counts, frames/s while busy, batch latency percentiles, mean IoU."""
        latencies = np.array(self.batch_seconds) if self.batch_seconds else np.zeros(1)
        figures = {k: v for k, v in asdict(self).items() if k not in ("batch_seconds", "iou_sum", "iou_frames")}
        figures.update(
            frames_per_busy_s=self.frames / self.busy_seconds if self.busy_seconds else 0.0,
            batch_p50_s=float(np.percentile(latencies, 50)), batch_p95_s=float(np.percentile(latencies, 95)),
            batch_p99_s=float(np.percentile(latencies, 99)),
            mean_iou=self.iou_sum / self.iou_frames if self.iou_frames else None)
        return figures


class SegmenterService:
    """One segmenter instance (see the module docstring for the protocol).

    `metrics` defaults to Ray's exporter inside Ray and a private prometheus registry
    elsewhere; its `backend` label is filled in when absent. `consumer` names this
    instance in the group (default: host, pid and a random suffix — unique per instance).
    """

    def __init__(self, config: SegmenterConfig, replay_url: str, replay_config: ReplayConfig,
                 metrics: Metrics | None = None, consumer: str | None = None):
        self.config = config
        self.metrics = metrics or Metrics.for_this_process()
        self.replay = ReplayClient(replay_url, replay_config, self.metrics)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.backend = make_backend(config, resolve_device(config.device))
        self.imperfection = Imperfection(config.imperfection, config.seed)
        self.metrics.constant_labels.setdefault("backend", self.backend.name)
        self.stats = SegmenterStats(self.consumer, self.backend.name)
        self._batch: list[_Work] = []
        self._batch_opened = 0.0
        self._frames_per_chunk = 33.0
        # look for stale entries twice per idle limit (at least every 10 s), so a dead
        # instance's entries are picked up soon after they pass `claim_idle_ms`
        self._claim_every_s = min(max(config.claim_idle_ms / 2000, 0.05), 10.0)
        self._last_claim = self._last_gauges = 0.0
        self._last_read_empty = False
        self._stop = threading.Event()
        self.queue = self.replay.segment_queue(config.group, self.consumer)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None, stop_when_idle: bool = False) -> dict:
        """Serve until `stop()`, `max_seconds`, or (with `stop_when_idle`) until the stream
        is empty — nothing waiting, nothing pending anywhere. Returns `summary()`."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.step()
            if stop_when_idle and self.idle():
                break
        self.flush()
        self._update_gauges()
        return self.summary()

    def stop(self) -> None:
        """Make `run` return after the current step, now and later (callable from another thread
        or Ray call)."""
        self._stop.set()

    def step(self) -> int:
        """Claim if due, read once, flush if the batch is due; returns frames marked ready."""
        now = time.monotonic()
        if now - self._last_claim >= self._claim_every_s:
            self._last_claim = now
            self._admit(self._claim())
        entries = self._read()
        self._last_read_empty = not entries
        self._admit(entries)
        done = self.flush() if self._batch_due() else 0
        if time.monotonic() - self._last_gauges >= GAUGE_INTERVAL_S:
            self._update_gauges()
        return done

    def idle(self) -> bool:
        """Nothing in hand, the last read found nothing, and no chunk is left on the stream."""
        return not self._batch and self._last_read_empty and self.queue.length() == 0

    def summary(self) -> dict:
        return {**self.stats.summary(), **self.backend.report()}

    def reset_stats(self) -> dict:
        """Start a new measurement window (e.g. after a student's training phase); returns the last one's summary."""
        summary = self.summary()
        self.stats = SegmenterStats(self.consumer, self.backend.name)
        return summary

    def close(self) -> None:
        """Leave the group if nothing is pending on this consumer (pending entries must stay claimable)."""
        self.queue.leave()
        self.replay.close()

    # -- reading -----------------------------------------------------------------------------
    def _read(self) -> list[Entry]:
        wanted_frames = self.config.batch_frames - sum(len(w.chunk.frames) for w in self._batch)
        count = max(1, int(np.ceil(wanted_frames / self._frames_per_chunk)))
        if self._batch:
            block_ms = int(self.config.max_wait_ms - 1000 * (time.monotonic() - self._batch_opened))
            if block_ms <= 0:
                return []
        else:
            block_ms = self.config.poll_ms
        return self.queue.read(count, block_ms)

    def _claim(self) -> list[Entry]:
        """Entries pending too long on other instances, now ours; poison entries moved aside."""
        entries = self.queue.claim(self.config.claim_idle_ms,
                                   count=max(1, int(self.config.batch_frames / self._frames_per_chunk)))
        if not entries:
            return []
        self.stats.claimed += len(entries)
        self.metrics.inc(m.SEGMENTER_CLAIMED_ENTRIES, len(entries))
        kept = []
        for entry in entries:
            if entry.deliveries > self.config.max_deliveries:
                self._dead_letter(entry.entry_id, entry.chunk_id_text, f"delivered {entry.deliveries} times "
                                  "without being finished: it may crash segmenters")
            else:
                kept.append(entry)
        return kept

    def _admit(self, entries: list[Entry]) -> None:
        """Fetch and decode the entries' chunks into the batch; evicted and malformed ones are settled."""
        if not entries:
            return
        in_batch = {w.entry_id for w in self._batch}  # our own entries can come back through a claim
        entries = [entry for entry in entries if entry.entry_id not in in_batch]
        blobs = iter(self.replay.get_chunk_blobs([e.chunk_id for e in entries if e.chunk_id is not None]))
        for entry in entries:
            entry_id, chunk_id = entry.entry_id, entry.chunk_id
            if chunk_id is None:
                self._dead_letter(entry_id, None, f"stream entry has no integer 'id' field: {entry.fields!r:.200}")
                continue
            blob = next(blobs)
            if blob is None:
                self._settle_evicted([entry_id])
                continue
            try:
                if isinstance(blob, ChunkDecodeError):
                    raise blob
                chunk = decode_chunk(blob, self.replay.config.max_chunk_bytes)
                if chunk.chunk_id != chunk_id:
                    raise ChunkDecodeError(f"blob stored under chunk id {chunk_id} carries chunk id {chunk.chunk_id}")
            except ChunkDecodeError as exc:
                self._dead_letter(entry_id, chunk_id, f"{type(exc).__name__}: {exc}",
                                  blob if isinstance(blob, bytes) else b"")
                continue
            if not self._batch:
                self._batch_opened = time.monotonic()
            self._batch.append(_Work(entry_id, chunk))
            self._frames_per_chunk = 0.9 * self._frames_per_chunk + 0.1 * len(chunk.frames)

    def _batch_due(self) -> bool:
        if not self._batch:
            return False
        frames = sum(len(w.chunk.frames) for w in self._batch)
        waited_ms = 1000 * (time.monotonic() - self._batch_opened)
        return frames >= self.config.batch_frames or waited_ms >= self.config.max_wait_ms

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> int:
        """Segment the open batch, write its masks, then acknowledge it; returns frames marked ready."""
        if not self._batch:
            return 0
        batch, self._batch = self._batch, []
        start = time.perf_counter()
        masks = self.backend.segment([w.chunk for w in batch])
        if len(masks) != len(batch):
            raise RuntimeError(f"backend {self.backend.name} returned {len(masks)} masks for {len(batch)} chunks")
        ready_frames, evicted, ages = 0, set(), []
        for work, chunk_masks in zip(batch, masks):
            chunk = work.chunk
            expected = chunk.frames.shape[:3]
            if chunk_masks.shape != expected or chunk_masks.dtype != np.uint8 or chunk_masks.max(initial=0) > 1:
                raise RuntimeError(f"backend {self.backend.name} returned masks {chunk_masks.shape} "
                                   f"{chunk_masks.dtype} for chunk {chunk.chunk_id}; expected uint8 {{0,1}} {expected}")
            served, dropped = self.imperfection.apply(chunk_masks)
            if not self.replay.mark_ready(chunk.chunk_id, served):
                evicted.add(work.entry_id)
                continue
            ready_frames += len(served)
            ages.append(time.time() - chunk.created)
            self._score(served, chunk.masks, dropped)
        done = [w.entry_id for w in batch if w.entry_id not in evicted]
        self.queue.acknowledge(done, {"chunks": len(done), "frames": ready_frames})
        self._settle_evicted(list(evicted))
        elapsed = time.perf_counter() - start
        self.stats.chunks += len(done)
        self.stats.frames += ready_frames
        self.stats.batches += 1
        self.stats.busy_seconds += elapsed
        self.stats.batch_seconds.append(elapsed)
        self.metrics.inc(m.SEGMENTER_CHUNKS, len(done))
        self.metrics.inc(m.SEGMENTER_FRAMES, ready_frames)
        self.metrics.observe(m.SEGMENTER_BATCH_SECONDS, elapsed)
        for age in ages:
            self.metrics.observe(m.SEGMENTER_CHUNK_AGE_SECONDS, age)
        if "student_teacher_iou" in (report := self.backend.report()):
            self.metrics.set(m.SEGMENTER_STUDENT_IOU, report["student_teacher_iou"])
        return ready_frames

    def _score(self, served: np.ndarray, truth: np.ndarray, dropped: np.ndarray) -> None:
        """IoU of the served masks against the chunk's ground truth (dropped frames carry no claim)."""
        self.stats.dropped_masks += int(dropped.sum())
        self.metrics.inc(m.SEGMENTER_DROPPED_MASKS, int(dropped.sum()))
        kept = ~dropped
        if kept.any():
            iou = mask_iou(served[kept], truth[kept])
            self.stats.iou_sum += float(iou.sum())
            self.stats.iou_frames += int(kept.sum())
            self.metrics.observe(m.SEGMENTER_MASK_IOU, float(iou.mean()))

    def _settle_evicted(self, entry_ids: list[bytes]) -> None:
        """Chunks evicted (FIFO capacity) before their masks were written: nothing to do but count."""
        if entry_ids:
            self.queue.acknowledge(entry_ids, {"evicted": len(entry_ids)})
            self.stats.evicted += len(entry_ids)
            self.metrics.inc(m.SEGMENTER_SKIPPED_CHUNKS, len(entry_ids), reason="evicted")

    def _dead_letter(self, entry_id: bytes, chunk_id: int | str | None, error: str, head: bytes = b"") -> None:
        """Move an entry aside: remove its chunk, record it in `<run>:dead-letter`, count, acknowledge."""
        self.replay.dead_letter(chunk_id, error, head, entry_id=entry_id.decode(), consumer=self.consumer,
                                source="segmenter")
        self.queue.acknowledge([entry_id], {"dead_letter": 1})
        self.stats.dead_letter += 1
        self.metrics.inc(m.SEGMENTER_SKIPPED_CHUNKS, 1, reason="dead_letter")

    def _update_gauges(self) -> None:
        self._last_gauges = time.monotonic()
        queued, pending = self.queue.backlog()
        self.metrics.set(m.SEGMENTER_QUEUE_ENTRIES, queued)
        self.metrics.set(m.SEGMENTER_PENDING_ENTRIES, pending)


SegmenterActor = ray.remote(SegmenterService)


def placement_options(cluster_resources: dict[str, float], count: int) -> dict:
    """Ray options for `count` segmenters: a share of the GPUs (and of the cluster's custom
    "segmenter" resource, which deploy/cluster.yaml gives the GPU node type) when there
    are any, one CPU otherwise. `max_concurrency=2` lets `stop`/`summary` run beside `run`."""
    options: dict = {"num_cpus": 1, "max_concurrency": 2}
    gpus = cluster_resources.get("GPU", 0)
    if gpus > 0:
        options["num_gpus"] = min(1.0, gpus / count)
    if cluster_resources.get("segmenter", 0) > 0:
        options["resources"] = {"segmenter": min(1.0, cluster_resources["segmenter"] / count)}
    return options


def start_segmenters(count: int, config: SegmenterConfig, replay_url: str, replay_config: ReplayConfig,
                     max_restarts: int = 5) -> list[ray.actor.ActorHandle]:
    """Start `count` segmenter actors (GPU when the cluster has one); call `.run.remote()` on each.

    A dead instance is restarted by Ray up to `max_restarts` times, and the calls it was
    serving (`run`) are resubmitted to the new one, which goes on serving; the dead one's
    pending entries are claimed after `claim_idle_ms`, by it or another instance.
    """
    options = placement_options(ray.cluster_resources(), count)
    return [SegmenterActor.options(**options, max_restarts=max_restarts, max_task_retries=-1).remote(
        config, replay_url, replay_config) for _ in range(count)]
