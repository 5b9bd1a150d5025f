"""A strict, bounded reader of multipart/form-data bodies already in memory (RFC 7578 over RFC 2046).

The gateway reads a form for one purpose: to check the models a batch file
names before it goes upstream (sluice.server.passthrough).  No parser is a
dependency of sluice (python-multipart is not; werkzeug is in the dev
environment only, for locust), and this needs little: split the body on its
boundary, read each part's headers, keep its content as a memoryview (no
copy).

Strict on purpose: the upstream reads the same bytes with its own parser, so
whatever this one would have to guess about (a header folded over lines,
anything but a line break or ``--`` after a boundary, a part without a
``form-data`` disposition, a parameter given twice, an encoded part) is refused
with a 400 rather than read one way here and another way there.  Bounded: at
most ``max_parts`` parts, ``MAX_HEAD`` bytes of headers each.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import InvalidRequest

__all__ = ["MAX_HEAD", "Part", "boundary_of", "read_form"]

MAX_HEAD = 8192  # bytes of one part's headers
_PARAM = re.compile(r';[ \t]*([A-Za-z0-9_.*-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;" \t]*)[ \t]*')
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars
_TRANSPARENT = frozenset({"7bit", "8bit", "binary"})


class Part(NamedTuple):
    name: str  # the form field (the disposition's name)
    filename: str | None
    content_type: str | None
    data: memoryview


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"The multipart/form-data body could not be read: {message}.", code="invalid_multipart")


def _params(text: str, what: str) -> tuple[str, dict[str, str]]:
    """A header value's token and its parameters (names in lower case, quoted values unescaped)."""
    cut = text.find(";")
    head, rest = (text, "") if cut < 0 else (text[:cut], text[cut:])
    params: dict[str, str] = {}
    at = 0
    while at < len(rest):
        found = _PARAM.match(rest, at)
        if found is None:
            raise _bad(f"the {what} parameters do not parse")
        name, value = found.group(1).lower(), found.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in params:
            raise _bad(f"the {what} parameter {name!r} is given twice")
        params[name] = value
        at = found.end()
    return head.strip().lower(), params


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/form-data`` Content-Type (400 when there is none, or an invalid one)."""
    media, params = _params(content_type, "Content-Type")
    if media != "multipart/form-data":
        raise _bad(f"its type is {media[:100]!r}, not multipart/form-data")
    boundary = params.get("boundary")
    if boundary is None or _BOUNDARY.fullmatch(boundary) is None:
        raise _bad("the Content-Type has no valid boundary")
    return boundary


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise _bad("a part has a header line that is not `Name: value`")
        name = name.lower()
        if name in headers:
            raise _bad(f"a part has the header {name!r} twice")
        headers[name] = value.strip()
    return headers


def _part(head: bytes, data: memoryview) -> Part:
    headers = _headers(head)
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise _bad("a part has no Content-Disposition")
    kind, params = _params(disposition, "Content-Disposition")
    if kind != "form-data" or "name" not in params or "filename*" in params or "name*" in params:
        raise _bad("a part's Content-Disposition is not `form-data; name=…` (with an optional plain filename)")
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in _TRANSPARENT:
        raise _bad(f"a part is sent in the {encoding[:40]!r} transfer encoding")
    return Part(params["name"], params.get("filename"), headers.get("content-type"), data)


def read_form(body: bytes, boundary: str, *, max_parts: int = 64) -> list[Part]:
    """The parts of a form body, in order; 400 for a body that is not plainly one form."""
    view = memoryview(body)
    dash = b"--" + boundary.encode("ascii")
    delimiter = b"\r\n" + dash
    # The first boundary at the very start: a preamble (which RFC 2046 lets a reader ignore) is refused, since an
    # upstream reading it otherwise would see parts this check did not.  Clients never send one.
    if not body.startswith(dash):
        raise _bad("it does not begin with its boundary (a preamble is not accepted)")
    at = len(dash)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", at):
            return parts  # the close delimiter (an epilogue after it is ignored, as RFC 2046 says)
        if not body.startswith(b"\r\n", at):
            raise _bad("a boundary is followed by something other than a line break")
        if len(parts) == max_parts:
            raise _bad(f"it has more than {max_parts} parts")
        head_end = body.find(b"\r\n\r\n", at, at + 2 + MAX_HEAD + 4)  # at itself: a part without headers
        if head_end < 0:
            raise _bad("a part's headers do not end (or exceed the limit)")
        end = body.find(delimiter, head_end + 4)
        if end < 0:
            raise _bad("the closing boundary is missing")
        parts.append(_part(body[at + 2:head_end], view[head_end + 4:end]))
        at = end + len(delimiter)
