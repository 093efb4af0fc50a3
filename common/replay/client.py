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
    <run>:dead-letter  capped list of refused chunks and stream entries (JSON records)
    <run>:segmenter-stats  hash of the segmenter's run-wide counters
    <run>:stats        hash of counters (see `ReplayStats`)
    <run>:next-id      chunk id counter
    <run>:frame-shape  "H:W" of the run's frames (set by the first insert; one run, one size)
    <run>:by-actor     hash "<actor id>:chunks" / "<actor id>:steps" -> what each actor stored
                       (written by the insert script, so a crashed actor's count is never lost)
    <run>:weights      the latest published policy weights (common.weights.WeightsChannel)
    <run>:weights-version  their version

An insert is one Lua script, atomic like MULTI/EXEC, so a chunk is stored whole or not
at all; it first checks whether its id is already stored, so an insert retried after a
connection drop (the script may have run before the reply was lost) stores it once.
Sampling picks chunks uniformly from `ready` and cuts the requested window of frames
and masks out of each blob with GETRANGE, so a batch never moves whole chunks over
the network. The first time a chunk is sampled its header, sizes, masks and step
arrays are checked against its info record; a chunk that fails (foreign, truncated,
oversized, wrong version or shape, non-binary masks) is removed, recorded in the
dead-letter list, counted in `dead_letters`, and the batch is drawn from the others.

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

import msgpack
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.cli import ConfigError
from common.codec import (ARRAY_SPECS, MAX_BLOB_BYTES, MAX_HEADER_BYTES, Chunk, ChunkDecodeError, ChunkTooLarge,
                          check_blob_size, decode_layout, encode_chunk)
from common.metrics import Metrics
from common.replay.outage import OutageGuard, RedisUnavailable
from common.replay.safety import URL_FIX, check_access, check_memory, redact_url

log = logging.getLogger("masklam.replay")
R = TypeVar("R")

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
    -- a missing or malformed info record goes to the client, which refuses the chunk
    local info = redis.call('HGET', KEYS[2], id) or ''
    local steps = tonumber(string.match(info, '^(%d+):') or '')
    if steps == nil or steps + 1 >= window then
      table.insert(out, id)
      table.insert(out, info)
    end
  end
end
return out
"""

_INSERT_SCRIPT = """
if redis.call('ZSCORE', KEYS[6], ARGV[1]) then return 0 end
local shape = redis.call('GET', KEYS[10])
if not shape then
  redis.call('SET', KEYS[10], ARGV[9])
elseif shape ~= ARGV[9] then
  return shape
end
local size, steps = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[1], size)
redis.call('ZADD', KEYS[6], ARGV[1], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'inserted_chunks', 1)
redis.call('HINCRBY', KEYS[8], 'inserted_steps', steps)
redis.call('HINCRBY', KEYS[8], 'inserted_bytes', size)
redis.call('HINCRBY', KEYS[8], 'stored_bytes', size)
redis.call('HINCRBY', KEYS[8], 'stored_steps', steps)
redis.call('HINCRBY', KEYS[11], ARGV[10] .. ':chunks', 1)
redis.call('HINCRBY', KEYS[11], ARGV[10] .. ':steps', steps)
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[9], '*', 'id', ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[7], ARGV[1], ARGV[1])
  redis.call('HINCRBY', KEYS[8], 'ready_chunks', 1)
  redis.call('HINCRBY', KEYS[8], 'ready_chunks_stored', 1)
  redis.call('HINCRBY', KEYS[8], 'ready_steps', steps)
