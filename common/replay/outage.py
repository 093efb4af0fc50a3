"""Waiting out Redis outages: retry with exponential backoff up to a deadline, then fail.

A run lasts days; Redis restarts (a crash, a failover, a maintenance restart with AOF)
must not kill the actors, the segmenter or the learner. `OutageGuard.call(op)` runs a
Redis operation; on a connection error or timeout it waits (50 ms doubling to 2 s),
reconnects and tries again, until the operation succeeds or `deadline_s` has passed
since the outage began (then `RedisUnavailable`). Each outage logs one warning line when
it begins (and an info line when it ends), never a traceback, and is counted in
`replay_reconnects_total` and `replay_reconnect_wait_seconds_total`.

Only operations that are safe to repeat may be guarded: a command can have run on the
server when the connection dropped before its reply. The replay makes its writes
idempotent for that (see `ReplayClient.insert`). Authentication and permission errors
are not outages: they are raised as `ConfigError` at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from common import metrics as m
from common.cli import ConfigError

T = TypeVar("T")
log = logging.getLogger("masklam.replay")

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
# Subclasses of redis.ConnectionError that no waiting will cure.
_NOT_OUTAGES = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


class RedisUnavailable(ConnectionError):
    """Redis stayed unreachable longer than the configured deadline."""


class OutageGuard:
    """Runs Redis operations of one client, waiting out outages (see the module docstring).

    `where` names the server in messages (host:port, never the password). `metrics` is
    created on the first outage when not given (Ray's exporter inside Ray).
    """

    def __init__(self, where: str, deadline_s: float, metrics: m.Metrics | None = None):
        self.where = where
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.outages = 0
        self.waited_s = 0.0

    def call(self, op: Callable[..., T], *args, **kwargs) -> T:
        """`op(*args, **kwargs)`, retried through outages for up to the guard's deadline."""
        return self._run(op, args, kwargs, self.deadline_s, announce=True)

    def first_contact(self, op: Callable[..., T], *args, deadline_s: float, **kwargs) -> T:
        """`op(*args, **kwargs)` as a client's first contact: retried for up to `deadline_s`,
        silently (a server still starting is no outage; one that never answers is the
        caller's error to report)."""
        return self._run(op, args, kwargs, deadline_s, announce=False)

    def _run(self, op: Callable[..., T], args: tuple, kwargs: dict, deadline_s: float, announce: bool) -> T:
        began = None
        pause = FIRST_BACKOFF_S
        while True:
            try:
                result = op(*args, **kwargs)
            except _NOT_OUTAGES as exc:
                raise ConfigError(f"the Redis at {self.where} refused our credentials ({exc})",
                                  "check the password in --redis-url or $MASKLAM_REDIS_URL") from None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                now = time.monotonic()
                if began is None:
                    began = now
                    if announce:
                        log.warning("Redis at %s unreachable (%s: %s); retrying with backoff for up to %.0f s",
                                    self.where, type(exc).__name__, str(exc)[:200], deadline_s)
                if now - began >= deadline_s:
                    if announce:
                        self._record(now - began)
                    raise RedisUnavailable(f"the Redis at {self.where} stayed unreachable for {now - began:.1f} s "
                                           f"({type(exc).__name__}: {str(exc)[:200]})") from None
                time.sleep(min(pause, deadline_s - (now - began)))
                pause = min(2 * pause, MAX_BACKOFF_S)
                continue
            if began is not None and announce:
                waited = self._record(time.monotonic() - began)
                log.info("Redis at %s is back after %.1f s; going on", self.where, waited)
            return result

    def _record(self, waited: float) -> float:
        self.outages += 1
        self.waited_s += waited
        if self.metrics is None:
            self.metrics = m.Metrics.for_this_process()
        self.metrics.inc(m.REPLAY_RECONNECTS)
        self.metrics.inc(m.REPLAY_RECONNECT_WAIT_SECONDS, waited)
        return waited
