"""Shared state backends: what many gateway instances agree on through Redis.

``redis``         the one Redis connector (``connect``): every client of the gateway is made there.
``redis_limits``  rate-limit checks on Redis (one Lua round trip per request).
``quota_store``   the quotas' shared totals (SQLite or Redis).

Nothing is imported here: a backend module (and the Redis client it needs) is
loaded only when the config asks for it, e.g.
``from sluice.state.redis_limits import RedisLimiter``.
"""

from __future__ import annotations

__all__: list[str] = []
