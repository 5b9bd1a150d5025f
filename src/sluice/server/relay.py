"""Relaying an upstream answer to the caller: its headers, and SSE streams event by event."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson

from ..providers import StreamTranslator
from ..upstream import Response, UpstreamError
from .backlog import Backlog, Stalled
from .exchange import ClientGone, Exchange, Headers

__all__ = ["RELAYED_AS", "Relayed", "hide_usage", "relay_headers", "relay_stream", "relay_translated", "relayed_as",
           "split_events"]

# Hop-by-hop headers, headers the server writes itself, and cookies the caller has no use for.
_NOT_RELAYED = frozenset((
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"date", b"server", b"set-cookie",
    b"x-request-id", b"alt-svc",
    b"x-content-type-options",  # the gateway sends its own (nosniff) on every response
))
_MAX_PENDING = 1024 * 1024  # an "event" longer than this is passed on as it is


# The name each header name (as the upstream spelt it) is relayed under, "" for one that is not: upstreams send
# the same few names on every answer, so each is lowered, checked and decoded once, not per answer (that took
# half of relay_headers' time).  Bounded, so that a peer inventing names cannot grow it without end.  A model
# call's answer reads it in sluice._native.answer_head (with relayed_as for a name not in it yet).
RELAYED_AS: dict[bytes, str] = {}
_NAMES_KEPT = 1024


def relay_headers(response: Response) -> Headers:
    """The upstream's end-to-end headers; its own request id as x-upstream-request-id."""
    headers = []
    known = RELAYED_AS
    for name, value in response.headers:
        relayed = known.get(name)
        if relayed is None:
            relayed = relayed_as(name)
        if relayed:
            headers.append((relayed, value.decode("latin-1")))
    return headers


def relayed_as(name: bytes) -> str:
    """The name ``name`` is relayed under ("" for one that is not), remembered in RELAYED_AS."""
    lname = name.lower()
    if lname == b"x-request-id":
        relayed = "x-upstream-request-id"
    else:
        relayed = "" if lname in _NOT_RELAYED else lname.decode("latin-1")
    if len(RELAYED_AS) < _NAMES_KEPT:
        RELAYED_AS[name] = relayed
    return relayed


def split_events(pending: bytes) -> int:
    """Where the last complete SSE event in ``pending`` ends (0 if none is complete)."""
    lf = pending.rfind(b"\n\n")
    crlf = pending.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class Relayed:
    """What a relayed stream tells the metrics and the access log."""

    __slots__ = ("error", "first_event_at", "usage")

    def __init__(self) -> None:
        self.usage: bytes | None = None  # the last events that mention usage (relayed, or hidden from the caller)
        self.first_event_at = -1.0  # perf_counter() when the first bytes of the body arrived
        self.error: str | None = None  # the code of the error event that ended the stream, if one did


# The usage the gateway asked for behind the caller's back (stream_options.include_usage), in the spellings
# other than OpenAI's compact one: "usage": null as a later key, or as the first one.
_USAGE_NULL = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")


def hide_usage(events: bytes) -> tuple[bytes, bytes | None]:
    """Whole SSE events without the usage the caller did not ask for: (what the caller gets, the usage event).

    The gateway turned include_usage on upstream to learn the tokens; the caller
    gets the stream it would have had: the usage-only chunk (empty choices, a
    usage object) is held back, and the ``"usage":null`` the upstream adds to
    every other chunk is taken out.  In JSON text ``"usage"`` followed by a
    colon can only be a key (a quote inside a string is escaped), so the bytes
    are edited without parsing.  Called only for events that mention usage.
    """
    events = events.replace(b',"usage":null', b"")
    if b'"usage"' not in events:
        return events, None
    if events.count(b'"usage"') != events.count(b'"usage":{'):  # another spelling (spaces, first key)
        events = _USAGE_NULL.sub(b"", events)
    if _EMPTY_CHOICES.search(events) is None:
        return events, None
    kept: list[bytes] = []
    usage = None
    start = 0
    for end in _EVENT_END.finditer(events):
        event = events[start:end.end()]
        start = end.end()
        if _USAGE_OBJECT.search(event) is not None and _EMPTY_CHOICES.search(event) is not None:
            usage = event
        else:
            kept.append(event)
    kept.append(events[start:])  # nothing, unless an oversized event was passed on in pieces
    return b"".join(kept), usage


class _Left:
    """A relay's ``on_disconnect`` callback: the caller's leaving aborts the upstream read at once, and is
    remembered, so that the read's failure is taken for what it is (the caller gone, not the upstream broken).

    (Over RSGIApp and ASGIApp the request's task is cancelled too, right after: this is for an Exchange whose
    server cannot cancel it.)
    """

    __slots__ = ("gone", "response")

    def __init__(self, response: Response) -> None:
        self.response = response
        self.gone = False

    def __call__(self) -> None:
        self.gone = True
        self.response.abort()


