"""Active health checks: a cheap request to each deployment on an interval, off the request path.

Every ``interval_s`` a background task sends each deployment's provider a cheap
request (``Provider.health_request``: the model list) at the deployment's base
URL with the deployment's key, bounded by ``timeout_s``.  Deployments sharing
a (base URL, key) across models are checked once.  With ``only_unhealthy``
(the default) only deployments whose breaker is not closed are checked.

The verdict goes to the breakers:

- an answer below 400: an open breaker turns half-open at once, so real traffic
  probes it without waiting out ``open_s`` (half-open and closed ones stay);
- 429: the key rests (Retry-After, else the provider's ``key_cooldown_s``), the
  breaker is left alone: the deployment answers, its key is out of quota;
- anything else (connect error, timeout, another status): an open breaker stays
  open for another ``open_s``, a half-open one opens, a closed one counts a
  failure as a request would.

Checks act on breakers only: with ``resilience.breaker.enabled`` false there
is nothing to act on, and ``start`` starts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..config import HealthCheckConfig
from ..providers import Provider
from ..tasks import cancel_and_wait
from ..upstream import UpstreamClient
from .deployment import Deployment
from .table import Router

__all__ = ["HealthChecker"]

log = logging.getLogger("sluice.routing.health")

_BODY_LIMIT = 4 * 1024 * 1024  # a model list; read so that the connection can be reused
Auth = tuple[tuple[str, str], ...]


class HealthChecker:
    def __init__(self, router: Router, client_factory: Callable[[], UpstreamClient], config: HealthCheckConfig,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._router = router
        self._client_factory = client_factory
        self._config = config
        self._clock = clock  # the request path's clock: breakers compare its readings
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.passed = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self._config.interval_s > 0 and any(d.breaker is not None for _, d in self._router.deployments())

    def start(self) -> None:
        """Starts the checks in the running loop (nothing when they are off)."""
        if self._task is None and self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sluice-health-checks")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval_s)
            try:
                await self.check_once()
            except Exception:  # a round that broke must not end the checks
                log.exception("health check round failed")

    def due(self) -> dict[tuple[Provider, Auth], list[Deployment]]:
        """The deployments to check this round, grouped by (provider at its base URL, key)."""
        groups: dict[tuple[Provider, Auth], list[Deployment]] = {}
        only_unhealthy = self._config.only_unhealthy
        for _, d in self._router.deployments():
            breaker = d.breaker
            if breaker is None or (only_unhealthy and breaker.closed):
                continue
            groups.setdefault((d.provider, d.auth), []).append(d)
        return groups

    async def check_once(self) -> int:
        """One round: every due (base URL, key) checked at once; the number checked."""
        groups = self.due()
        if groups:
            await asyncio.gather(*(self._check(provider, auth, deployments)
                                   for (provider, auth), deployments in groups.items()))
        self.rounds += 1
        return len(groups)

    async def _check(self, provider: Provider, auth: Auth, deployments: list[Deployment]) -> None:
        status, retry_after = await self._ask(provider, auth)
        now = self._clock()
        if status is not None and status < 400:
            self.passed += 1
            for d in deployments:
                assert d.breaker is not None
                d.breaker.probe_passed(now)
        elif status == 429:
            self.passed += 1
            for d in deployments:
                d.rest(now, retry_after)
        else:
            self.failed += 1
            for d in deployments:
                assert d.breaker is not None
                d.breaker.probe_failed(now)
        log.debug("health check %s: %s", deployments[0].label, status)

    async def _ask(self, provider: Provider, auth: Auth) -> tuple[int | None, float | None]:
        """The status of the health request (None: no answer in time) and its Retry-After seconds."""
        request = provider.health_request(auth)
        timeout = self._config.timeout_s
        try:
            async with asyncio.timeout(timeout):
                client = self._client_factory()
                response = await client.request(request.origin, request.method, request.target, request.headers,
                                                request.body, deadline=client.loop.time() + timeout)
                status = response.status
                retry_after = response.header(b"retry-after")
                try:
                    await response.read(_BODY_LIMIT)
                except Exception:  # the status is the verdict; the body only frees the connection
                    response.abort()
        except Exception as exc:  # refused, reset, timed out: no answer
            log.debug("health check to %s failed: %r", provider.name, exc)
            return None, None
        return status, _seconds(retry_after)


def _seconds(value: bytes | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the provider's default rest
        return None