end
return 1
"""

# Removes everything of chunk `id` but its place in the order zset (KEYS: order, ready,
# meta, stats, size, info). Tolerates malformed records: they are what gets removed.
_FORGET_LUA = """
local function forget(prefix, id)
  local size = tonumber(redis.call('HGET', KEYS[5], id) or '0') or 0
  local info = redis.call('HGET', KEYS[6], id)
  local steps = 0
  if info then steps = tonumber(string.match(info, '^(%d+):') or '0') end
  redis.call('DEL', prefix .. 'chunk:' .. id, prefix .. 'mask:' .. id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HINCRBY', KEYS[4], 'ready_chunks_stored', -1)
  end
  -- (Redis refuses "-0", the string Lua makes of -0)
  if size ~= 0 then redis.call('HINCRBY', KEYS[4], 'stored_bytes', -size) end
  if steps ~= 0 then redis.call('HINCRBY', KEYS[4], 'stored_steps', -steps) end
end
"""

_EVICT_SCRIPT = _FORGET_LUA + """
local prefix = ARGV[1]
local max_chunks = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local evicted = 0
while redis.call('ZCARD', KEYS[1]) > 0 do
  local stored = redis.call('ZCARD', KEYS[1])
  local bytes = tonumber(redis.call('HGET', KEYS[4], 'stored_bytes') or '0')
  if stored <= max_chunks and bytes <= max_bytes then break end
  forget(prefix, redis.call('ZPOPMIN', KEYS[1])[1])
  redis.call('HINCRBY', KEYS[4], 'evicted_chunks', 1)
  evicted = evicted + 1
end
return evicted
"""

# ARGV: prefix, chunk id ('' for a record without one), JSON record, list cap; KEYS[7] the list.
_DEAD_LETTER_SCRIPT = _FORGET_LUA + """
if ARGV[2] ~= '' then
  if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
    forget(ARGV[1], ARGV[2])
  else
    redis.call('DEL', ARGV[1] .. 'chunk:' .. ARGV[2], ARGV[1] .. 'mask:' .. ARGV[2])
  end
end
redis.call('LPUSH', KEYS[7], ARGV[3])
redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[4]) - 1)
redis.call('HINCRBY', KEYS[4], 'dead_letters', 1)
return 1
"""

# The blob, nil if missing, or its length (an integer) if it is over the limit ARGV[1].
_GET_BOUNDED_SCRIPT = """
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return n end
return redis.call('GET', KEYS[1])
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
    dead_letters: int = 0
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
            info = cls(*(int(v) for v in raw.split(b":")))
        except (TypeError, ValueError) as exc:
            raise ChunkDecodeError(f"replay info record {raw!r:.60} is malformed; expected T:offset:H:W") from exc
        if min(info.steps, info.frames_offset, info.height, info.width) < 1 or info.frames_offset > MAX_HEADER_BYTES:
            raise ChunkDecodeError(f"replay info record {raw!r:.60} is out of range")
        return info


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
        self.frame_shape, self.by_actor = p + "frame-shape", p + "by-actor"

    def removal(self) -> list[str]:
        """KEYS of the scripts that remove chunks (eviction, dead-letter)."""
        return [self.order, self.ready, self.meta, self.stats, self.size, self.info]

    def chunk(self, chunk_id: int | str) -> str:
        return f"{self.prefix}chunk:{chunk_id}"

    def mask(self, chunk_id: int | str) -> str:
        return f"{self.prefix}mask:{chunk_id}"


# Longer than any blocking read (the segmenter's XREADGROUP blocks for at most poll_ms).
SOCKET_TIMEOUT_S = 60.0


