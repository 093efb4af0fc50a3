"""The Redis replay: chunks in, masked transition windows out, FIFO at capacity.

Keys, all under one run prefix so runs never collide:
    <run>:chunk:<id>   the chunk blob (common.codec)
    <run>:mask:<id>    the chunk's masks once segmented: raw uint8 (T+1, H, W)
    <run>:meta         hash id -> msgpack of the chunk's small per-step arrays (actions, ...)
    <run>:info         hash id -> "T:frames_offset:H:W", where a window's bytes sit
    <run>:size         hash id -> bytes the chunk holds (blob + masks + meta)
    <run>:order        zset of every stored chunk by id (FIFO eviction order)
    <run>:ready        zset of chunks with masks (sampled uniformly)
    <run>:to-segment   stream of chunk ids waiting for the segmenter
    <run>:dead-letter  capped list of entries the segmenter moved aside (JSON records)
    <run>:segmenter-stats  hash of the segmenter's run-wide counters
    <run>:stats        hash of counters (see `ReplayStats`)
    <run>:next-id      chunk id counter

An insert is one MULTI/EXEC transaction, so a chunk is stored whole or not at all.
Sampling picks chunks uniformly from `ready` and cuts the requested window of frames
and masks out of each blob with GETRANGE, so a batch never moves whole chunks over
the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import msgpack
import numpy as np
import redis

from common.codec import Chunk, ChunkDecodeError, encode_chunk

# Small per-step arrays copied into <run>:meta so a sample needs no second round trip.
STEP_ARRAYS = ("actions", "rewards", "terminated", "truncated", "bg_velocity")

_PICK_SCRIPT = """
local out = {}
if redis.call('ZCARD', KEYS[1]) == 0 then return out end
local window = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
for attempt = 1, 16 do
  local need = wanted - #out / 2
  if need == 0 then break end
  for _, id in ipairs(redis.call('ZRANDMEMBER', KEYS[1], -need)) do
    local info = redis.call('HGET', KEYS[2], id)
    if info and tonumber(string.match(info, '^(%d+):')) + 1 >= window then
      table.insert(out, id)
      table.insert(out, info)
    end
  end
