"""The one-step admission of local policies (ratelimit._take_plain) answers as the general path does: the same
headers as ``_state_headers`` of what it took, the same refusals, nothing taken from one policy when another
refuses; its header texts from tables equal the formatted ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from sluice.config import RateLimitConfig
from sluice.errors import RateLimited
from sluice.pipeline import ratelimit
from sluice.pipeline.ratelimit import Admission, RateLimits


@dataclass
class Request:
    key: str
    client: str = "127.0.0.1:5000"

    def header(self, name: str) -> str | None:
        return f"Bearer {self.key}" if name == "authorization" else None


def limits(policies: list[dict[str, Any]]) -> RateLimits:
    return RateLimits(msgspec.convert({"policies": policies}, RateLimitConfig))


def admit(rl: RateLimits, key: str = "sk-a") -> Admission:
    admission = rl.admit_local(Request(key), "/v1/chat/completions", "m", 400, 50)  # type: ignore[arg-type]
    assert isinstance(admission, Admission)
    return admission


@pytest.mark.parametrize("policies", [
    [{"name": "one", "scope": "key", "rate": 3, "period_s": 60}],
    [{"name": "win", "scope": "key", "rate": 5, "period_s": 60, "algorithm": "sliding_window"}],
    [{"name": "soft", "scope": "key", "rate": 4, "period_s": 60, "soft_limit": 0.5}],
    [{"name": "req", "scope": "key", "rate": 3, "period_s": 60},
     {"name": "tok", "scope": "global", "unit": "tokens", "rate": 100_000, "period_s": 60}],
])
def test_the_headers_are_the_general_paths(policies: list[dict[str, Any]]) -> None:
    rl = limits(policies)
    for _ in range(3):
        admission = admit(rl)
        assert admission.headers == ratelimit._state_headers(admission.taken)[0]
        assert admission.settles is any(p.get("unit") == "tokens" for p in policies)


def test_a_refusal_takes_nothing_from_the_other_policies() -> None:
    rl = limits([{"name": "wide", "scope": "global", "rate": 10, "period_s": 60},
                 {"name": "narrow", "scope": "key", "rate": 1, "period_s": 3600}])
    admit(rl)
    with pytest.raises(RateLimited, match="narrow") as refused:
        admit(rl)
    assert dict(refused.value.headers)["x-ratelimit-remaining-requests"] == "0"
    wide = rl.policies[0]
    assert wide.local.remaining("global", 0.0) == pytest.approx(9, abs=0.01)  # the refused request took nothing
    assert wide.counts == {"admitted": 1} and rl.policies[1].counts == {"admitted": 1, "rejected": 1}


def test_the_texts_from_tables_are_the_formatted_ones() -> None:
    for ms in range(1, 1001):
        seconds = ms / 1000 - 1e-7
        assert ratelimit.duration(seconds) == f"{math.ceil(seconds * 1000)}ms"
    for remaining in (-3.0, 0.0, 0.4, 1.0, 7.9, 1023.5, 1024.0, 5e9):
        assert ratelimit._count_text(remaining) == str(max(0, math.floor(remaining)))
