"""Shared state backends: what many gateway instances agree on through Redis.

``redis_limits``  rate-limit checks on Redis (one Lua round trip per request).

Nothing is imported here: a backend module (and the Redis client it needs) is
loaded only when the config asks for it, e.g.
``from sluice.state.redis_limits import RedisLimiter, connect``.
"""

from __future__ import annotations

__all__: list[str] = []
