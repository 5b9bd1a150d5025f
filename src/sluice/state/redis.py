"""The one place a Redis client is made: rate limits, quotas, auth changes and signatures, dead letters.

Every client gets the same kinds of settings, each caller choosing its values
(so that a Redis that is slow, gone or restarted costs each user a bounded time):

- socket connect and read timeouts of ``timeout_s`` (a call never waits longer);
- ``retries`` immediate retries on a dropped connection only (1 covers the stale
  pooled connection met first after a Redis restart; a slow Redis is never
  retried, ``timeout_s`` bounds the call anyway);
- a health check (a PING before a command on a connection idle ``health_check_s``; 0: none, as the auth
  clients keep it);
- a client name (``CLIENT LIST`` on the server says who is connected);
- the hiredis parser, which redis-py picks by itself when ``hiredis`` is
  installed (the ``redis[hiredis]`` dependency).

For Redis Cluster build a ``redis.asyncio.RedisCluster.from_url`` client with
the same options (the backends accept either).
"""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["HEALTH_CHECK_S", "connect"]

HEALTH_CHECK_S = 30.0  # a connection idle this long is PINGed before its next command


def connect(url: str, *, timeout_s: float, name: str, retries: int = 1,
            health_check_s: float = HEALTH_CHECK_S) -> redis.asyncio.Redis:
    """A client for ``url`` named ``sluice-<name>`` (see the module docstring; ``health_check_s`` 0: none)."""
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=health_check_s,
        retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)), client_name=f"sluice-{name}")
