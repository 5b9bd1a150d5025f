"""The JSON check before decoding (ext/_jsoncheck.pyx and its pure twin): duplicate keys, nesting, UTF-8,
numbers beyond a double's range."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure_jsoncheck

try:
    from sluice._native import _jsoncheck
except ImportError:  # not built here
    _jsoncheck = None  # type: ignore[assignment]

TWINS = [pytest.param(_pure_jsoncheck, id="pure"),
         pytest.param(_jsoncheck, id="compiled", marks=pytest.mark.skipif(_jsoncheck is None, reason="not built"))]
BOTH = [_pure_jsoncheck] + ([_jsoncheck] if _jsoncheck is not None else [])


def test_the_package_exports_one_of_them() -> None:
    assert native.json_problem in (_pure_jsoncheck.json_problem, getattr(_jsoncheck, "json_problem", None))


@pytest.mark.parametrize("impl", TWINS)
@pytest.mark.parametrize(("body", "expected"), [
    (b'{"model": "a", "messages": [{"role": "user", "content": "hi"}]}', None),
    (b'{"model": "a", "model": "b"}', ("duplicate", "model")),
    (b'{"a": {"b": 1, "c": {"b": 1}, "b": 2}}', ("duplicate", "a.b")),
    (b'{"m": [{"x": 1}, {"x": 1, "y": [], "x": 2}]}', ("duplicate", "m[1].x")),
    (b'[[{"k": 1}], [{"k": 1, "k": 2}]]', ("duplicate", "[1][0].k")),
    (b'{"mo\\u0064el": "a", "model": "b"}', ("duplicate", "model")),  # escapes decoded before comparing
    (b'{"\\u00e9": 1, "\xc3\xa9": 2}', ("duplicate", "\u00e9")),
    (b'{"a\\"b": 1, "a\\u0022b": 2}', ("duplicate", 'a"b')),
    (b'{"": 1, "": 2}', ("duplicate", "")),
    (b'{"a": "model", "b": "model", "c": ["model", "model"]}', None),  # values are not keys
    (b'{"a": {"x": 1}, "b": {"x": 1}}', None),  # nor are keys of sibling objects one object's
    (b'{"a": 1, "b": "\xff"}', ("utf8", "")),
    (b'{"a": 1, "a": 2, "b": "\xed\xa0\x80"}', ("utf8", "")),  # bad UTF-8 anywhere comes first
    (b'{"a": "\xf0\x9f\x98\x80", "b": "\xe2\x82\xac"}', None),
    (b'{"k": ' + b"[" * 4 + b"]" * 4 + b"}", ("depth", "k[0][0][0]")),
    (b"[" * 5 + b"]" * 5, ("depth", "[0][0][0][0]")),
    (b"[" * 4 + b"]" * 4, None),
    (b"", None), (b"not json", None), (b'{"a', None), (b'{"a": "b\\', None), (b"}}]]{", None),  # left to msgspec
    # Numbers a double cannot hold (orjson refuses them when it re-reads the body), and the path to them.
    (b'{"seed": 1e400}', ("number", "seed")),
    (b'{"a": [1, {"b": -1E+999}]}', ("number", "a[1].b")),
    (b'{"n": ' + b"9" * 309 + b"}", ("number", "n")),
    (b'{"n": 0.' + b"0" * 5 + b"1e315}", ("number", "n")),
    (b'{"n": 1.7976931348623159e308}', ("number", "n")),  # just past DBL_MAX: rounds to infinity
    (b"1e400", ("number", "")),
    (b'{"a": 1e400, "a": 2}', ("number", "a")),  # the first problem the scan meets
    (b'{"a": 1, "a": 1e400}', ("duplicate", "a")),
    (b'{"a": 1e400, "b": "\xff"}', ("utf8", "")),
    # ... and the numbers it can: below DBL_MAX, beyond 64 bits (a float to orjson), too small (zero).
    (b'{"n": 1.7976931348623157e308, "m": 1.7976931348623158e308, "k": 1' + b"0" * 308 + b"}", None),
    (b'{"n": 18446744073709551616, "m": -9223372036854775809, "k": 1' + b"1" * 300 + b"}", None),
    (b'{"n": 1e-400, "m": -1e-99999, "k": 0e400, "z": 0.0e99999999999999999999, "w": 1' + b"1" * 400 + b"e-300}",
     None),
    (b'{"t": 0.7, "p": -1.5e-5, "x": [1e10, 2E+300, -1.25e308]}', None),
    # A run that is no JSON number is left to msgspec.
    (b'{"n": 1e400e1, "m": --1e400, "k": 1.e400, "j": 1e+}', None),
])
def test_cases(impl: Any, body: bytes, expected: tuple[str, str] | None) -> None:
    assert impl.json_problem(body, 4) == expected


@pytest.mark.parametrize("impl", TWINS)
@pytest.mark.parametrize("number", ["1e400", "-1e999", "9" * 309, "1.8e308", "0.01e311", "1" * 400 + ".5e-90"])
def test_infinite_numbers_are_what_float_rounds_to_infinity(impl: Any, number: str) -> None:
    assert math.isinf(float(number))
    assert impl.json_problem(b'{"x": [%s]}' % number.encode(), 4) == ("number", "x[0]")


@given(st.from_regex(r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,4})?([eE][-+]?[0-9]{1,4})?", fullmatch=True)
       | st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.integers().map(str))
def test_a_number_is_refused_exactly_when_orjson_would_refuse_it(number: str) -> None:
    body = b'{"x": ' + number.encode() + b"}"
    try:
        orjson.loads(body)
        refused = False
    except orjson.JSONDecodeError:
        refused = True
    for impl in BOTH:
        assert (impl.json_problem(body, 4) == ("number", "x")) is refused


@pytest.mark.parametrize("impl", TWINS)
def test_a_large_object_is_checked_by_hash(impl: Any) -> None:
    keys = [f'"k{i}": {i}' for i in range(5000)]
    assert impl.json_problem(("{" + ", ".join(keys) + "}").encode(), 128) is None
    assert impl.json_problem(("{" + ", ".join([*keys, '"k1234": 0']) + "}").encode(), 128) == ("duplicate", "k1234")
    nested = '{"outer": {' + ", ".join(keys[:40]) + ', "inner": {"k1": 1}, ' + ", ".join(keys[40:80]) + "}}"
    assert impl.json_problem(nested.encode(), 128) is None


@pytest.mark.parametrize("impl", TWINS)
@pytest.mark.parametrize("depth", [0, 257, -1])
def test_the_limit_is_bounded(impl: Any, depth: int) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        impl.json_problem(b"{}", depth)


def _strict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise KeyError("duplicate")
    return dict(pairs)


KEYS = st.sampled_from(["a", "b", "model", "\u00e9", "\\u0061"])
VALUES = st.recursive(st.none() | st.integers() | st.text(max_size=12),
                      lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(KEYS, inner), max_size=4),
                      max_leaves=12)


def _text(value: Any) -> str:
    """JSON text, keys written as given (so "\\u0061" stays an escape of "a") and duplicates kept."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        return "{" + ", ".join(f'"{k}": {_text(v)}' for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@given(VALUES)
def test_duplicates_are_what_a_strict_parser_finds(value: Any) -> None:
    body = _text(value).encode()
    try:
        json.loads(body, object_pairs_hook=_strict)
        duplicate = False
    except KeyError:
        duplicate = True
    for impl in BOTH:
        problem = impl.json_problem(body, 256)
        assert (problem is not None and problem[0] == "duplicate") is duplicate


PIECES = st.sampled_from([b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b'"a"', b'"a":1', b'"\\u0061"', b" ",
                          b"x" * 9, b"1e400", b"-", b"9" * 150, b"e", b".", b"+", b"0",
                          b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\\\xc3\xa9"])


@given(st.lists(PIECES, max_size=40), st.sampled_from([1, 2, 3, 256]))
def test_the_twins_agree_on_any_bytes(pieces: list[bytes], depth: int) -> None:
    if _jsoncheck is None:
        pytest.skip("not built")
    body = b"".join(pieces)
    assert _jsoncheck.json_problem(body, depth) == _pure_jsoncheck.json_problem(body, depth)
