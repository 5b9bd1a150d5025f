"""Shared state: what many gateway instances agree on through Redis, and what is written behind the requests.

``redis``         the one Redis connector (``connect``): every client of the gateway is made there.
``redis_limits``  rate-limit checks on Redis (one Lua round trip per request).
``hybrid``        hybrid rate limits: local credit synced with the Redis bucket in the background.
``quota_store``   the quotas' shared totals (SQLite or Redis).
``writer``        the bounded background writer of the audit log and the dead letters.
``dead_letters_redis``  the dead-letter queue's Redis backend (one stream the gateways share).

Nothing is imported here: a backend module (and the Redis client it needs) is
loaded only when the config asks for it, e.g.
``from sluice.state.redis_limits import RedisLimiter``.
"""

from __future__ import annotations

__all__: list[str] = []
