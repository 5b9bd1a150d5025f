"""Health probes for orchestrators: live, ready, startup.

They are cheap and never touch an upstream provider.  A worker builds its
gateway (config snapshot, routing table, providers) before it accepts its first
connection, so once a probe answers at all, start-up is done and the config is
loaded; that is all these probes can report today.  Readiness gains a check for
each dependency (Redis, the store) and for breaker states as those capabilities
land, and answers 503 when one fails.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ..routing import Router

__all__ = ["Health"]

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]


class Health:
    def __init__(self, router: Router) -> None:
        self._router = router

    def live(self) -> tuple[int, bytes]:
        return 200, b'{"status":"live"}'

    def startup(self) -> tuple[int, bytes]:
        return 200, b'{"status":"started"}'

    def ready(self) -> tuple[int, bytes]:
        checks = {"config": f"ok ({len(self._router.models)} models)"}
        return 200, orjson.dumps({"status": "ready", "checks": checks})

    @staticmethod
    def headers() -> list[tuple[str, str]]:
        return _HEADERS

    def probes(self) -> dict[str, Callable[[], tuple[int, bytes]]]:
        """Path → probe."""
        return {"/health/live": self.live, "/health/ready": self.ready, "/health/startup": self.startup}
