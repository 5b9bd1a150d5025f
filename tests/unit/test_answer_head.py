"""The answer's head in one call (sluice._native.answer_head, compiled and pure): the same head as the steps it
replaced (the relayed headers, the JSON type, the renamed rate limits, the context's headers, who served it)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice._native import _pure_context, _pure_speedups
from sluice.server.relay import RELAYED_AS, relayed_as

try:
    from sluice._native import _context, _speedups
except ImportError:  # not built here
    _speedups = _context = None  # type: ignore[assignment]

NOT_BUILT = pytest.mark.skipif(_speedups is None, reason="extension not built")
IMPLEMENTATIONS = [
    pytest.param((_pure_speedups, _pure_context), id="pure"),
    pytest.param((_speedups, _context), id="compiled", marks=NOT_BUILT),
]

UPSTREAM = [(b"Content-Type", b"application/json; charset=utf-8"), (b"X-Request-Id", b"up-1"),
            (b"Date", b"Mon"), (b"openai-processing-ms", b"12"), (b"x-ratelimit-remaining-requests", b"99"),
            (b"Content-Encoding", b"identity"), (b"Set-Cookie", b"a=b"), (b"x-caf\xe9", b"\xe9t\xe9")]


def context(impl: Any, *, admission: Any = None, served: str | None = "gpt") -> Any:
    ctx = impl[1].RequestContext("req-1", 0.0)
    ctx.upstream_s = 0.25
    ctx.served_model = served
    ctx.admission = admission
    return ctx


def before(ctx: Any, upstream: list[tuple[bytes, bytes]], provider: str, attempts: int,
           json: bool) -> list[tuple[str, str]]:
    """The head as the server built it before, step by step (server/forward.py at ae7bcda)."""
    headers = [(relayed, value.decode("latin-1")) for name, value in upstream if (relayed := relayed_as(name))]
    if json:
        headers = [(n, v) for n, v in headers if n not in ("content-type", "content-encoding")]
        headers.append(("content-type", "application/json"))
    if ctx.admission is not None:
        headers = [(f"x-upstream-{n[2:]}" if n.startswith("x-ratelimit-") else n, v) for n, v in headers]
    served = (("x-sluice-model", ctx.served_model or ""), ("x-sluice-provider", provider),
              ("x-sluice-attempts", str(attempts)))
    return ctx.headers(*headers, *served)  # type: ignore[no-any-return]


def without_overhead(head: list[tuple[str, str]]) -> list[tuple[str, str]]:
    assert head[1][0] == "x-sluice-overhead-ms"
    return [head[0], *head[2:]]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("json", [False, True])
@pytest.mark.parametrize("admitted", [False, True])
@pytest.mark.parametrize("attempts", [1, 3, 15, 16, 40])
def test_the_head_is_the_one_the_steps_made(impl: Any, json: bool, admitted: bool, attempts: int) -> None:
    admission = SimpleNamespace(headers=[("x-ratelimit-limit-requests", "30")]) if admitted else None
    ctx = context(impl, admission=admission)
    head = impl[0].answer_head(ctx, UPSTREAM, RELAYED_AS, relayed_as, "mock", attempts, json)
    assert head[1] == ("x-sluice-overhead-ms", f"{ctx.overhead_s * 1000:.3f}")
    assert ctx.overhead_s == ctx.ttfb_s - 0.25 and ctx.ttfb_s > 0
    assert without_overhead(head) == without_overhead(before(ctx, UPSTREAM, "mock", attempts, json))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_head_in_order(impl: Any) -> None:
    admission = SimpleNamespace(headers=[("x-ratelimit-limit-requests", "30")])
    ctx = context(impl, admission=admission, served=None)
    head = impl[0].answer_head(ctx, UPSTREAM, RELAYED_AS, relayed_as, "mock", 2, True)
    assert [name for name, _ in head] == [
        "x-request-id", "x-sluice-overhead-ms", "x-content-type-options", "x-upstream-request-id",
        "openai-processing-ms", "x-upstream-ratelimit-remaining-requests", "x-caf\xe9", "content-type",
        "x-sluice-model", "x-sluice-provider", "x-sluice-attempts", "x-ratelimit-limit-requests"]
    assert head[-5:] == [("content-type", "application/json"), ("x-sluice-model", ""), ("x-sluice-provider", "mock"),
                         ("x-sluice-attempts", "2"), ("x-ratelimit-limit-requests", "30")]
    assert ("x-caf\xe9", "\xe9t\xe9") in head  # latin-1, both ways


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_no_provider_no_served_headers_and_names_from_the_callers_map(impl: Any) -> None:
    ctx = context(impl)
    names: dict[bytes, str] = {b"a": "kept", b"b": ""}
    asked: list[bytes] = []

    def resolve(name: bytes) -> str:
        asked.append(name)
        return name.decode()

    head = impl[0].answer_head(ctx, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], names, resolve, None, 1, False)
    assert without_overhead(head) == [("x-request-id", "req-1"), ("x-content-type-options", "nosniff"),
                                      ("kept", "1"), ("c", "3")]
    assert asked == [b"c"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_only_the_context_of_its_implementation(impl: Any) -> None:
    if impl[0] is _pure_speedups:
        pytest.skip("the pure twin reads any object's attributes")
    with pytest.raises(TypeError):
        impl[0].answer_head(_pure_context.RequestContext("r", 0.0), [], {}, relayed_as, None, 1, False)


@NOT_BUILT
@given(upstream_s=st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e6, 1e6),
       upstream=st.lists(st.tuples(st.sampled_from([b"Content-Type", b"x-ratelimit-a", b"Date", b"x-request-id",
                                                     b"content-encoding", b"X-Other"]), st.binary(max_size=8)),
                         max_size=8),
       json=st.booleans(), admitted=st.booleans(), attempts=st.integers(0, 20),
       served=st.none() | st.text(max_size=5))
def test_twins_agree(upstream_s: float, upstream: list[tuple[bytes, bytes]], json: bool, admitted: bool,
                     attempts: int, served: str | None) -> None:
    admission = SimpleNamespace(headers=[("x-ratelimit-limit-requests", "1")]) if admitted else None
    heads = []
    for impl in ((_pure_speedups, _pure_context), (_speedups, _context)):
        ctx = context(impl, admission=admission, served=served)
        ctx.upstream_s = upstream_s
        head = impl[0].answer_head(ctx, upstream, RELAYED_AS, relayed_as, "p", attempts, json)
        ms = ctx.overhead_s * 1000
        assert head[1] == ("x-sluice-overhead-ms", f"{ms:.3f}") or (math.isnan(ms) and head[1][1] == "nan")
        heads.append(without_overhead(head))
    assert heads[0] == heads[1]
