"""Health probes for orchestrators (live, ready, startup) and an authenticated /health/details.

The probes are cheap and never touch an upstream provider.  A worker builds its
gateway (config snapshot, routing table, providers) before it accepts its first
connection, so once a probe answers at all, start-up is done and the config is
loaded.  Readiness checks that every model has a routable target and pings
each dependency the config uses (the rate limits' Redis; the store and breaker
states as those capabilities land), and answers 503 when one fails.

``/health/details`` is for operators: this worker's state (event-loop lag,
memory, file descriptors, connection pool, dropped log lines and spans), behind
a bearer token (``observability.health_details_token``; unset, it is 404 so it
is not even discoverable).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from ..errors import NotFound, Unauthorized
from ..routing import Router
from .process import process_usage

if TYPE_CHECKING:
    from ..context import Exchange

__all__ = ["Health", "Probe"]

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]

Probe = Callable[["Exchange"], Awaitable[tuple[int, bytes]]]


class Health:
    def __init__(self, router: Router, *, details_token: str | None = None,
                 worker_state: Callable[[], dict[str, float]] | None = None) -> None:
        self._router = router
        self._token = details_token.encode() if details_token else None
        self._worker_state = worker_state
        self._started = time.time()
        # Dependencies readiness checks: name -> a ping returning its round trip in seconds (raising when down).
        self.dependencies: dict[str, Callable[[], Awaitable[float]]] = {}

    async def live(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        return 200, b'{"status":"live"}'

    async def startup(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        return 200, b'{"status":"started"}'

    async def ready(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        checks = {**self._checks(), **await self._dependencies()}
        ready = all(check["ok"] for check in checks.values())
        return (200 if ready else 503), orjson.dumps({"status": "ready" if ready else "not_ready", "checks": checks})

    def _checks(self) -> dict[str, dict[str, object]]:
        # The loader refuses a model without a target or with an unknown provider, so a loaded
        # config routes every model; breaker states make this a live check with resilience.
        models = self._router.models
        return {"config": {"ok": True, "models": len(models),
                           "targets": sum(route.target_count for route in models.values())}}

    async def details(self, ex: Exchange) -> tuple[int, bytes]:
        self._authorize(ex)
        lag = await _loop_lag()
        body = {
            "status": "ok",
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 3),
            "event_loop_lag_ms": round(lag * 1000, 3),
            "process": process_usage(),
            "worker": self._worker_state() if self._worker_state is not None else {},
            "dependencies": await self._dependencies(),
            "deployments": self._router.deployment_states(),  # breaker state, in flight, latency, key rest
            "checks": self._checks(),
        }
        return 200, orjson.dumps(body)

    async def _dependencies(self) -> dict[str, dict[str, object]]:
        states: dict[str, dict[str, object]] = {}
        for name, ping in self.dependencies.items():
            try:
                states[name] = {"ok": True, "latency_ms": round(await ping() * 1000, 3)}
            except Exception as exc:
                states[name] = {"ok": False, "error": str(exc)[:300]}
        return states

    def _authorize(self, ex: Exchange) -> None:
        if self._token is None:
            raise NotFound("Unknown request URL: GET /health/details.", code="unknown_url")
        header = ex.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise Unauthorized("A valid bearer token is needed for /health/details.", code="invalid_token",
                               headers=(("www-authenticate", 'Bearer realm="sluice"'),))

    @staticmethod
    def headers() -> list[tuple[str, str]]:
        return _HEADERS

    def probes(self) -> dict[str, Probe]:
        """Path → probe."""
        return {"/health/live": self.live, "/health/ready": self.ready, "/health/startup": self.startup,
                "/health/details": self.details}


async def _loop_lag() -> float:
    """How late a zero-delay callback runs: the time other work holds this worker's event loop."""
    start = time.perf_counter()
    await asyncio.sleep(0)
    return time.perf_counter() - start
