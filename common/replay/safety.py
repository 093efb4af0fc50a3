"""Checks a replay client makes before it uses a Redis: who can reach it, and its memory cap.

* Access: a Redis that answers without a password is used only on a loopback address
  (or a unix socket), unless the user says `--replay.allow-insecure-redis`: anyone who can
  reach it could read the run or plant data in it.
* Memory: Redis must never refuse a write or drop a key because of its own memory cap.
  The replay evicts by its own FIFO policy at `capacity_bytes`, so Redis's `maxmemory`
  must be 0 (no cap) or leave room above that (`required_maxmemory`), with the policy
  `noeviction` (an `allkeys-*` policy would silently drop replay keys).
* Secrets: URLs in messages and logs go through `redact_url`.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.cli import ConfigError

# Room above the replay's own capacity: allocator size classes and per-key overhead
# (up to ~20 % for chunk-sized values), the streams, hashes and the dead-letter list.
MEMORY_HEADROOM_RATIO = 1.5
MEMORY_HEADROOM_BYTES = 256 * 2**20
URL_FIX = "fix --redis-url or $MASKLAM_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB)"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def required_maxmemory(capacity_bytes: int) -> int:
    """The smallest Redis `maxmemory` that leaves room above a replay of `capacity_bytes`."""
    return int(capacity_bytes * MEMORY_HEADROOM_RATIO) + MEMORY_HEADROOM_BYTES


def is_loopback(url: str) -> bool:
    """True for a unix socket or a host whose every address is a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or "localhost"
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ConfigError(f"Redis host {host!r} cannot be resolved ({exc.strerror})", URL_FIX) from None
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_access(url: str, allow_insecure: bool) -> None:
    """Refuse a Redis on a non-loopback address that answers without a password, unless `allow_insecure`.

    The URL alone cannot tell: a Redis with no password accepts any password for its
    default user. So a connection without credentials asks it: NOAUTH means protected.
    An unreachable server passes here; the client's own connection reports it.
    """
    if allow_insecure or is_loopback(url):
        return
    parts = urlsplit(url)
    anonymous = redis.Redis.from_url(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl(),
                                     socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        anonymous.ping()
    except (redis.AuthenticationError, redis.ConnectionError, redis.TimeoutError):
        return
    finally:
        anonymous.close()
    raise ConfigError(f"the Redis at {redact_url(url)} answers without a password on a non-loopback address, "
                      "where anyone who can reach it can read or plant replay data",
                      "start it with requirepass and put the password in the URL (redis://:PASSWORD@HOST:PORT/DB), "
                      "or pass --replay.allow-insecure-redis on a network you trust")


def check_memory(client: redis.Redis, capacity_bytes: int, where: str) -> None:
    """Refuse a Redis whose memory cap could make it refuse writes or drop replay keys."""
    info = client.info("memory")
    maxmemory, policy = int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", "noeviction"))
    if maxmemory == 0:
        return
    needed = required_maxmemory(capacity_bytes)
    if maxmemory < needed:
        raise ConfigError(f"the Redis at {where} has maxmemory {maxmemory} bytes, below the {needed} bytes a "
                          f"replay of --replay.capacity-bytes {capacity_bytes} needs with headroom",
                          f"raise its maxmemory to at least {needed} (or 0), or lower --replay.capacity-bytes")
    if policy.startswith("allkeys"):
        raise ConfigError(f"the Redis at {where} has maxmemory-policy {policy}, which would silently drop "
                          "replay keys", "set maxmemory-policy noeviction (the replay evicts by its own FIFO policy)")
