"""The Redis replay: embedded server, client (insert / mark ready / sample), segment queue and rate limiter."""

from common.replay.client import ReplayClient, ReplayConfig, ReplayStats
from common.replay.connection import connect
from common.replay.keys import ReplayKeys
from common.replay.outage import RedisUnavailable
from common.replay.rate_limiter import RateLimiter, RateLimiterConfig, RateLimiterTimeout
from common.replay.redis_server import EmbeddedRedis, RedisServerNotFound, find_redis_server, redis_url_or_embedded
from common.replay.segment_queue import Entry, SegmentQueue

__all__ = ["ReplayClient", "ReplayConfig", "ReplayKeys", "ReplayStats", "connect",
           "RedisUnavailable", "RateLimiter", "RateLimiterConfig", "RateLimiterTimeout", "EmbeddedRedis",
           "RedisServerNotFound", "find_redis_server", "redis_url_or_embedded", "Entry", "SegmentQueue"]
