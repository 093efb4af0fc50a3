"""The replay's key layout in Redis: every key of a run, under one prefix so runs never collide.

    <run>:chunk:<id>   the chunk blob (common.codec)
    <run>:mask:<id>    the chunk's masks once segmented: raw uint8 (T+1, H, W)
    <run>:meta         hash id -> msgpack of the chunk's small per-step arrays (`records`)
    <run>:info         hash id -> "T:frames_offset:H:W", where a window's bytes sit (`records.ChunkInfo`)
    <run>:size         hash id -> bytes the chunk holds (blob + masks + meta)
    <run>:order        zset of every stored chunk by id (FIFO eviction order)
    <run>:ready        zset of chunks with masks (sampled uniformly)
    <run>:to-segment   stream of chunk ids waiting for the segmenter (`segment_queue`)
    <run>:dead-letter  capped list of refused chunks and stream entries (JSON records)
    <run>:segmenter-stats  hash of the segmenter's run-wide counters
    <run>:stats        hash of counters (see `ReplayStats`)
    <run>:next-id      chunk id counter
    <run>:frame-shape  "H:W" of the run's frames (set by the first insert; one run, one size)
    <run>:by-actor     hash "<actor id>:chunks" / "<actor id>:steps" -> what each actor stored
                       (written by the insert script, so a crashed actor's count is never lost)
    <run>:weights      the latest published policy weights (common.weights.WeightsChannel)
    <run>:weights-version  their version

Only `common/replay` (and the weights channel) reads or writes these keys; the roles go
through `ReplayClient`.
"""

from __future__ import annotations


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
        self.weights, self.weights_version = p + "weights", p + "weights-version"

    def removal(self) -> list[str]:
        """KEYS of the scripts that remove chunks (eviction, dead-letter; see lua/forget.lua)."""
        return [self.order, self.ready, self.meta, self.stats, self.size, self.info]

    def chunk(self, chunk_id: int | str | bytes) -> str:
        return f"{self.prefix}chunk:{_text(chunk_id)}"

    def mask(self, chunk_id: int | str | bytes) -> str:
        return f"{self.prefix}mask:{_text(chunk_id)}"


def _text(chunk_id: int | str | bytes) -> str:
    return chunk_id.decode() if isinstance(chunk_id, bytes) else str(chunk_id)
