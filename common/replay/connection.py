"""A binary-safe connection to the replay's Redis, with no retries of its own."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Longer than any blocking read (the segment queue blocks for at most half of it).
SOCKET_TIMEOUT_S = 60.0


def connect(url: str) -> redis.Redis:
    """A binary-safe client for a redis:// URL (credentials come in the URL, never from code).

    redis-py's own retries are off: it would re-send a transaction whose reply was lost;
    `OutageGuard` retries instead, around operations made safe to repeat.
    """
    return redis.Redis.from_url(url, decode_responses=False, socket_keepalive=True, health_check_interval=30,
                                socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
