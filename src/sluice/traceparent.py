"""W3C Trace Context ``traceparent`` headers: parsing a caller's.

Shared by the tracer (which decides sampling from it before touching the SDK) and
the access log's pure formatter (which logs a traceparent's trace id; the compiled
one, ext/_logline.pyx, applies the same rules in C).
"""

from __future__ import annotations

__all__ = ["parse_traceparent"]

_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid version-00 traceparent, else None.

    Anything else (wrong length or version, upper-case or non-hex digits, all-zero
    ids) is ignored, as the spec asks: the request then starts a new trace.
    """
    if value is None or len(value) != 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:]
    if version != "00" or not _HEX.issuperset(trace_id + span_id + flags):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)
