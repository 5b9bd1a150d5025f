"""Token counts from an OpenAI answer or stream event, found without parsing the JSON.

Off the request path (the access log's batches, the metrics), but per request, so cheap:
a reverse search for "usage" in the tail, then two regex searches from there.
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["USAGE_TAIL", "Usage", "token_usage"]

USAGE_TAIL = 4096  # usage sits at the end of an OpenAI answer: keep and search at most this tail

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def token_usage(answer: bytes) -> Usage | None:
    """The token counts of the "usage" object of an OpenAI answer or stream event, if there is one."""
    start = answer.rfind(b'"usage"', max(0, len(answer) - USAGE_TAIL))
    if start < 0:
        return None
    opening = _USAGE_OBJECT.match(answer, start)
    if opening is None:
        return None  # no object right after "usage" (e.g. "usage": null)
    # Only counts live in a usage object, and its two we want appear nowhere else in an answer:
    # two C-speed searches from there, no JSON parse.
    prompt = _PROMPT_TOKENS.search(answer, opening.end())
    completion = _COMPLETION_TOKENS.search(answer, opening.end())
    if prompt is None and completion is None:
        return None
    return Usage(int(prompt.group(1)) if prompt else None, int(completion.group(1)) if completion else None)
