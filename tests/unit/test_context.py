"""The request context and its twin: the same fields, defaults and headers; the compiled one's fields are C numbers
and, to Python, slots (member descriptors, as ``__slots__`` makes) for the objects."""

from __future__ import annotations

import os
import pickle
import re
import time
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure_context

try:
    from sluice._native import _context
except ImportError:  # not built here
    _context = None  # type: ignore[assignment]

NOT_BUILT = pytest.mark.skipif(_context is None, reason="extension not built")
CONTEXTS = [
    pytest.param(_pure_context, id="pure"),
    pytest.param(_context, id="compiled", marks=NOT_BUILT),
]

FLOATS = ("started", "upstream_s", "overhead_s", "ttfb_s", "ttft_s", "total_s", "at")
INTS = ("status", "retries", "tokens_in", "tokens_out")
FIELDS = _pure_context.RequestContext.__slots__
OBJECTS = tuple(name for name in FIELDS if name not in (*FLOATS, *INTS, "usage_asked"))
DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(OBJECTS),
    "request_id": "req-1", "started": 12.5, "route": "/v1/chat/completions", "wire": "openai",
    "upstream_s": 0.0, "overhead_s": -1.0, "ttfb_s": -1.0, "ttft_s": -1.0, "usage_asked": False,
    "security": (("x-content-type-options", "nosniff"),), "retries": 0, "at": 0.0, "method": "", "path": "",
    "status": 0, "total_s": 0.0, "tokens_in": -1, "tokens_out": -1,
}


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert _context is not None, "the Cython extensions did not build or import"
        assert native.RequestContext is _context.RequestContext  # type: ignore[comparison-overlap]


def test_the_context_is_picked_with_the_helpers() -> None:
    """All compiled or all pure: the helpers that take a context take the one sluice._native exports."""
    compiled = native.IMPLEMENTATION == "compiled"
    assert (native.RequestContext is (_context.RequestContext if compiled else _pure_context.RequestContext))
    assert native.SECURITY_HEADERS == _pure_context.SECURITY_HEADERS
    ctx = native.RequestContext("r", time.perf_counter(), "/v1/chat/completions")
    native.finish(ctx, 200)
    assert native.RequestStats({"m"}, (0.1,), (0.1,), (10,)).observe_context(ctx, ctx.route, 200, ctx.total_s)


@pytest.mark.parametrize("impl", CONTEXTS)
def test_a_new_context_has_the_twins_defaults(impl: Any) -> None:
    ctx = impl.RequestContext("req-1", 12.5, "/v1/chat/completions")
    assert {name: getattr(ctx, name) for name in FIELDS} == DEFAULTS
    assert [type(getattr(ctx, name)) for name in FLOATS] == [float] * len(FLOATS)
    assert [type(getattr(ctx, name)) for name in INTS] == [int] * len(INTS)
    assert ctx.security is impl.SECURITY_HEADERS
    assert impl.RequestContext("r", 0.0).route == ""


@pytest.mark.parametrize("impl", CONTEXTS)
def test_every_field_is_read_and_written_by_attribute(impl: Any) -> None:
    ctx = impl.RequestContext("r", 0.0)
    for i, name in enumerate(FIELDS):
        value: Any = float(i) + 0.5 if name in FLOATS else i if name in INTS else True if name == "usage_asked" \
            else object()
        setattr(ctx, name, value)
        assert getattr(ctx, name) == value
    with pytest.raises(AttributeError):
        ctx.unknown = 1  # no instance dict: the declared fields only


