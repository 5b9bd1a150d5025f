"""Pure-Python twins of the compiled helpers in ext/_speedups.pyx (same API, same results)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from ._pure_context import RequestContext

__all__ = ["USAGE_TAIL", "RequestIds", "TraceIds", "answer_head", "count_tokens", "finish", "token_counts",
           "valid_request_id"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class RequestIds:
    """Generates unique request ids: RequestIds(seed).next() -> 32 hex chars."""

    __slots__ = ("_prefix", "_state")

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= _MASK:
            raise OverflowError("seed must fit in 64 unsigned bits")
        self._prefix = f"{seed:016x}"
        self._state = 0

    def next(self) -> str:
        self._state = (self._state + _GOLDEN) & _MASK
        return f"{self._prefix}{_splitmix64(self._state):016x}"


class TraceIds:
    """W3C trace contexts for requests that are not sampled: TraceIds(seed).new_trace(ratio), .child(trace_id)."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= _MASK:
            raise OverflowError("seed must fit in 64 unsigned bits")
        self._state = seed

    def _draw(self) -> int:
        self._state = (self._state + _GOLDEN) & _MASK
        return _splitmix64(self._state)

    def new_trace(self, ratio: float) -> str | None:
        """A new trace's ``traceparent`` (``00-<trace id>-<span id>-00``) when it is not sampled; None when it is:
        its id's low 64 bits under ratio x 2**64 (TraceIdRatioBased's rule), and the SDK starts it."""
        high, low = self._draw(), self._draw()
        if ratio >= 1.0 or float(low) < ratio * 18446744073709551616.0:
            return None
        if high == 0 and low == 0:
            low = 1  # an all-zero id is invalid
        return self._traceparent(f"{high:016x}{low:016x}")

    def child(self, trace_id: str) -> str:
        """``00-<trace_id>-<a new span id>-00``: an unsampled caller's trace, carried on by this hop."""
        if len(trace_id.encode()) != 32:
            raise ValueError("a trace id is 32 hex digits")
        return self._traceparent(trace_id)

    def _traceparent(self, trace_id: str) -> str:
        return f"00-{trace_id}-{self._draw() or 1:016x}-00"


def valid_request_id(value: str) -> bool:
    """True for 1..128 visible ASCII characters (0x21..0x7e)."""
    if not 0 < len(value) <= 128 or not value.isascii():
        return False
    return all(0x21 <= ord(c) <= 0x7E for c in value)


# -- token counts --------------------------------------------------------------------------

USAGE_TAIL = 4096  # usage sits at the end of an OpenAI answer: search at most this tail

_USAGE_OBJECT = re.compile(rb'"usage"[ \t\n\r\f\v]*:[ \t\n\r\f\v]*\{')
# At most 18 digits (fits in 63 bits); a longer number is no count.
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"[ \t\n\r\f\v]*:[ \t\n\r\f\v]*(\d{1,18})(?!\d)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"[ \t\n\r\f\v]*:[ \t\n\r\f\v]*(\d{1,18})(?!\d)')


def token_counts(answer: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of the last "usage" object in the answer's tail; -1 where absent."""
    start = answer.rfind(b'"usage"', max(0, len(answer) - USAGE_TAIL))
    if start < 0:
        return -1, -1
    opening = _USAGE_OBJECT.match(answer, start)
    if opening is None:
        return -1, -1  # "usage": null, or no object
    prompt = _PROMPT_TOKENS.search(answer, opening.end())
    completion = _COMPLETION_TOKENS.search(answer, opening.end())
    return int(prompt.group(1)) if prompt else -1, int(completion.group(1)) if completion else -1


def count_tokens(context: RequestContext) -> None:
    """Sets ``context.tokens_in`` and ``tokens_out`` from the usage in ``context.answer`` (token_counts), unless
    there is no answer or either count is known already (>= 0: a translator or a native kind counted)."""
    if context.answer is not None and context.tokens_in < 0 and context.tokens_out < 0:
        context.tokens_in, context.tokens_out = token_counts(context.answer)


def finish(context: RequestContext, status: int) -> None:
    """Completes a finished request's ``context``: ``total_s`` (now minus ``started``, on perf_counter's clock),
    ``overhead_s`` (total minus upstream) unless the response head set it (>= 0), ``status``, ``error`` for a
    status of 400 or more without one ("upstream_4xx" or "upstream_5xx"), and the token counts
    (``count_tokens``).  The route is the context's from its start (the pipeline knows it)."""
    context.total_s = total = time.perf_counter() - context.started
    if context.overhead_s < 0:
        context.overhead_s = total - context.upstream_s
    context.status = status
    if status >= 400 and context.error is None:
        context.error = "upstream_4xx" if status < 500 else "upstream_5xx"
    count_tokens(context)


# -- the answer's head ---------------------------------------------------------------------------


def answer_head(context: RequestContext, upstream: Iterable[tuple[bytes, bytes]], names: dict[bytes, str],
                resolve: Callable[[bytes], str], provider: str | None, attempts: int,
                json: bool) -> list[tuple[str, str]]:
    """The head of a model call's answer, in order: x-request-id, x-sluice-overhead-ms (``ttfb_s`` and
    ``overhead_s`` set as ``RequestContext.headers`` sets them), the security headers, the upstream's headers as
    relayed (``names``: the relayed name of each name as the upstream spelt it, "" for one not relayed;
    ``resolve`` answers a name not in it yet), content-type JSON when the body is the gateway's (``json``: the
    upstream's content-type and content-encoding are dropped), x-sluice-model / -provider / -attempts (unless
    ``provider`` is None), and the rate limits' own; when they admitted the request (``context.admission``),
    the upstream's x-ratelimit-* go out as x-upstream-ratelimit-*."""
    context.ttfb_s = elapsed = time.perf_counter() - context.started
    context.overhead_s = elapsed - context.upstream_s
    head = [("x-request-id", context.request_id), ("x-sluice-overhead-ms", f"{context.overhead_s * 1000:.3f}"),
            *context.security]
    admission = context.admission
    for name, value in upstream:
        relayed = names.get(name)
        if relayed is None:
            relayed = resolve(name)
        if not relayed or (json and relayed in ("content-type", "content-encoding")):
            continue
        if admission is not None and relayed.startswith("x-ratelimit-"):
            relayed = "x-upstream-" + relayed[2:]
        head.append((relayed, value.decode("latin-1")))
    if json:
        head.append(("content-type", "application/json"))
    if provider is not None:
        head += (("x-sluice-model", context.served_model or ""), ("x-sluice-provider", provider),
                 ("x-sluice-attempts", str(attempts)))
    if admission is not None:
        head += admission.headers
    return head
