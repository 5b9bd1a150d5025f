"""Abuse protection's stages (``abuse:``, docs/abuse.md), built once from the config; absent parts, no stage.

- ``reputation`` (``ReputationStage``): a client address on an IP reputation list is refused (403
  ``ip_listed``) before auth, on every route that has auth's place (not the health probes, /metrics,
  /openapi.json);
- ``pow`` (sluice.pipeline.pow): with auth off, in auth's place: a proof-of-work challenge under flood;
- ``anomaly`` (sluice.pipeline.anomaly): with auth on, after ``model_access`` on the model routes and after
  the passthrough's request stage: per-key spikes.

``AbuseStages`` builds them and hands their counters to the metrics; server/routes.py places them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..auth.reputation import Reputation
from ..context import Exchange, RequestContext
from ..errors import AddressListed
from .anomaly import AnomalyStage
from .pow import PowStage
from .stage import Stage

if TYPE_CHECKING:
    from ..config import Config
    from ..config.model import ReputationConfig

__all__ = ["AbuseStages", "ReputationStage"]


class ReputationStage(Stage):
    """Refuses listed client addresses; re-reads changed list files every ``refresh_s`` (off the event loop)."""

    name = "ip_reputation"

    def __init__(self, config: ReputationConfig, client_ip: Callable[[Exchange], str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reputation = Reputation(config.files)  # read now: listed addresses are refused from the first request
        self.client_ip = client_ip
        self.refresh_s = config.refresh_s
        self._clock = clock
        self._due = clock() + config.refresh_s
        self._refreshing: asyncio.Future[bool] | None = None
        self.refused: dict[tuple[str, ...], int] = {(): 0}  # sluice_ip_reputation_refused_total

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        if self._clock() >= self._due:
            self._refresh()
        ip = self.client_ip(ex)
        if ip in self.reputation.ranges:
            self.refused[()] += 1
            raise AddressListed(f"Requests from your address ({ip[:64]}) are not allowed.", code="ip_listed")

    def _refresh(self) -> None:
        """Starts one re-read in a thread (never two at once); the table is swapped when it is done."""
        self._due = self._clock() + self.refresh_s
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().run_in_executor(None, self.reputation.refresh)

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], Callable[[], dict[tuple[str, ...], int]]]]:
        """For Metrics.counters."""
        reputation = self.reputation
        return {
            "sluice_ip_reputation_refused": ("Requests refused (403) because their client address is on an IP "
                                             "reputation list.", (), lambda: self.refused),
            "sluice_ip_reputation_reloads": ("IP reputation list files read, by result (ok; failed: the last good "
                                             "contents kept).", ("result",), lambda: reputation.reloads),
        }

    def describe(self) -> str:
        files = len(self.reputation.files)
        return f"ip_reputation ({files} file{'s' * (files != 1)}, refreshed every {self.refresh_s:g}s)"


class AbuseStages:
    """The configured stages, by where they go: ``screen`` before auth, ``challenge`` in auth's place when auth
    is off, ``keys`` after the model check when it is on."""

    def __init__(self, config: Config, client_ip: Callable[[Exchange], str], *,
                 audit: Callable[..., None] | None = None, metrics: Any = None) -> None:
        abuse = config.abuse
        self.screen: list[Stage] = []
        self.challenge: list[Stage] = []
        self.keys: list[Stage] = []
        stages: list[ReputationStage | PowStage | AnomalyStage] = []
        if abuse.reputation is not None:
            stages.append(reputation := ReputationStage(abuse.reputation, client_ip))
            self.screen.append(reputation)
        if abuse.pow is not None:
            stages.append(pow_stage := PowStage(abuse.pow))
            self.challenge.append(pow_stage)
        if abuse.anomaly is not None:
            stages.append(anomaly := AnomalyStage(abuse.anomaly, audit=audit, client_ip=client_ip))
            self.keys.append(anomaly)
        if metrics is not None:
            for stage in stages:
                metrics.counters.update(stage.counters())