def _error_event(message: str, code: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}})
    return b"data: " + body + b"\n\n"


async def relay_stream(ex: Exchange, response: Response, headers: Headers, hiding_usage: bool = False,
                       first: bytes = b"") -> Relayed:
    """Relays an SSE stream whole events at a time, as they arrive.

    A slow caller slows the upstream read: the server's ``write`` waits for the
    client over ASGI; over RSGI (Granian 2.8 queues instead) ``Backlog`` waits
    while more than its cap is unacknowledged, and a caller that acknowledges
    nothing for ``backlog.STALL_S`` is cut (``client_stalled``).  A caller
    that leaves closes the upstream connection at once (and the read waiting on
    it ends).  If the upstream fails mid-stream, the caller gets the events that
    were complete and then an error event, never half a line.
    ``hiding_usage``: the gateway asked for the usage, the caller did not (see ``hide_usage``).
    ``first``: the body's first bytes, read already (to decide on a retry before anything went out).
    """
    pending = b""
    relayed = Relayed()
    stop_watch: Callable[[], object] | None = None
    left = _Left(response)
    backlog = Backlog(ex.client)
    written = 0
    try:
        await ex.start_stream(200, headers)  # in the try: a caller gone already still frees the connection
        stop_watch = ex.on_disconnect(left)
        while True:
            try:
                chunk, first = (first, b"") if first else (await response.next_chunk(), b"")
            except UpstreamError as exc:
                if left.gone:
                    raise ClientGone from None
                relayed.error = "upstream_stream_error"
                await ex.write(_error_event(f"The upstream stream failed: {exc}", relayed.error))
                break
            if not chunk:
                if pending.strip():
                    # The stream ended inside an event: as broken as a cut connection.
                    relayed.error = "upstream_stream_error"
                    await ex.write(_error_event("The upstream stream ended in the middle of an event.",
                                                relayed.error))
                break
            if relayed.first_event_at < 0:
                relayed.first_event_at = time.perf_counter()
            if pending:
                chunk = pending + chunk
            end = len(chunk) if chunk.endswith(b"\n\n") else split_events(chunk)
            if end == 0 and len(chunk) < _MAX_PENDING:
                pending = chunk
                continue
            if end == 0:
                end = len(chunk)
            pending = chunk[end:]
            out = chunk[:end] if pending else chunk
            if b'"usage"' in out:
                if not hiding_usage:
                    relayed.usage = out
                else:
                    out, usage = hide_usage(out)
                    if usage is not None:
                        relayed.usage = usage
                    if not out:
                        continue
            await ex.write(out)
            written += len(out)
            if written > backlog.next_check:
                await backlog.check(written)
        await ex.end_stream()
    except ClientGone:
        relayed.error = "client_disconnected"
    except Stalled:
        relayed.error = "client_stalled"
        await backlog.cut(ex)
    finally:
        if stop_watch is not None:
            stop_watch()
        backlog.close()
        response.release()  # closes the connection unless the stream was read to its end
    return relayed


async def relay_translated(ex: Exchange, response: Response, headers: Headers,
                           translator: StreamTranslator, first: bytes = b"") -> Relayed:
    """Relays a stream through a translator: upstream bytes in as they arrive, whole caller events out.

    The translator decides what a cut or malformed upstream stream looks like to
    the caller (a well-formed error event in the caller's format).
    """
    relayed = Relayed()
    stop_watch: Callable[[], object] | None = None
    left = _Left(response)
    backlog = Backlog(ex.client)
    written = 0
    try:
        await ex.start_stream(200, headers)
        stop_watch = ex.on_disconnect(left)
        while True:
            try:
                chunk, first = (first, b"") if first else (await response.next_chunk(), b"")
            except UpstreamError:
                if left.gone:
                    raise ClientGone from None
                relayed.error = "upstream_stream_error"
                chunk = b""
            if not chunk:
                tail = translator.close()
                if tail:
                    await ex.write(tail)
                break
            if relayed.first_event_at < 0:
                relayed.first_event_at = time.perf_counter()
            try:
                out = translator.feed(chunk)
            except ValueError:  # not the stream its format promises: end it with an error event
                relayed.error = "upstream_stream_error"
                out = translator.close()
                await ex.write(out)
                break
            if out:
                await ex.write(out)
                written += len(out)
                if written > backlog.next_check:
                    await backlog.check(written)
        await ex.end_stream()
    except ClientGone:
        relayed.error = "client_disconnected"
    except Stalled:
        relayed.error = "client_stalled"
        await backlog.cut(ex)
    finally:
        if stop_watch is not None:
            stop_watch()
        backlog.close()
        response.release()
    relayed.error = relayed.error or translator.error
    return relayed