def connect(url: str) -> redis.Redis:
    """A binary-safe client for a redis:// URL (credentials come in the URL, never from code).

    redis-py's own retries are off: it would re-send a transaction whose reply was lost;
    `OutageGuard` retries instead, around operations made safe to repeat.
    """
    return redis.Redis.from_url(url, decode_responses=False, socket_keepalive=True, health_check_interval=30,
                                socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def _waits_out_outages(method: Callable[..., R]) -> Callable[..., R]:
    """Run a ReplayClient method through its OutageGuard (the method must be safe to repeat)."""
    @functools.wraps(method)
    def guarded(self: "ReplayClient", *args, **kwargs) -> R:
        return self.guard.call(method, self, *args, **kwargs)
    return guarded


class ReplayClient:
    """Insert chunks, mark them ready with masks, sample transition windows.

    Used by actors (insert), the segmenter (mark_ready) and the learner (sample); every
    process makes its own client from the same URL and run name. Construction contacts
    Redis (waiting up to `connect_timeout_s`) and checks access and memory; `metrics`
    receives the outage counters (default: chosen for this process on the first outage).
    """

    def __init__(self, url: str, config: ReplayConfig | None = None, metrics: Metrics | None = None):
        self.config = config or ReplayConfig()
        self._check_config()
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
        self._insert = self.redis.register_script(_INSERT_SCRIPT)
        self._pick = self.redis.register_script(_PICK_SCRIPT)
        self._evict = self.redis.register_script(_EVICT_SCRIPT)
        self._mark_ready = self.redis.register_script(_MARK_READY_SCRIPT)
        self._dead_letter = self.redis.register_script(_DEAD_LETTER_SCRIPT)
        self._get_bounded = self.redis.register_script(_GET_BOUNDED_SCRIPT)
        # step arrays of chunks already checked (see `_check_chunk`), by id
        self._meta_cache: dict[bytes, dict[str, np.ndarray]] = {}

    def _check_config(self) -> None:
        c = self.config
        if c.capacity_chunks < 1 or c.capacity_bytes < 1 or c.dead_letter_cap < 1:
            raise ConfigError("replay capacities and the dead-letter cap must be positive",
                              "set --capacity-chunks, --capacity-bytes and --dead-letter-cap to 1 or more")
        if not 0 < c.max_chunk_bytes <= MAX_BLOB_BYTES:
            raise ConfigError(f"--max-chunk-bytes {c.max_chunk_bytes} is out of range",
                              f"choose 1 .. {MAX_BLOB_BYTES}")
        if c.outage_deadline_s < 0 or c.connect_timeout_s < 0:
            raise ConfigError("--outage-deadline-s and --connect-timeout-s must be >= 0", "pass 0 or more seconds")

    def call(self, op: Callable[..., R], *args, **kwargs) -> R:
        """Run one Redis operation of this run (safe to repeat), waiting out outages."""
        return self.guard.call(op, *args, **kwargs)

    # -- writing ---------------------------------------------------------------------------
    def insert(self, chunk: Chunk, segment: bool = False) -> int:
        """Store a chunk atomically and return its id.

        With `segment=False` the chunk's own ground-truth masks are used and it is ready
        at once; with `segment=True` it waits on the to-segment stream for the segmenter.
        Exactly once through outages: the id is drawn first, and the store script does
        nothing if that id is already stored. (A chunk evicted between a lost reply and
        the retry would be stored again; FIFO eviction takes the oldest, this is the newest.)
        """
        k = self.keys
        chunk.chunk_id = int(self.guard.call(self.redis.incr, k.next_id))
        blob, layout = encode_chunk(chunk)
        check_blob_size(len(blob), self.config.max_chunk_bytes)
        h, w, _ = layout.frame_shape
        meta = msgpack.packb({name: [getattr(chunk, name).dtype.name, list(getattr(chunk, name).shape),
                                     getattr(chunk, name).tobytes()] for name in STEP_ARRAYS})
        info = _ChunkInfo(chunk.num_steps, layout.offsets["frames"], h, w).encode()
        size = len(blob) + len(meta) + len(info) + h * w * (chunk.num_steps + 1)
        masks = b"" if segment else np.ascontiguousarray(chunk.masks).tobytes()
        cid = chunk.chunk_id
        stored = self.guard.call(
            self._insert,
            keys=[k.chunk(cid), k.mask(cid), k.meta, k.info, k.size, k.order, k.ready, k.stats, k.to_segment,
                  k.frame_shape, k.by_actor],
            args=[cid, blob, meta, info, size, chunk.num_steps, int(segment), masks, f"{h}:{w}", chunk.actor_id])
        if isinstance(stored, bytes):
            raise ChunkDecodeError(f"chunk frames are {h}x{w}, this run's are {stored.decode().replace(':', 'x')}; "
                                   "one run must use one frame size (start a new --run-name)")
        self.guard.call(self._evict_over_capacity)
        return cid

    @_waits_out_outages
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
        return int(self._evict(keys=k.removal(), args=[k.prefix, self.config.capacity_chunks,
                                                       self.config.capacity_bytes]))

    def dead_letter(self, chunk_id: int | str | bytes | None, error: str, head: bytes = b"", **context: str) -> None:
        """Refuse a malformed chunk or stream entry: remove the chunk (if any), keep a JSON
        record (the error, the first bytes of the blob, `context`) in the capped
        `<run>:dead-letter` list, and count it in `dead_letters`."""
        self.guard.call(self._store_dead_letter, chunk_id, error, head, context)

    def _store_dead_letter(self, chunk_id: int | str | bytes | None, error: str, head: bytes, context: dict) -> None:
        if isinstance(chunk_id, bytes):
            chunk_id = chunk_id.decode(errors="replace")
        record = json.dumps({"chunk_id": None if chunk_id is None else str(chunk_id), "error": error[:1000],
                             "head": head[:64].hex(), "time": time.time(), **context})
        self._dead_letter(keys=[*self.keys.removal(), self.keys.dead_letter],
                          args=[self.keys.prefix, "" if chunk_id is None else chunk_id, record,
                                self.config.dead_letter_cap])
        log.warning("refused chunk %s of run %r (%s); moved to %s", chunk_id, self.config.run_name, error[:300],
                    self.keys.dead_letter)

    # -- reading ---------------------------------------------------------------------------
    def sample(self, batch_size: int, window: int, rng: np.random.Generator) -> TransitionWindows:
        """Sample `batch_size` windows of `window` consecutive frames, uniformly over ready chunks.

        Two round trips: a script picks chunks (skipping those shorter than the window),
        then one pipeline cuts each window out with GETRANGE (and, for chunks not seen
        before, fetches what `_check_chunk` needs). Chunks evicted in between come back
        empty and are redrawn; malformed ones are dead-lettered and redrawn. Raises
        RuntimeError if no chunk is long enough.
        """
        if window < 2:
            raise ValueError("window must hold at least two frames (one transition)")
        return self.guard.call(self._sample, batch_size, window, rng)

    def _sample(self, batch_size: int, window: int, rng: np.random.Generator) -> TransitionWindows:
        k = self.keys
        rows: list[tuple] = []
        for _ in range(20):
            need = batch_size - len(rows)
            if need == 0:
                break
            picked = self._pick(keys=[k.ready, k.info], args=[window, need])
            if not picked:
                break
            infos: dict[bytes, _ChunkInfo] = {}
            for cid, raw in dict(zip(picked[0::2], picked[1::2])).items():  # a chunk may be picked twice
                try:
                    infos[cid] = _ChunkInfo.parse(raw)
                except ChunkDecodeError as exc:
                    self._refuse(cid, exc)
            ids = [cid for cid in picked[0::2] if cid in infos]
            starts = [int(u * (infos[cid].steps + 2 - window)) for u, cid in zip(rng.random(len(ids)), ids)]
            pipe = self.redis.pipeline(transaction=False)
            for cid, start in zip(ids, starts):
                info = infos[cid]
                frame_bytes, mask_bytes = info.height * info.width * 3, info.height * info.width
                first = info.frames_offset + start * frame_bytes
                pipe.getrange(k.chunk(cid.decode()), first, first + window * frame_bytes - 1)
                pipe.getrange(k.mask(cid.decode()), start * mask_bytes, (start + window) * mask_bytes - 1)
            unchecked = [cid for cid in infos if cid not in self._meta_cache]
            for cid in unchecked:
                pipe.hget(k.meta, cid)
                pipe.getrange(k.chunk(cid.decode()), 0, infos[cid].frames_offset - 1)
                pipe.strlen(k.chunk(cid.decode()))
                pipe.strlen(k.mask(cid.decode()))
            replies = pipe.execute(raise_on_error=False)
            refused = set()
            for i, cid in enumerate(unchecked):
                try:
                    self._check_chunk(cid, infos[cid], *replies[2 * len(ids) + 4 * i:2 * len(ids) + 4 * i + 4])
                except ChunkDecodeError as exc:
                    refused.add(cid)
                    self._refuse(cid, exc, head=replies[2 * len(ids) + 4 * i + 1])
            for i, (cid, start) in enumerate(zip(ids, starts)):
                frames, masks, info = replies[2 * i], replies[2 * i + 1], infos[cid]
                if cid in refused or cid not in self._meta_cache or isinstance(frames, Exception) \
                        or isinstance(masks, Exception):
                    continue
                if len(frames) != window * info.height * info.width * 3 or len(masks) * 3 != len(frames):
                    continue  # evicted since it was picked
                if np.frombuffer(masks, np.uint8).max(initial=0) > 1:
                    refused.add(cid)
                    self._refuse(cid, ChunkDecodeError("masks are not binary (0 = background, 1 = agent)"))
                    continue
                # its step arrays with it: a later attempt may push them out of the cache
                rows.append((cid, start, frames, masks, info, self._meta_cache[cid]))
            rows = [row for row in rows if row[0] not in refused]
        if len(rows) < batch_size:
            raise RuntimeError(f"the replay has no ready chunk with at least {window} frames; "
                               "collect more data or lower the window")
        self.redis.hincrby(k.stats, "sampled_steps", batch_size)
        return self._assemble(rows, window)

    def _check_chunk(self, chunk_id: bytes, info: _ChunkInfo, meta: object, prefix: object, blob_length: object,
                     mask_length: object) -> None:
        """Check a chunk the first time it is sampled, and cache its step arrays.

        A chunk whose blob is gone was evicted since it was picked: nothing is cached and
        its rows are redrawn. Anything else that does not match raises ChunkDecodeError.
        """
        replies = (meta, prefix, blob_length, mask_length)
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:
            raise ChunkDecodeError(f"a key of the chunk holds the wrong type ({errors[0]})")
        if blob_length == 0:
            return
        header, layout = decode_layout(prefix, blob_length, self.config.max_chunk_bytes)
        if header["chunk_id"] != int(chunk_id):
            raise ChunkDecodeError(f"blob stored under chunk id {int(chunk_id)} carries chunk id {header['chunk_id']}")
        if (layout.num_steps, layout.frame_shape, layout.offsets["frames"]) != \
                (info.steps, (info.height, info.width, 3), info.frames_offset):
            raise ChunkDecodeError(f"blob of {layout.num_steps} steps of {layout.frame_shape} frames does not match "
                                   f"its info record {info.encode()}")
        expected_masks = (info.steps + 1) * info.height * info.width
        if mask_length != expected_masks:
            raise ChunkDecodeError(f"masks are {mask_length} bytes; {info.steps + 1} frames of "
                                   f"{info.height}x{info.width} need {expected_masks}")
        if meta is None:
            raise ChunkDecodeError("the chunk has no step arrays in the meta hash")
        self._cache_meta(chunk_id, meta, info.steps)

    def _refuse(self, chunk_id: bytes, error: ChunkDecodeError, head: object = b"") -> None:
        self._meta_cache.pop(chunk_id, None)
        self._store_dead_letter(chunk_id, f"{type(error).__name__}: {error}",
                                head if isinstance(head, bytes) else b"", {"source": "sampler"})

    def _assemble(self, rows: list[tuple], window: int) -> TransitionWindows:
        starts = np.array([row[1] for row in rows], dtype=np.int64)
        h, w = rows[0][4].height, rows[0][4].width
        if any((row[4].height, row[4].width) != (h, w) for row in rows):
            raise ChunkDecodeError("sampled chunks have different frame sizes; one run must use one frame size")
        frames = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(len(rows), window, h, w, 3)
        masks = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.uint8).reshape(len(rows), window, h, w)
        metas = [row[5] for row in rows]
        steps = {name: np.stack([m[name][s:s + window - 1] for m, s in zip(metas, starts)]) for name in STEP_ARRAYS}
        return TransitionWindows(frames=frames, masks=masks, chunk_ids=np.array([int(r[0]) for r in rows]),
                                 starts=starts, **steps)

    def _cache_meta(self, chunk_id: bytes, meta: bytes, steps: int) -> None:
        """Decode a chunk's small per-step arrays once; they never change while it is stored."""
        try:
            raw = msgpack.unpackb(meta, raw=False, max_ext_len=0)
            decoded = {}
            for name in STEP_ARRAYS:
                dtype, shape, payload = raw[name]
                if dtype != ARRAY_SPECS[name][0] or not shape or shape[0] != steps:
                    raise ValueError(f"{name} is {dtype} {shape}, expected {ARRAY_SPECS[name][0]} of {steps} steps")
                decoded[name] = np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ChunkDecodeError(f"replay meta of chunk {int(chunk_id)} is malformed "
                                   f"({type(exc).__name__}: {exc})") from exc
        if len(self._meta_cache) >= self.config.capacity_chunks:
            self._meta_cache.pop(next(iter(self._meta_cache)))
        self._meta_cache[chunk_id] = decoded

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
            self._get_bounded(keys=[self.keys.chunk(chunk_id)], args=[self.config.max_chunk_bytes], client=pipe)
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
        raw = {k.decode(): v for k, v in self.redis.hgetall(self.keys.stats).items()}
        values = {f.name: type(f.default)(float(raw[f.name])) for f in fields(ReplayStats) if f.name in raw}
        return ReplayStats(**values, stored_chunks=int(self.redis.zcard(self.keys.order)))

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
        self._meta_cache.clear()

    def wait_for(self, predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Poll `predicate(stats)` until true or timeout; True if it became true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.stats()):
                return True
            time.sleep(poll_s)
        return predicate(self.stats())
