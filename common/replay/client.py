"""The Redis replay: chunks in, masked transition windows out, FIFO at capacity.

`ReplayClient` is the one door to a run's replay: actors insert, the segmenter takes
chunks from the segment queue and marks them ready with masks, the learner samples.
Behind it: the key layout (`keys`), the records beside each blob (`records`), the Lua
scripts that make every multi-key change atomic (`scripts`, `lua/`), the sampler
(`sampler`) and the to-segment queue (`segment_queue`).

An insert is one Lua script, so a chunk is stored whole or not at all; it first checks
whether its id is already stored, so an insert retried after a connection drop (the
script may have run before the reply was lost) stores it once. A chunk over capacity
is evicted oldest first. A chunk that fails a check when it is read (foreign,
truncated, oversized, wrong version or shape, non-binary masks) is removed, recorded in
the dead-letter list, counted in `dead_letters`, and the read goes on without it.

Every operation waits out Redis outages (`common.replay.outage`), and a new client
refuses a Redis that is open without a password on the network or whose memory cap is
too small (`common.replay.safety`), with a `ConfigError` that says what to fix.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

import numpy as np

from common.cli import ConfigError
from common.config import at_least, blame, in_range, writable
from common.codec import (MAX_BLOB_BYTES, Chunk, ChunkDecodeError, ChunkTooLarge, check_blob_size, decode_chunk,
                          encode_chunk)
from common.metrics import Metrics
from common.replay.connection import connect
from common.replay.keys import ReplayKeys
from common.replay.outage import OutageGuard, RedisUnavailable
from common.replay.records import ChunkInfo, encode_step_arrays
from common.replay.safety import URL_FIX, check_access, check_memory, redact_url
from common.replay.sampler import Sampler
from common.replay.scripts import ReplayScripts
from common.replay.segment_queue import SegmentQueue
from common.windows import Windows

log = logging.getLogger("masklam.replay")
R = TypeVar("R")

# Chunks listed per round trip when reading the newest ready chunks.
NEWEST_PAGE = 64


@dataclass
class ReplayConfig:
    """Where the replay lives and how much it may hold."""

    run_name: str = field(default="masklam", metadata={"help": "key prefix of this run in Redis"})
    capacity_chunks: int = field(default=20_000, metadata={"help": "FIFO capacity in chunks"})
    capacity_bytes: int = field(default=4 * 2**30, metadata={"help": "FIFO capacity in bytes of stored data"})
    max_chunk_bytes: int = field(default=64 * 2**20, metadata={
        "help": "largest chunk blob written or read; bigger ones are refused"})
    outage_deadline_s: float = field(default=300.0, metadata={
        "help": "how long replay operations wait (with backoff) for an unreachable Redis before failing"})
    connect_timeout_s: float = field(default=15.0, metadata={
        "help": "how long the first contact waits for Redis (a wrong address fails after this)"})
    allow_insecure_redis: bool = field(default=False, metadata={
        "help": "use a Redis that answers without a password on a non-loopback address"})
    redis_persist_dir: str | None = field(default=None, metadata={
        "help": "embedded Redis only: keep its append-only file here, so a restarted run keeps its replay"})
    dead_letter_cap: int = field(default=10_000, metadata={"help": "records kept in <run>:dead-letter"})

    def validate(self) -> None:
        with blame("run_name", "pass a name such as masklam-2"):
            ReplayKeys(self.run_name)
        at_least(self, 1, "capacity_chunks", "capacity_bytes", "dead_letter_cap")
        in_range(self, "max_chunk_bytes", 1, MAX_BLOB_BYTES)
        at_least(self, 0, "outage_deadline_s", "connect_timeout_s")
        writable(self, "redis_persist_dir")


@dataclass
class ReplayStats:
    """Counters of one run's replay: cumulative, except those named `stored` and
    `unsegmented_chunks`, which count what the replay holds now."""

    inserted_chunks: int = 0
    inserted_steps: int = 0
    inserted_bytes: int = 0
    ready_chunks: int = 0
    ready_steps: int = 0
    sampled_steps: int = 0
    evicted_chunks: int = 0
    stored_chunks: int = 0
    stored_steps: int = 0
    stored_bytes: int = 0
    ready_chunks_stored: int = 0
    dead_letters: int = 0
    insert_wait_s: float = 0.0
    sample_wait_s: float = 0.0
    unsegmented_chunks: int = 0  # on the to-segment queue: not yet finished by a segmenter


def _waits_out_outages(method: Callable[..., R]) -> Callable[..., R]:
    """Run a ReplayClient method through its OutageGuard (the method must be safe to repeat)."""
    @functools.wraps(method)
    def guarded(self: "ReplayClient", *args, **kwargs) -> R:
        return self.guard.call(method, self, *args, **kwargs)
    return guarded


class ReplayClient:
    """Insert chunks, mark them ready with masks, sample transition windows.

    Used by actors (insert), the segmenter (`segment_queue`, mark_ready) and the learner
    (sample, newest_ready); every process makes its own client from the same URL and run
    name. Construction contacts Redis (waiting up to `connect_timeout_s`) and checks
    access and memory; `metrics` receives the outage counters (default: chosen for this
    process on the first outage).
    """

    def __init__(self, url: str, config: ReplayConfig | None = None, metrics: Metrics | None = None):
        self.config = config or ReplayConfig()  # checked where it was parsed (ReplayConfig.validate)
        self.keys = ReplayKeys(self.config.run_name)
        where = redact_url(url)
        check_access(url, self.config.allow_insecure_redis)
        self.redis = connect(url)
        self.guard = OutageGuard(where, self.config.outage_deadline_s, metrics)
        try:
            self.guard.first_contact(check_memory, self.redis, self.config.capacity_bytes, where,
                                     deadline_s=self.config.connect_timeout_s)
        except RedisUnavailable as exc:
            raise ConfigError(str(exc), f"start it, or {URL_FIX}") from None
        self.scripts = ReplayScripts(self.redis)
        self.sampler = Sampler(self.redis, self.keys, self.scripts.pick, self.config.max_chunk_bytes,
                               cache_size=self.config.capacity_chunks, refuse=self._refused_by_sampler)

    def call(self, op: Callable[..., R], *args, **kwargs) -> R:
        """Run one Redis operation of this run (safe to repeat), waiting out outages."""
        return self.guard.call(op, *args, **kwargs)

    def segment_queue(self, group: str, consumer: str) -> SegmentQueue:
        """Join the to-segment queue's consumer `group` as `consumer` (see `segment_queue`)."""
        return SegmentQueue(self.redis, self.keys, self.guard, group, consumer)

    def close(self) -> None:
        self.redis.close()

    # -- writing ---------------------------------------------------------------------------
    def insert(self, chunk: Chunk, segment: bool = False) -> int:
        """Store a chunk atomically and return its id.

        With `segment=False` the chunk's own ground-truth masks are used and it is ready
        at once; with `segment=True` it waits on the to-segment queue for the segmenter.
        Exactly once through outages: the id is drawn first, and the store script does
        nothing if that id is already stored. (A chunk evicted between a lost reply and
        the retry would be stored again; FIFO eviction takes the oldest, this is the newest.)
        """
        k = self.keys
        chunk.chunk_id = int(self.guard.call(self.redis.incr, k.next_id))
        blob, layout = encode_chunk(chunk)
        check_blob_size(len(blob), self.config.max_chunk_bytes)
        h, w, _ = layout.frame_shape
        meta = encode_step_arrays(chunk)
        info = ChunkInfo(chunk.num_steps, layout.offsets["frames"], h, w).encode()
        size = len(blob) + len(meta) + len(info) + h * w * (chunk.num_steps + 1)
        masks = b"" if segment else np.ascontiguousarray(chunk.masks).tobytes()
        cid = chunk.chunk_id
        stored = self.guard.call(
            self.scripts.insert,
            keys=[k.chunk(cid), k.mask(cid), k.meta, k.info, k.size, k.order, k.ready, k.stats, k.to_segment,
                  k.frame_shape, k.by_actor],
            args=[cid, blob, meta, info, size, chunk.num_steps, int(segment), masks, f"{h}:{w}", chunk.actor_id])
        if isinstance(stored, bytes):
            raise ChunkDecodeError(f"chunk frames are {h}x{w}, this run's are {stored.decode().replace(':', 'x')}; "
                                   "one run must use one frame size (start a new --replay.run-name)")
        self.guard.call(self._evict_over_capacity)
        return cid

    @_waits_out_outages
    def mark_ready(self, chunk_id: int, masks: np.ndarray) -> bool:
        """Attach masks to a stored chunk and make it sampleable; False if it was evicted meanwhile."""
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (T+1, H, W) uint8, got shape {masks.shape}")
        k = self.keys
        return bool(self.scripts.mark_ready(keys=[k.order, k.ready, k.mask(chunk_id), k.stats],
                                            args=[chunk_id, masks.tobytes(), masks.shape[0] - 1]))

    def _evict_over_capacity(self) -> int:
        k = self.keys
        return int(self.scripts.evict(keys=k.removal(), args=[k.prefix, self.config.capacity_chunks,
                                                              self.config.capacity_bytes]))

    def dead_letter(self, chunk_id: int | str | bytes | None, error: str, head: bytes = b"", **context: str) -> None:
        """Refuse a malformed chunk or stream entry: remove the chunk (if any), keep a JSON
        record (the error, the first bytes of the blob, `context`) in the capped
        `<run>:dead-letter` list, and count it in `dead_letters`."""
        self.guard.call(self._store_dead_letter, chunk_id, error, head, context)

    def _refused_by_sampler(self, chunk_id: bytes, error: str, head: bytes) -> None:
        # unguarded: the sampler runs inside `sample`'s guard
        self._store_dead_letter(chunk_id, error, head, {"source": "sampler"})

    def _store_dead_letter(self, chunk_id: int | str | bytes | None, error: str, head: bytes, context: dict) -> None:
        if isinstance(chunk_id, bytes):
            chunk_id = chunk_id.decode(errors="replace")
        record = json.dumps({"chunk_id": None if chunk_id is None else str(chunk_id), "error": error[:1000],
                             "head": head[:64].hex(), "time": time.time(), **context})
        self.scripts.dead_letter(keys=[*self.keys.removal(), self.keys.dead_letter],
                                 args=[self.keys.prefix, "" if chunk_id is None else chunk_id, record,
                                       self.config.dead_letter_cap])
        log.warning("refused chunk %s of run %r (%s); moved to %s", chunk_id, self.config.run_name, error[:300],
                    self.keys.dead_letter)

    # -- reading ---------------------------------------------------------------------------
    def sample(self, batch_size: int, window: int, rng: np.random.Generator) -> Windows:
        """Sample `batch_size` windows of `window` consecutive frames, uniformly over ready chunks.

        Two round trips (see `common.replay.sampler`). Chunks evicted in between are
        redrawn; malformed ones are dead-lettered and redrawn. Raises RuntimeError if no
        chunk is long enough.
        """
        return self.guard.call(self.sampler.sample, batch_size, window, rng)

    def newest_ready(self, max_steps: int) -> list[Chunk]:
        """The newest ready chunks holding up to `max_steps` transitions, oldest first, each with
        the masks the segmenter served (not the ground truth it carries). A chunk that fails a
        check is dead-lettered and the read goes on without it."""
        chunks: list[Chunk] = []
        steps, below = 0, "+inf"
        while steps < max_steps:
            # paged by id (ids are the scores), so chunks made ready or refused meanwhile shift nothing
            ids = [int(i) for i in self.guard.call(self.redis.zrevrangebyscore, self.keys.ready, below, "-inf",
                                                   start=0, num=NEWEST_PAGE)]
            if not ids:
                break
            below = f"({ids[-1]}"
            blobs = self.get_chunk_blobs(ids)
            masks = self.guard.call(self.redis.mget, [self.keys.mask(i) for i in ids])
            for chunk_id, blob, mask in zip(ids, blobs, masks):
                if blob is None or mask is None:
                    continue  # evicted since it was listed
                try:
                    chunk = self._ready_chunk(chunk_id, blob, mask)
                except ChunkDecodeError as exc:
                    head = blob if isinstance(blob, bytes) else b""
                    self.dead_letter(chunk_id, f"{type(exc).__name__}: {exc}", head, source="newest_ready")
                    continue
                chunks.append(chunk)
                steps += chunk.num_steps
                if steps >= max_steps:
                    break
        return chunks[::-1]

    def _ready_chunk(self, chunk_id: int, blob: bytes | ChunkDecodeError, mask: bytes) -> Chunk:
        """The chunk stored under `chunk_id` with its served masks; ChunkDecodeError if either is malformed."""
        if isinstance(blob, ChunkDecodeError):
            raise blob
        chunk = decode_chunk(blob, self.config.max_chunk_bytes)
        if chunk.chunk_id != chunk_id:
            raise ChunkDecodeError(f"blob stored under chunk id {chunk_id} carries chunk id {chunk.chunk_id}")
        masks = np.frombuffer(mask, np.uint8)
        if masks.size != chunk.masks.size:
            raise ChunkDecodeError(f"masks are {masks.size} bytes; {chunk.masks.shape[0]} frames of "
                                   f"{chunk.masks.shape[1]}x{chunk.masks.shape[2]} need {chunk.masks.size}")
        if masks.max(initial=0) > 1:
            raise ChunkDecodeError("masks are not binary (0 = background, 1 = agent)")
        chunk.masks = masks.reshape(chunk.masks.shape)
        return chunk

    @_waits_out_outages
    def chunk_ids_after(self, last_id: int, limit: int = 1000) -> list[int]:
        """Ids of stored chunks newer than `last_id`, oldest first (to drain a run to disk)."""
        ids = self.redis.zrangebyscore(self.keys.order, f"({last_id}", "+inf", start=0, num=limit)
        return [int(i) for i in ids]

    @_waits_out_outages
    def get_chunk_blobs(self, chunk_ids: list[int]) -> list[bytes | None | ChunkDecodeError]:
        """The stored blobs of some chunks, in one round trip: None for a chunk that is gone,
        a ChunkDecodeError (not raised) for one over `max_chunk_bytes` or under a key of the
        wrong type. An oversized blob is never transferred."""
        pipe = self.redis.pipeline(transaction=False)
        for chunk_id in chunk_ids:
            self.scripts.get_bounded(keys=[self.keys.chunk(chunk_id)], args=[self.config.max_chunk_bytes],
                                     client=pipe)
        results: list[bytes | None | ChunkDecodeError] = []
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, int):
                try:
                    check_blob_size(reply, self.config.max_chunk_bytes)
                except ChunkTooLarge as exc:
                    reply = exc
            elif isinstance(reply, Exception):
                reply = ChunkDecodeError(f"the chunk key holds the wrong type ({reply})")
            results.append(reply)
        return results

    def get_chunk_blob(self, chunk_id: int) -> bytes | None:
        """The whole stored blob of one chunk (None if gone); raises ChunkDecodeError if refused."""
        (blob,) = self.get_chunk_blobs([chunk_id])
        if isinstance(blob, ChunkDecodeError):
            raise blob
        return blob

    @_waits_out_outages
    def stats(self) -> ReplayStats:
        """The counters, the chunks stored and those waiting for the segmenter, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats)
        pipe.zcard(self.keys.order)
        pipe.xlen(self.keys.to_segment)
        counters, stored, unsegmented = pipe.execute()
        raw = {k.decode(): v for k, v in counters.items()}
        values = {f.name: type(f.default)(float(raw[f.name])) for f in fields(ReplayStats) if f.name in raw}
        return ReplayStats(**values, stored_chunks=int(stored), unsegmented_chunks=int(unsegmented))

    @_waits_out_outages
    def stored_by_actor(self) -> dict[int, tuple[int, int]]:
        """(chunks, steps) each actor id has stored in this run (counted by the insert script itself)."""
        counts: dict[int, list[int]] = {}
        for name, value in self.redis.hgetall(self.keys.by_actor).items():
            actor, kind = name.decode().split(":")
            counts.setdefault(int(actor), [0, 0])[1 if kind == "steps" else 0] = int(value)
        return {actor: (chunks, steps) for actor, (chunks, steps) in counts.items()}

    @_waits_out_outages
    def add_wait(self, name: str, seconds: float) -> None:
        """Accumulate waiting time reported by the rate limiter (insert_wait_s / sample_wait_s)."""
        self.redis.hincrbyfloat(self.keys.stats, name, seconds)

    @_waits_out_outages
    def clear(self) -> None:
        """Delete every key of this run (for tests and fresh starts)."""
        keys = list(self.redis.scan_iter(match=self.keys.prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i:i + 1000])
        self.sampler.clear_cache()

    def wait_for(self, predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Poll `predicate(stats)` until true or timeout; True if it became true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.stats()):
                return True
            time.sleep(poll_s)
        return predicate(self.stats())
