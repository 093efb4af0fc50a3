"""The Redis replay: embedded server, client (insert / mark ready / sample) and rate limiter."""

from common.replay.client import ReplayClient, ReplayConfig, ReplayKeys, ReplayStats, TransitionWindows, connect
from common.replay.outage import RedisUnavailable
from common.replay.rate_limiter import RateLimiter, RateLimiterConfig, RateLimiterTimeout
from common.replay.redis_server import EmbeddedRedis, RedisServerNotFound, find_redis_server, redis_url_or_embedded

__all__ = ["ReplayClient", "ReplayConfig", "ReplayKeys", "ReplayStats", "TransitionWindows", "connect",
           "RedisUnavailable", "RateLimiter", "RateLimiterConfig", "RateLimiterTimeout", "EmbeddedRedis",
           "RedisServerNotFound", "find_redis_server", "redis_url_or_embedded"]
