"""Pure-Python twin of ext/_jsoncheck.pyx (same API, same results): what a JSON body has that the gateway
refuses and msgspec does not check.

``json_problem(body, max_depth)`` is None, or the first problem, in this order:

- ``("utf8", "")``: the body is not UTF-8 (msgspec does not look inside the strings of fields it skips,
  and a later parse of the whole body, orjson's, would fail on them);
- ``("depth", path)``: an object or array opened at ``max_depth`` levels (the top object is level 1);
  ``path`` leads to it (``tools[0].function.parameters``);
- ``("duplicate", path)``: a key an object already has, at any level, compared as decoded text
  (``"model"`` and ``"mo\\u0064el"`` are one key); ``path`` ends with the key (``messages[0].role``);
- ``("number", path)``: a number beyond a double's range (``1e400``, ``-1e999``, an integer of 309 digits
  or more that rounds to infinity): msgspec keeps or skips it in a field it does not type, orjson (which
  re-reads the body to rename its model or translate it) refuses it.  ``path`` leads to it.  Only the
  numbers a double cannot hold: orjson reads an integer beyond 64 bits as a float, a float too small
  as zero.

depth, duplicate and number problems are reported in the order the scan meets them.

The scan reads tokens only: strings (with their escapes), ``{ } [ ] ,`` and numbers (a run of
``0-9 . e E + -`` that starts with a digit or a minus); everything else is skipped, so malformed JSON is
not reported here but by the decode that follows (a number run that is no JSON number included).
"""

from __future__ import annotations

import math
import re

import msgspec

__all__ = ["MAX_DEPTH_LIMIT", "json_problem"]

MAX_DEPTH_LIMIT = 256  # the compiled scan keeps its levels in a fixed array of this size

# A string (group 1: its content, to the closing quote or the end of the body), a structural character or
# a number's run of bytes.
_TOKENS = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*\\?)(?:"|\Z)|[{}\[\],]|[-0-9][-+.eE0-9]*', re.S)
_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_STRING, _OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY = 0x22, 0x7B, 0x5B, 0x7D, 0x5D
_STRUCTURE = frozenset(b'"{}[],')


def canonical_key(raw: bytes) -> bytes:
    """An escaped key as the text it stands for (UTF-8); as it is when it is no valid JSON string."""
    try:
        return msgspec.json.decode(b'"' + raw + b'"', type=str).encode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return raw


class _Level:
    __slots__ = ("current", "index", "is_object", "keys")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.keys: set[bytes] = set()
        self.current: bytes | None = None  # the object's latest key
        self.index = 0  # the array's element


def _path(levels: list[_Level], last: bytes | None) -> str:
    parts: list[str] = []
    for level in levels:
        if not level.is_object:
            parts.append(f"[{level.index}]")
        elif level.current is not None:
            parts.append(("." if parts else "") + level.current.decode("utf-8", "replace"))
    if last is not None:
        parts.append(("." if parts else "") + last.decode("utf-8", "replace"))
    return "".join(parts)


def json_problem(body: bytes, max_depth: int) -> tuple[str, str] | None:
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be 1..{MAX_DEPTH_LIMIT}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return ("utf8", "")
    levels: list[_Level] = []
    expect_key = False
    for token in _TOKENS.finditer(body):
        char = body[token.start()]
        if char == _STRING:
            if expect_key:
                expect_key = False
                key = token.group(1)
                if b"\\" in key:
                    key = canonical_key(key)
                level = levels[-1]
                if key in level.keys:
                    return ("duplicate", _path(levels[:-1], key))
                level.keys.add(key)
                level.current = key
        elif char in (_OPEN_OBJECT, _OPEN_ARRAY):
            if len(levels) == max_depth:
                return ("depth", _path(levels, None))
            levels.append(_Level(char == _OPEN_OBJECT))
            expect_key = char == _OPEN_OBJECT
        elif char not in _STRUCTURE:  # a number
            number = token.group()
            if _NUMBER.fullmatch(number) and math.isinf(float(number)):
                return ("number", _path(levels, None))
        elif char in (_CLOSE_OBJECT, _CLOSE_ARRAY):
            if levels:
                levels.pop()
            expect_key = False
        elif levels:  # a comma
            if levels[-1].is_object:
                expect_key = True
            else:
                levels[-1].index += 1
    return None
