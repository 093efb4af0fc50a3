"""The to-segment queue: chunks waiting for masks, shared by every segmenter of a run.

`<run>:to-segment` is a Redis stream; the insert script appends `id=<chunk id>` for a
chunk stored with `segment=True`, in the same atomic step that stores it. Segmenters
form one consumer group and each reads under its own consumer name, so they share the
work. An entry stays pending on its consumer until `acknowledge` (after the chunk's
masks are written with `ReplayClient.mark_ready`); an instance that dies leaves its
entries pending, and `claim` hands those idle past a limit to another one. Acknowledged
entries are deleted, so `length` is the number of chunks not yet finished.

Every call waits out Redis outages and is safe to repeat: a read whose reply was lost
leaves its entries pending on this consumer, and they come back through a claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from common.replay.connection import SOCKET_TIMEOUT_S
from common.replay.keys import ReplayKeys
from common.replay.outage import OutageGuard

# A blocking read must end well within the socket timeout, or it would look like an outage.
MAX_BLOCK_MS = int(SOCKET_TIMEOUT_S * 1000 / 2)


@dataclass(frozen=True)
class Entry:
    """One stream entry: its stream id, its fields, and how often it has been delivered."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1

    @property
    def chunk_id_text(self) -> str | None:
        """The `id` field as text (None if absent); may be anything a foreign writer put there."""
        raw = self.fields.get(b"id")
        return raw.decode(errors="replace") if isinstance(raw, bytes) else None

    @property
    def chunk_id(self) -> int | None:
        """The chunk id, or None if the entry carries no integer `id` field."""
        text = self.chunk_id_text
        return int(text) if text is not None and text.isdigit() else None


class SegmentQueue:
    """One consumer of a run's to-segment queue (see the module docstring).

    Joining creates the group when it does not exist. `counts` given to `acknowledge`,
    and the number of claimed entries, go to the run-wide `<run>:segmenter-stats` hash.
    """

    def __init__(self, client: redis.Redis, keys: ReplayKeys, guard: OutageGuard, group: str, consumer: str):
        self.redis = client
        self.stream = keys.to_segment
        self.stats_key = keys.segmenter_stats
        self.guard = guard
        self.group = group
        self.consumer = consumer
        self._claim_cursor = "0-0"
        self._join()

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries never delivered before, waiting up to `block_ms` for the first."""
        try:
            reply = self.guard.call(self.redis.xreadgroup, self.group, self.consumer, {self.stream: ">"},
                                    count=count, block=min(max(1, block_ms), MAX_BLOCK_MS))
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._join()  # the stream was deleted under us (e.g. the run was cleared)
            return []
        return [Entry(entry_id, fields or {}) for entry_id, fields in reply[0][1]] if reply else []

    def claim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Up to `count` entries pending longer than `min_idle_ms` on other consumers (presumed
        dead), now this consumer's, each with how often it has been delivered. Successive calls
        walk the pending list; each full pass forgets consumers idle for 10x `min_idle_ms` that
        hold nothing, so the group stays small."""
        try:
            cursor, claimed, _deleted = self.guard.call(
                self.redis.xautoclaim, self.stream, self.group, self.consumer, min_idle_time=min_idle_ms,
                start_id=self._claim_cursor, count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._join()
            return []
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):
            self._forget_idle_consumers(10 * min_idle_ms)
        if not claimed:
            return []
        self.guard.call(self.redis.hincrby, self.stats_key, "claimed", len(claimed))
        deliveries = [rows[0]["times_delivered"] if rows else 0 for rows in self.guard.call(self._deliveries, claimed)]
        return [Entry(entry_id, fields or {}, delivered) for (entry_id, fields), delivered in zip(claimed, deliveries)]

    def acknowledge(self, entry_ids: list[bytes], counts: dict[str, int]) -> None:
        """Finish entries: XACK + XDEL them and add `counts` to the run-wide hash, atomically
        (a retry after a lost reply acknowledges nothing twice, but may count twice)."""
        if entry_ids:
            self.guard.call(self._acknowledge_once, entry_ids, counts)

    def length(self) -> int:
        """Entries not yet finished (waiting or pending), over all consumers."""
        return self.guard.call(self.redis.xlen, self.stream)

    def backlog(self) -> tuple[int, int]:
        """(entries not yet finished, of which pending on some consumer), in one round trip."""
        queued, pending = self.guard.call(self._backlog_once)
        return queued, pending["pending"]

    def leave(self) -> None:
        """Leave the group if nothing is pending on this consumer (pending entries must stay claimable)."""
        pending = self.guard.call(self.redis.xpending_range, self.stream, self.group, "-", "+", 1,
                                  consumername=self.consumer)
        if not pending:
            self.guard.call(self.redis.xgroup_delconsumer, self.stream, self.group, self.consumer)

    def _join(self) -> None:
        try:
            self.guard.call(self.redis.xgroup_create, self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _deliveries(self, entries: list[tuple[bytes, dict | None]]) -> list[list[dict]]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        return pipe.execute()

    def _forget_idle_consumers(self, idle_ms: int) -> None:
        for info in self.guard.call(self.redis.xinfo_consumers, self.stream, self.group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != self.consumer and info["pending"] == 0 and info["idle"] > idle_ms:
                self.guard.call(self.redis.xgroup_delconsumer, self.stream, self.group, name)

    def _acknowledge_once(self, entry_ids: list[bytes], counts: dict[str, int]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        for name, value in counts.items():
            pipe.hincrby(self.stats_key, name, value)
        pipe.execute()

    def _backlog_once(self) -> list:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xpending(self.stream, self.group)
        return pipe.execute()
