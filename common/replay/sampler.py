"""Sampling transition windows: uniform over ready chunks, cut out of the blobs in Redis.

Two round trips per attempt. The pick script draws chunks from `<run>:ready` (skipping
those shorter than the window) with their info records; then one pipeline cuts each
window of frames and masks out of its blob with GETRANGE, so a batch never moves whole
chunks over the network. The same pipeline takes a first look at every chunk not seen
before (its step arrays, blob header and sizes); a chunk that fails the check (foreign,
truncated, oversized, wrong version or shape, non-binary masks) is refused through the
client's dead-letter list and its rows are redrawn, as are the rows of chunks evicted
between the two round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import redis
from redis.commands.core import Script

from common.codec import ChunkDecodeError, decode_layout
from common.replay.keys import ReplayKeys
from common.replay.records import ChunkInfo, decode_step_arrays
from common.windows import STEP_ARRAYS, Windows

MAX_ATTEMPTS = 20


class _Pick(NamedTuple):
    """A window to cut: which chunk, its first frame, where the chunk's bytes sit."""

    chunk_id: bytes
    start: int
    info: ChunkInfo


class _FirstLook(NamedTuple):
    """The replies that check a chunk the first time it is sampled, in pipeline order."""

    meta: bytes | None | Exception
    head: bytes | Exception
    blob_length: int | Exception
    mask_length: int | Exception


class _Row(NamedTuple):
    """One sampled window, with its chunk's step arrays (a later attempt may evict them from the cache)."""

    chunk_id: bytes
    start: int
    frames: bytes
    masks: bytes
    info: ChunkInfo
    steps: dict[str, np.ndarray]


