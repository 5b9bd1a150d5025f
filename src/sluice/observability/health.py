"""Health probes for orchestrators (live, ready, startup) and an authenticated /health/details.

The probes are cheap and never touch an upstream provider.  A worker builds its
gateway (config snapshot, routing table, providers) before it accepts its first
connection, so once a probe answers at all, start-up is done and the config is
loaded.  Readiness checks that every model has a routable target and pings
each dependency the config uses (``depend``): the key store when
authentication is on (a key not cached yet needs it), the rate limits' Redis
when a policy fails closed without it, the auth Redis when signed requests fail
closed without it.  Those are *required*: one down, or hung past
``PROBE_TIMEOUT_S``, makes readiness 503, naming it and why in ``checks``.
The others (the rate limits' Redis under fail-open policies, the auth Redis of
change notices) are pinged too and reported, but a failure leaves the worker
ready: it serves without them.  The pings of one probe run at once, each
bounded by ``PROBE_TIMEOUT_S``, so a probe answers within about that long
whatever hangs.

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
from typing import TYPE_CHECKING, NamedTuple

import orjson

from ..errors import NotFound, Unauthorized
from ..routing import Router
from .process import process_usage

if TYPE_CHECKING:
    from ..context import Exchange

__all__ = ["PROBE_TIMEOUT_S", "Dependency", "Health", "Probe"]

PROBE_TIMEOUT_S = 1.0  # the longest one dependency's ping may take before it counts as down (hung)

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]

Probe = Callable[["Exchange"], Awaitable[tuple[int, bytes]]]


class Dependency(NamedTuple):
    ping: Callable[[], Awaitable[float]]  # one round trip: its seconds, or an exception when down
    required: bool  # down: not ready
    needed_for: str  # what it serves, said in the checks


class Health:
    def __init__(self, router: Router, *, details_token: str | None = None,
                 worker_state: Callable[[], dict[str, float]] | None = None) -> None:
        self._router = router
        self._token = details_token.encode() if details_token else None
        self._worker_state = worker_state
        self._started = time.time()
        self.dependencies: dict[str, Dependency] = {}  # name -> how to ping it, and whether it is required
        self.probe_timeout_s = PROBE_TIMEOUT_S

    def depend(self, name: str, ping: Callable[[], Awaitable[float]], *, required: bool, needed_for: str) -> None:
        """Pings ``name`` at each readiness probe; down and ``required``: not ready."""
        self.dependencies[name] = Dependency(ping, required, needed_for)

    async def live(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        return 200, b'{"status":"live"}'

    async def startup(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        return 200, b'{"status":"started"}'

    async def ready(self, ex: Exchange | None = None) -> tuple[int, bytes]:
        checks = {**self._checks(), **await self._dependencies()}
        ready = all(check["ok"] or check.get("required") is False for check in checks.values())
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
        """Every dependency pinged at once, each within ``probe_timeout_s``."""
        names = list(self.dependencies)
        states = await asyncio.gather(*(self._ping(self.dependencies[name]) for name in names))
        return dict(zip(names, states, strict=True))

    async def _ping(self, dependency: Dependency) -> dict[str, object]:
        state: dict[str, object] = {"required": dependency.required, "needed_for": dependency.needed_for}
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                latency = await dependency.ping()
        except TimeoutError:
            return {"ok": False, **state, "error": f"no answer within {self.probe_timeout_s:g}s (hung)"}
        except Exception as exc:
            return {"ok": False, **state, "error": (str(exc) or type(exc).__name__)[:300]}
        return {"ok": True, **state, "latency_ms": round(latency * 1000, 3)}

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