end
return out
"""

_EVICT_SCRIPT = """
local prefix = ARGV[1]
local max_chunks = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local evicted = 0
while redis.call('ZCARD', KEYS[1]) > 0 do
  local stored = redis.call('ZCARD', KEYS[1])
  local bytes = tonumber(redis.call('HGET', KEYS[4], 'stored_bytes') or '0')
  if stored <= max_chunks and bytes <= max_bytes then break end
  local id = redis.call('ZPOPMIN', KEYS[1])[1]
  local size = tonumber(redis.call('HGET', KEYS[5], id) or '0')
  local info = redis.call('HGET', KEYS[6], id)
  local steps = 0
  if info then steps = tonumber(string.match(info, '^(%d+):')) end
  redis.call('DEL', prefix .. 'chunk:' .. id, prefix .. 'mask:' .. id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HINCRBY', KEYS[4], 'ready_chunks_stored', -1)
  end
  redis.call('HINCRBY', KEYS[4], 'stored_bytes', -size)
  redis.call('HINCRBY', KEYS[4], 'stored_steps', -steps)
  redis.call('HINCRBY', KEYS[4], 'evicted_chunks', 1)
  evicted = evicted + 1
end
return evicted
"""

_MARK_READY_SCRIPT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 1 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'ready_chunks', 1)
redis.call('HINCRBY', KEYS[4], 'ready_chunks_stored', 1)
redis.call('HINCRBY', KEYS[4], 'ready_steps', tonumber(ARGV[3]))
return 1
"""


@dataclass
class ReplayConfig:
    """Where the replay lives and how much it may hold."""

    run_name: str = field(default="masklam", metadata={"help": "key prefix of this run in Redis"})
    capacity_chunks: int = field(default=20_000, metadata={"help": "FIFO capacity in chunks"})
    capacity_bytes: int = field(default=4 * 2**30, metadata={"help": "FIFO capacity in bytes of stored data"})


@dataclass
class ReplayStats:
    """Counters of one run's replay (cumulative unless named `stored`)."""

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
    insert_wait_s: float = 0.0
    sample_wait_s: float = 0.0


@dataclass
class TransitionWindows:
    """`window` consecutive frames per sample and the `window - 1` steps between them."""

    frames: np.ndarray  # uint8 (B, window, H, W, 3)
    masks: np.ndarray  # uint8 (B, window, H, W)
    actions: np.ndarray  # float32 (B, window - 1, A)
    rewards: np.ndarray  # float32 (B, window - 1)
    terminated: np.ndarray  # bool (B, window - 1)
    truncated: np.ndarray  # bool (B, window - 1)
    bg_velocity: np.ndarray  # float32 (B, window - 1, 2)
    chunk_ids: np.ndarray  # int64 (B,)
    starts: np.ndarray  # int64 (B,), index of the first frame inside its chunk


@dataclass(frozen=True)
class _ChunkInfo:
    """Where a chunk's frames sit: the `<run>:info` record "T:frames_offset:H:W"."""

    steps: int
    frames_offset: int
    height: int
    width: int

    def encode(self) -> str:
        return f"{self.steps}:{self.frames_offset}:{self.height}:{self.width}"

    @classmethod
    def parse(cls, raw: bytes) -> "_ChunkInfo":
        try:
            return cls(*(int(v) for v in raw.split(b":")))
        except (TypeError, ValueError) as exc:
            raise ChunkDecodeError(f"replay info record {raw!r:.60} is malformed; expected T:offset:H:W") from exc


class ReplayKeys:
    """Key names of one run."""

    def __init__(self, run_name: str):
        if not run_name or any(c in run_name for c in " :*?[]"):
            raise ValueError(f"run name {run_name!r} must be non-empty without spaces, ':' or glob characters")
        self.prefix = f"{run_name}:"
        p = self.prefix
        self.meta, self.size, self.info = p + "meta", p + "size", p + "info"
        self.order, self.ready, self.stats = p + "order", p + "ready", p + "stats"
        self.to_segment, self.next_id = p + "to-segment", p + "next-id"
        self.dead_letter, self.segmenter_stats = p + "dead-letter", p + "segmenter-stats"

    def chunk(self, chunk_id: int | str) -> str:
        return f"{self.prefix}chunk:{chunk_id}"

    def mask(self, chunk_id: int | str) -> str:
        return f"{self.prefix}mask:{chunk_id}"


def connect(url: str) -> redis.Redis:
    """A binary-safe client for a redis:// URL (credentials come in the URL, never from code)."""
    return redis.Redis.from_url(url, decode_responses=False, socket_keepalive=True, health_check_interval=30)


class ReplayClient:
    """Insert chunks, mark them ready with masks, sample transition windows.

    Used by actors (insert), the segmenter (mark_ready) and the learner (sample); every
    process makes its own client from the same URL and run name.
    """

    def __init__(self, url: str, config: ReplayConfig | None = None):
        self.config = config or ReplayConfig()
        self.keys = ReplayKeys(self.config.run_name)
        self.redis = connect(url)
        self._pick = self.redis.register_script(_PICK_SCRIPT)
        self._evict = self.redis.register_script(_EVICT_SCRIPT)
        self._mark_ready = self.redis.register_script(_MARK_READY_SCRIPT)
        self._meta_cache: dict[bytes, dict[str, np.ndarray]] = {}

    # -- writing ---------------------------------------------------------------------------
    def insert(self, chunk: Chunk, segment: bool = False) -> int:
        """Store a chunk atomically and return its id.

        With `segment=False` the chunk's own ground-truth masks are used and it is ready
        at once; with `segment=True` it waits on the to-segment stream for the segmenter.
        """
        chunk.chunk_id = int(self.redis.incr(self.keys.next_id))
        blob, layout = encode_chunk(chunk)
        h, w, _ = layout.frame_shape
        meta = msgpack.packb({name: [getattr(chunk, name).dtype.name, list(getattr(chunk, name).shape),
                                     getattr(chunk, name).tobytes()] for name in STEP_ARRAYS})
        info = _ChunkInfo(chunk.num_steps, layout.offsets["frames"], h, w).encode()
        size = len(blob) + len(meta) + len(info) + h * w * (chunk.num_steps + 1)
        cid, k = chunk.chunk_id, self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(k.chunk(cid), blob)
        pipe.hset(k.meta, cid, meta)
        pipe.hset(k.info, cid, info)
        pipe.hset(k.size, cid, size)
        pipe.zadd(k.order, {cid: cid})
        for name, value in (("inserted_chunks", 1), ("inserted_steps", chunk.num_steps), ("inserted_bytes", size),
                            ("stored_bytes", size), ("stored_steps", chunk.num_steps)):
            pipe.hincrby(k.stats, name, value)
        if segment:
            pipe.xadd(k.to_segment, {"id": cid})
        else:
            pipe.set(k.mask(cid), np.ascontiguousarray(chunk.masks).tobytes())
            pipe.zadd(k.ready, {cid: cid})
            for name, value in (("ready_chunks", 1), ("ready_chunks_stored", 1), ("ready_steps", chunk.num_steps)):
                pipe.hincrby(k.stats, name, value)
        pipe.execute()
        self._evict_over_capacity()
        return cid

    def mark_ready(self, chunk_id: int, masks: np.ndarray) -> bool:
        """Attach masks to a stored chunk and make it sampleable; False if it was evicted meanwhile."""
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (T+1, H, W) uint8, got shape {masks.shape}")
        k = self.keys
        return bool(self._mark_ready(keys=[k.order, k.ready, k.mask(chunk_id), k.stats],
                                     args=[chunk_id, masks.tobytes(), masks.shape[0] - 1]))

    def _evict_over_capacity(self) -> int:
        k = self.keys
        return int(self._evict(keys=[k.order, k.ready, k.meta, k.stats, k.size, k.info],
                               args=[k.prefix, self.config.capacity_chunks, self.config.capacity_bytes]))

    # -- reading ---------------------------------------------------------------------------
    def sample(self, batch_size: int, window: int, rng: np.random.Generator) -> TransitionWindows:
        """Sample `batch_size` windows of `window` consecutive frames, uniformly over ready chunks.

        Two round trips: a script picks chunks (skipping those shorter than the window),
        then one pipeline cuts each window out with GETRANGE. Chunks evicted in between
        come back empty and are redrawn. Raises RuntimeError if no chunk is long enough.
        """
        if window < 2:
            raise ValueError("window must hold at least two frames (one transition)")
        k = self.keys
        rows: list[tuple] = []
        for _ in range(20):
            need = batch_size - len(rows)
            if need == 0:
                break
            picked = self._pick(keys=[k.ready, k.info], args=[window, need])
            ids, infos = picked[0::2], [_ChunkInfo.parse(raw) for raw in picked[1::2]]
            starts = [int(u * (info.steps + 2 - window)) for u, info in zip(rng.random(len(ids)), infos)]
            pipe = self.redis.pipeline(transaction=False)
            for cid, info, start in zip(ids, infos, starts):
                frame_bytes, mask_bytes = info.height * info.width * 3, info.height * info.width
                first = info.frames_offset + start * frame_bytes
                pipe.getrange(k.chunk(cid.decode()), first, first + window * frame_bytes - 1)
                pipe.getrange(k.mask(cid.decode()), start * mask_bytes, (start + window) * mask_bytes - 1)
            uncached = [cid for cid in dict.fromkeys(ids) if cid not in self._meta_cache]
            if uncached:
                pipe.hmget(k.meta, uncached)
            replies = pipe.execute()
            for cid, meta in zip(uncached, replies[-1] if uncached else []):
                if meta is not None:
                    self._cache_meta(cid, meta)
            for i, (cid, info, start) in enumerate(zip(ids, infos, starts)):
                frames, masks = replies[2 * i], replies[2 * i + 1]
                complete = len(frames) == window * info.height * info.width * 3 and len(masks) * 3 == len(frames)
                if complete and cid in self._meta_cache:
                    rows.append((cid, start, frames, masks, info))
            if not ids:
                break
        if len(rows) < batch_size:
            raise RuntimeError(f"the replay has no ready chunk with at least {window} frames; "
                               "collect more data or lower the window")
        self.redis.hincrby(k.stats, "sampled_steps", batch_size)
        return self._assemble(rows, window)

    def _assemble(self, rows: list[tuple], window: int) -> TransitionWindows:
        starts = np.array([row[1] for row in rows], dtype=np.int64)
        h, w = rows[0][4].height, rows[0][4].width
        if any((row[4].height, row[4].width) != (h, w) for row in rows):
            raise ChunkDecodeError("sampled chunks have different frame sizes; one run must use one frame size")
        frames = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(len(rows), window, h, w, 3)
        masks = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.uint8).reshape(len(rows), window, h, w)
        metas = [self._meta_cache[row[0]] for row in rows]
        steps = {name: np.stack([m[name][s:s + window - 1] for m, s in zip(metas, starts)]) for name in STEP_ARRAYS}
        return TransitionWindows(frames=frames, masks=masks, chunk_ids=np.array([int(r[0]) for r in rows]),
                                 starts=starts, **steps)

    def _cache_meta(self, chunk_id: bytes, meta: bytes) -> None:
        """Decode a chunk's small per-step arrays once; they never change while it is stored."""
        try:
            raw = msgpack.unpackb(meta, raw=False, max_ext_len=0)
            decoded = {name: np.frombuffer(raw[name][2], dtype=np.dtype(raw[name][0])).reshape(raw[name][1])
                       for name in STEP_ARRAYS}
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ChunkDecodeError(f"replay meta of chunk {chunk_id!r} is malformed ({exc})") from exc
        if len(self._meta_cache) >= self.config.capacity_chunks:
            self._meta_cache.pop(next(iter(self._meta_cache)))
        self._meta_cache[chunk_id] = decoded

    def chunk_ids_after(self, last_id: int, limit: int = 1000) -> list[int]:
        """Ids of stored chunks newer than `last_id`, oldest first (to drain a run to disk)."""
        ids = self.redis.zrangebyscore(self.keys.order, f"({last_id}", "+inf", start=0, num=limit)
        return [int(i) for i in ids]

    def get_chunk_blob(self, chunk_id: int) -> bytes | None:
        """The whole stored blob of one chunk (for the segmenter and datasets)."""
        return self.redis.get(self.keys.chunk(chunk_id))

    def stats(self) -> ReplayStats:
        raw = {k.decode(): v for k, v in self.redis.hgetall(self.keys.stats).items()}
        values = {f.name: type(f.default)(float(raw[f.name])) for f in fields(ReplayStats) if f.name in raw}
        return ReplayStats(**values, stored_chunks=int(self.redis.zcard(self.keys.order)))

    def add_wait(self, name: str, seconds: float) -> None:
        """Accumulate waiting time reported by the rate limiter (insert_wait_s / sample_wait_s)."""
        self.redis.hincrbyfloat(self.keys.stats, name, seconds)

    def clear(self) -> None:
        """Delete every key of this run (for tests and fresh starts)."""
        keys = list(self.redis.scan_iter(match=self.keys.prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i:i + 1000])
        self._meta_cache.clear()

    def wait_for(self, predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Poll `predicate(stats)` until true or timeout; True if it became true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.stats()):
                return True
            time.sleep(poll_s)
        return predicate(self.stats())