class Sampler:
    """Samples windows of one run; keeps the checked step arrays of up to `cache_size` chunks.

    `refuse(chunk_id, error, head)` moves a chunk that fails a check to the dead-letter list.
    Not guarded against outages itself: `ReplayClient.sample` runs it through its guard.
    """

    def __init__(self, client: redis.Redis, keys: ReplayKeys, pick: Script, max_chunk_bytes: int, cache_size: int,
                 refuse: Callable[[bytes, str, bytes], None]):
        self.redis = client
        self.keys = keys
        self.pick = pick
        self.max_chunk_bytes = max_chunk_bytes
        self.cache_size = cache_size
        self.refuse = refuse
        self._steps_cache: dict[bytes, dict[str, np.ndarray]] = {}

    def clear_cache(self) -> None:
        self._steps_cache.clear()

    def sample(self, batch_size: int, window: int, rng: np.random.Generator) -> Windows:
        if window < 2:
            raise ValueError("window must hold at least two frames (one transition)")
        rows: list[_Row] = []
        for _ in range(MAX_ATTEMPTS):
            need = batch_size - len(rows)
            if need == 0:
                break
            picked = self.pick(keys=[self.keys.ready, self.keys.info], args=[window, need])
            if not picked:
                break
            new_rows, refused = self._cut(self._parse_picks(picked, window, rng), window)
            rows = [row for row in rows + new_rows if row.chunk_id not in refused]
        if len(rows) < batch_size:
            raise RuntimeError(f"the replay has no ready chunk with at least {window} frames; "
                               "collect more data or lower the window")
        self.redis.hincrby(self.keys.stats, "sampled_steps", batch_size)
        return _assemble(rows, window)

    def _parse_picks(self, picked: list[bytes], window: int, rng: np.random.Generator) -> list[_Pick]:
        """Picks with a uniform start each; chunks whose info record is malformed are refused."""
        infos: dict[bytes, ChunkInfo] = {}
        for chunk_id, raw in dict(zip(picked[0::2], picked[1::2])).items():  # a chunk may be picked twice
            try:
                infos[chunk_id] = ChunkInfo.parse(raw)
            except ChunkDecodeError as exc:
                self._refuse(chunk_id, exc)
        ids = [chunk_id for chunk_id in picked[0::2] if chunk_id in infos]
        return [_Pick(chunk_id, int(u * (infos[chunk_id].steps + 2 - window)), infos[chunk_id])
                for u, chunk_id in zip(rng.random(len(ids)), ids)]

    def _cut(self, picks: list[_Pick], window: int) -> tuple[list[_Row], set[bytes]]:
        """One pipeline: every window's frames and masks, and a first look at chunks not seen before.
        Returns the rows cut and the chunks refused (rows of earlier attempts from them are dropped too)."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for pick in picks:
            first = pick.info.frames_offset + pick.start * pick.info.frame_bytes
            pipe.getrange(k.chunk(pick.chunk_id), first, first + window * pick.info.frame_bytes - 1)
            pipe.getrange(k.mask(pick.chunk_id), pick.start * pick.info.mask_bytes,
                          (pick.start + window) * pick.info.mask_bytes - 1)
        unseen = {pick.chunk_id: pick.info for pick in picks if pick.chunk_id not in self._steps_cache}
        for chunk_id, info in unseen.items():
            pipe.hget(k.meta, chunk_id)
            pipe.getrange(k.chunk(chunk_id), 0, info.frames_offset - 1)
            pipe.strlen(k.chunk(chunk_id))
            pipe.strlen(k.mask(chunk_id))
        replies = pipe.execute(raise_on_error=False)
        window_replies, look_replies = replies[:2 * len(picks)], replies[2 * len(picks):]
        step = len(_FirstLook._fields)
        looks = [_FirstLook(*look_replies[i:i + step]) for i in range(0, len(look_replies), step)]

        refused = set()
        for (chunk_id, info), look in zip(unseen.items(), looks):
            try:
                self._first_look(chunk_id, info, look)
            except ChunkDecodeError as exc:
                refused.add(chunk_id)
                self._refuse(chunk_id, exc, head=look.head)
        rows = []
        for pick, frames, masks in zip(picks, window_replies[0::2], window_replies[1::2]):
            if pick.chunk_id in refused or pick.chunk_id not in self._steps_cache \
                    or isinstance(frames, Exception) or isinstance(masks, Exception):
                continue
            if len(frames) != window * pick.info.frame_bytes or len(masks) * 3 != len(frames):
                continue  # evicted since it was picked
            if np.frombuffer(masks, np.uint8).max(initial=0) > 1:
                refused.add(pick.chunk_id)
                self._refuse(pick.chunk_id, ChunkDecodeError("masks are not binary (0 = background, 1 = agent)"))
                continue
            rows.append(_Row(pick.chunk_id, pick.start, frames, masks, pick.info, self._steps_cache[pick.chunk_id]))
        return rows, refused

    def _first_look(self, chunk_id: bytes, info: ChunkInfo, look: _FirstLook) -> None:
        """Check a chunk the first time it is sampled, and cache its step arrays.

        A chunk whose blob is gone was evicted since it was picked: nothing is cached and
        its rows are redrawn. Anything else that does not match raises ChunkDecodeError.
        """
        errors = [reply for reply in look if isinstance(reply, Exception)]
        if errors:
            raise ChunkDecodeError(f"a key of the chunk holds the wrong type ({errors[0]})")
        if look.blob_length == 0:
            return
        header, layout = decode_layout(look.head, look.blob_length, self.max_chunk_bytes)
        if header["chunk_id"] != int(chunk_id):
            raise ChunkDecodeError(f"blob stored under chunk id {int(chunk_id)} carries chunk id {header['chunk_id']}")
        if (layout.num_steps, layout.frame_shape, layout.offsets["frames"]) != \
                (info.steps, (info.height, info.width, 3), info.frames_offset):
            raise ChunkDecodeError(f"blob of {layout.num_steps} steps of {layout.frame_shape} frames does not match "
                                   f"its info record {info.encode()}")
        expected_masks = (info.steps + 1) * info.mask_bytes
        if look.mask_length != expected_masks:
            raise ChunkDecodeError(f"masks are {look.mask_length} bytes; {info.steps + 1} frames of "
                                   f"{info.height}x{info.width} need {expected_masks}")
        if look.meta is None:
            raise ChunkDecodeError("the chunk has no step arrays in the meta hash")
        steps = decode_step_arrays(chunk_id, look.meta, info.steps)
        if len(self._steps_cache) >= self.cache_size:
            self._steps_cache.pop(next(iter(self._steps_cache)))
        self._steps_cache[chunk_id] = steps

    def _refuse(self, chunk_id: bytes, error: ChunkDecodeError, head: object = b"") -> None:
        self._steps_cache.pop(chunk_id, None)
        self.refuse(chunk_id, f"{type(error).__name__}: {error}", head if isinstance(head, bytes) else b"")


def _assemble(rows: list[_Row], window: int) -> Windows:
    h, w = rows[0].info.height, rows[0].info.width
    if any((row.info.height, row.info.width) != (h, w) for row in rows):
        raise ChunkDecodeError("sampled chunks have different frame sizes; one run must use one frame size")
    starts = np.array([row.start for row in rows], dtype=np.int64)
    # joined into a bytearray: writable arrays, so torch.from_numpy takes them without a copy or a warning
    frames = np.frombuffer(bytearray().join(row.frames for row in rows), np.uint8).reshape(len(rows), window, h, w, 3)
    masks = np.frombuffer(bytearray().join(row.masks for row in rows), np.uint8).reshape(len(rows), window, h, w)
    steps = {name: np.stack([row.steps[name][row.start:row.start + window - 1] for row in rows])
             for name in STEP_ARRAYS}
    return Windows(frames=frames, masks=masks, chunk_ids=np.array([int(row.chunk_id) for row in rows]),
                   starts=starts, **steps)
