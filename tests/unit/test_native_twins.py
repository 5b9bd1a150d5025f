"""The compiled helpers and their pure-Python twins: same cases, same answers."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure

try:
    from sluice._native import _speedups
except ImportError:  # not built here
    _speedups = None

IMPLEMENTATIONS = [
    pytest.param(_pure, id="pure"),
    pytest.param(_speedups, id="compiled",
                 marks=pytest.mark.skipif(_speedups is None, reason="extension not built")),
]


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert _speedups is not None, "the Cython extension did not build or import"
        assert native.IMPLEMENTATION == "compiled"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("value", "expected"), [
    ("abc", True), ("A" * 128, True), ("A" * 129, False), ("", False), ("a b", False), ("a\tb", False),
    ("a\x7fb", False), ("caf\u00e9", False), ("!~", True), ("req_01HZX-9", True), ("\x00", False),
])
def test_valid_request_id(impl, value: str, expected: bool) -> None:
    assert impl.valid_request_id(value) is expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_ids_are_unique_hex(impl) -> None:
    ids = impl.RequestIds(12345)
    seen = {ids.next() for _ in range(10000)}
    assert len(seen) == 10000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in seen)
    assert all(i.startswith(f"{12345:016x}") for i in seen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_id_seed_bounds(impl) -> None:
    impl.RequestIds(2**64 - 1).next()
    with pytest.raises(OverflowError):
        impl.RequestIds(2**64)
    with pytest.raises(OverflowError):
        impl.RequestIds(-1)


@pytest.mark.skipif(_speedups is None, reason="extension not built")
@given(st.text(max_size=200))
def test_twins_agree_on_validation(value: str) -> None:
    assert _speedups.valid_request_id(value) == _pure.valid_request_id(value)


@pytest.mark.skipif(_speedups is None, reason="extension not built")
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=50))
def test_twins_agree_on_id_sequences(seed: int, count: int) -> None:
    compiled, pure = _speedups.RequestIds(seed), _pure.RequestIds(seed)
    assert [compiled.next() for _ in range(count)] == [pure.next() for _ in range(count)]


def test_generated_ids_pass_validation() -> None:
    ids = native.RequestIds(7)
    assert all(native.valid_request_id(ids.next()) for _ in range(100))