@pytest.mark.parametrize("impl", CONTEXTS)
def test_headers(impl: Any) -> None:
    class Admission:
        headers = [("x-ratelimit-remaining-requests", "9")]

    before = time.perf_counter()
    ctx = impl.RequestContext("req-1", before - 0.25)  # started a quarter second ago
    ctx.upstream_s = 0.2
    headers = ctx.headers(("x-a", "1"), ("x-b", "2"))
    after = time.perf_counter()
    assert [name for name, _ in headers] == ["x-request-id", "x-sluice-overhead-ms", "x-content-type-options",
                                            "x-a", "x-b"]
    assert headers[0] == ("x-request-id", "req-1") and headers[2:] == [*impl.SECURITY_HEADERS, ("x-a", "1"),
                                                                       ("x-b", "2")]
    assert 0.25 <= ctx.ttfb_s <= after - before + 0.25  # measured between the two readings: no slack to flake
    assert ctx.overhead_s == pytest.approx(ctx.ttfb_s - 0.2)
    assert re.fullmatch(r"\d+\.\d{3}", headers[1][1]) and headers[1][1] == f"{ctx.overhead_s * 1000:.3f}"
    ctx.admission, ctx.security = Admission(), (("x-frame-options", "DENY"),)
    assert ctx.headers()[2:] == [("x-frame-options", "DENY"), ("x-ratelimit-remaining-requests", "9")]


@pytest.mark.parametrize("impl", CONTEXTS)
def test_a_deleted_object_field_reads_as_missing(impl: Any) -> None:
    ctx = impl.RequestContext("r", 0.0)
    del ctx.admission
    with pytest.raises(AttributeError, match="admission"):
        ctx.admission  # noqa: B018
    with pytest.raises(AttributeError, match="admission"):
        ctx.headers()
    ctx.admission = None
    assert ctx.headers()[0] == ("x-request-id", "r")


@NOT_BUILT
def test_the_compiled_object_fields_are_slots_to_python() -> None:
    """Member descriptors (LOAD_ATTR and STORE_ATTR specialise on them) for the objects, properties for the C
    fields; none is missing."""
    cls = _context.RequestContext
    kinds = {name: type(vars(cls)[name]) for name in FIELDS}
    assert {name for name, kind in kinds.items() if kind is types.MemberDescriptorType} == set(OBJECTS)
    assert {name for name, kind in kinds.items() if kind is types.GetSetDescriptorType} == {
        *FLOATS, *INTS, "usage_asked"}
    assert {name for name, value in vars(cls).items()
            if isinstance(value, (types.MemberDescriptorType, types.GetSetDescriptorType))} == set(FIELDS)


@NOT_BUILT
def test_the_compiled_fields_hold_c_numbers() -> None:
    ctx = _context.RequestContext("r", 1)
    assert ctx.started == 1.0 and type(ctx.started) is float
    ctx.status, ctx.usage_asked = True, 1  # type: ignore[assignment]
    assert (ctx.status, ctx.usage_asked) == (1, True) and type(ctx.status) is int
    with pytest.raises(OverflowError):
        ctx.tokens_in = 2**70
    with pytest.raises(TypeError):
        ctx.status = "200"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        ctx.upstream_s = "0.5"  # type: ignore[assignment]
    with pytest.raises(NotImplementedError):
        del ctx.started  # a C field cannot be deleted (an object field can, as a slot)
    with pytest.raises(TypeError):
        pickle.dumps(ctx)
    with pytest.raises(TypeError):
        type("Sub", (_context.RequestContext,), {})  # final: the compiled code reads exactly this layout


_NAMES = st.sampled_from(FIELDS)


def _value(name: str) -> st.SearchStrategy[Any]:
    if name in FLOATS:
        return st.floats(allow_nan=False)
    if name in INTS:
        return st.integers(-2**63, 2**63 - 1)
    if name == "usage_asked":
        return st.booleans()
    return st.none() | st.text(max_size=5) | st.integers() | st.binary(max_size=5)


@NOT_BUILT
@given(st.lists(_NAMES.flatmap(lambda name: st.tuples(st.just(name), _value(name))), max_size=60),
       st.lists(st.sampled_from(OBJECTS), max_size=3))
def test_twins_agree_on_sequences_of_writes_and_deletes(writes: list[tuple[str, Any]], deleted: list[str]) -> None:
    compiled, pure = _context.RequestContext("r", 0.5, "/x"), _pure_context.RequestContext("r", 0.5, "/x")
    for ctx in (compiled, pure):
        for name, value in writes:
            setattr(ctx, name, value)
        for name in dict.fromkeys(deleted):
            delattr(ctx, name)

    def state(ctx: Any) -> dict[str, Any]:
        return {name: getattr(ctx, name, "<deleted>") for name in FIELDS}

    assert state(compiled) == state(pure)
