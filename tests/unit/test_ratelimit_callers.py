"""Rate limits and quotas for authenticated callers: user and team scopes, a key's own policies and quotas."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sluice.config import RateLimitConfig
from sluice.errors import QuotaExceeded, RateLimited
from sluice.pipeline.quotas import Quotas, own_quota
from sluice.pipeline.ratelimit import Admission, RateLimits, own_policy
from sluice.state.quota_store import SqliteQuotaStore


@dataclass
class Caller:
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    policies: tuple[dict[str, Any], ...] = ()
    quotas: tuple[dict[str, Any], ...] = ()


@dataclass
class Request:
    key: str
    client: str = "127.0.0.1:5000"
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return f"Bearer {self.key}" if name == "authorization" else None


def limits(policies: list[dict[str, Any]], **extra: Any) -> RateLimits:
    return RateLimits(msgspec.convert({"policies": policies, **extra}, RateLimitConfig))


def outcomes(rl: RateLimits, calls: list[tuple[str, Caller]]) -> list[str]:
    seen = []
    for key, caller in calls:
        try:
            admission = rl.admit_local(Request(key), "/v1/chat/completions", "m", 100, 10, caller)  # type: ignore[arg-type]
            assert admission is None or isinstance(admission, Admission)
            seen.append("ok")
        except RateLimited as exc:
            seen.append(exc.message.split("'")[1])  # the policy named in the message
    return seen


def test_user_and_team_scopes_count_across_keys() -> None:
    rl = limits([{"name": "per-user", "scope": "user", "rate": 2, "period_s": 3600},
                 {"name": "per-team", "scope": "team", "rate": 3, "period_s": 3600}])
    alice_laptop = Caller("k1", user="alice", team="red")
    alice_ci = Caller("k2", user="alice", team="red")
    bob = Caller("k3", user="bob", team="red")
    carol = Caller("k4", user="carol", team="blue")
    anonymous = Caller("k5")
    assert outcomes(rl, [("sk-1", alice_laptop), ("sk-2", alice_ci), ("sk-2", alice_ci), ("sk-3", bob),
                         ("sk-3", bob), ("sk-4", carol), ("sk-5", anonymous)]) == \
        ["ok", "ok", "per-user", "ok", "per-team", "ok", "ok"]


def test_a_keys_own_policies_apply_to_it_alone_and_follow_its_changes() -> None:
    rl = limits([])
    strict = Caller("k1", policies=({"name": "own-rpm", "rate": 1, "period_s": 3600},))
    other = Caller("k2", policies=({"name": "own-rpm", "rate": 5, "period_s": 3600},))
    assert outcomes(rl, [("sk-a", strict), ("sk-a", strict), ("sk-b", other), ("sk-b", other)]) == \
        ["ok", "own:own-rpm", "ok", "ok"]
    loosened = Caller("k1", policies=({"name": "own-rpm-2", "rate": 10, "period_s": 3600},))  # a new version
    assert outcomes(rl, [("sk-a", loosened)]) == ["ok"]
    assert outcomes(rl, [("sk-a", Caller("k1"))]) == ["ok"]  # no policies of its own any more


def test_own_policies_and_quotas_are_checked() -> None:
    assert own_policy({"name": "p", "rate": 5}).scope.value == "key"
    for bad in ({"name": "p", "rate": 0}, {"name": "p", "rate": "fast"}, {"rate": 1},
                {"name": "p", "rate": 1, "unit": "dollars"}, {"name": "p", "rate": 1e308, "period_s": 1e-10}):
        with pytest.raises(ValueError, match="invalid rate-limit policy"):
            own_policy(bad)
    assert own_quota({"name": "q", "limit": 10, "period": "month"}).period.value == "month"
    for bad in ({"name": "q", "limit": -1}, {"name": "q", "limit": 1, "scope": "ip"}, {"name": "q"}):
        with pytest.raises(ValueError, match="invalid quota"):
            own_quota(bad)


def test_a_keys_own_quota_and_a_team_quota(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        config = msgspec.convert({"quota_store": str(tmp_path / "q.db"), "quotas": [
            {"name": "team-daily", "scope": "team", "limit": 3, "period": "day"}]}, RateLimitConfig)
        quotas = Quotas(config, SqliteQuotaStore(str(tmp_path / "q.db")))
        rl = RateLimits(config, None, quotas)
        capped = Caller("k1", team="red", quotas=({"name": "own-daily", "limit": 1},))
        teammate = Caller("k2", team="red")
        seen = []
        for key, caller in [("sk-a", capped), ("sk-a", capped), ("sk-b", teammate), ("sk-b", teammate),
                            ("sk-b", teammate)]:
            try:
                await rl.admit(Request(key), "/v1/chat/completions", "m", 100, 10, caller)  # type: ignore[arg-type]
                seen.append("ok")
            except QuotaExceeded as exc:
                seen.append(exc.message.split("'")[1])
        await rl.aclose()
        return seen

    assert asyncio.run(scenario()) == ["ok", "own:own-daily", "ok", "ok", "team-daily"]


def test_an_own_quota_named_like_a_config_quota_counts_apart_and_its_new_limit_applies(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        config = msgspec.convert({"quota_store": str(tmp_path / "q.db"), "quotas": [
            {"name": "daily", "scope": "key", "limit": 10, "period": "day"}]}, RateLimitConfig)
        rl = RateLimits(config, None, Quotas(config, SqliteQuotaStore(str(tmp_path / "q.db"))))
        seen = []
        for caller in [Caller("k1", quotas=({"name": "daily", "limit": 1},))] * 2 + \
                      [Caller("k1", quotas=({"name": "daily", "limit": 3},))] * 2:
            try:
                admission = await rl.admit(Request("sk-a"), "/v1/chat/completions", "m", 100, 10, caller)  # type: ignore[arg-type]
                assert admission is not None
                seen.append(dict(admission.headers)["x-sluice-quota-remaining-requests"])
            except QuotaExceeded as exc:
                seen.append(exc.message.split("'")[1])
        await rl.aclose()
        return seen

    # the key's own 'daily' (1, then raised to 3) and the config's 'daily' (10) are two counters
    assert asyncio.run(scenario()) == ["0", "own:daily", "1", "0"]
