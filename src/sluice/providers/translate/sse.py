"""Server-sent events, incrementally: bytes as they arrive in, whole events out.

The stream translators read a provider's SSE stream through ``SSEParser``
(bytes split anywhere: mid-line, mid-CRLF, mid-UTF-8 sequence) and write their
own events with ``sse_event``.  Parsing follows the HTML standard's event-stream
rules as providers use them: ``event:`` and ``data:`` fields (a single optional
space after the colon is dropped), multi-line data joined by newlines, comment
lines (``:``) and unknown fields ignored, an event dispatched at a blank line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_EVENT_BYTES", "SSEError", "SSEEvent", "SSEParser", "sse_event"]

MAX_EVENT_BYTES = 4 * 1024 * 1024  # a provider event larger than this is an error, not a memory leak


class SSEError(ValueError):
    """The stream is not well-formed SSE (or an event outgrew MAX_EVENT_BYTES)."""


@dataclass(slots=True, frozen=True)
class SSEEvent:
    event: str  # "message" when the event names none
    data: str


class SSEParser:
    """Feed bytes, get the events they complete; ``pending`` says whether an event was left unfinished."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        size = len(buffer)
        while start < size:
            end = _line_end(buffer, start)
            if end is None:
                break
            line_stop, next_start = end
            self._line(buffer[start:line_stop], events)
            start = next_start
        self._buffer = buffer[start:]
        if len(self._buffer) + sum(len(d) for d in self._data) > MAX_EVENT_BYTES:
            raise SSEError(f"an event is larger than {MAX_EVENT_BYTES} bytes")
        return events

    @property
    def pending(self) -> bool:
        """True when bytes or fields of an event that never ended are held (a cut stream)."""
        return bool(self._buffer.strip() or self._data or self._event)

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data or self._event:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SSEError("an event line is not UTF-8") from None
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def _line_end(buffer: bytes, start: int) -> tuple[int, int] | None:
    """(end of the line, start of the next) for the line at ``start``; None when it is not complete.

    A lone CR at the very end may be the first half of a CRLF: wait for the next byte.
    """
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    if cr >= 0:
        if cr + 1 == len(buffer):
            return None
        return (cr, cr + 2) if buffer[cr + 1] == 0x0A else (cr, cr + 1)
    if lf >= 0:
        return lf, lf + 1
    return None


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One event: ``event: <name>`` when named, then its data line(s), then a blank line."""
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return (b"event: " + event.encode() + b"\n" + lines + b"\n") if event else lines + b"\n"
