"""The one place that picks the compiled helpers or their pure-Python twins.

The pure twins are bound first; each compiled module replaces its twin unless
it is not built or ``SLUICE_NO_EXTENSIONS=1`` is set.  ``IMPLEMENTATION`` says
which won ("compiled" only when every compiled module loaded).
"""

from __future__ import annotations

import os

from ._pure_context import SECURITY_HEADERS, RequestContext
from ._pure_jsoncheck import json_problem
from ._pure_limits import LocalLimiter
from ._pure_logline import LineFormatter
from ._pure_speedups import (
    USAGE_TAIL,
    RequestIds,
    TraceIds,
    answer_head,
    count_tokens,
    finish,
    token_counts,
    valid_request_id,
)
from ._pure_stats import Histograms, RequestStats
from ._pure_upstream import Connection as UpstreamConnection
from ._pure_upstream import Response as UpstreamResponse
from ._pure_upstream import closed_while_idle
from ._pure_upstream import head as upstream_head

__all__ = ["IMPLEMENTATION", "SECURITY_HEADERS", "USAGE_TAIL", "Histograms", "LineFormatter", "LocalLimiter",
           "RequestContext", "RequestIds", "RequestStats", "TraceIds", "UpstreamConnection", "UpstreamResponse",
           "answer_head", "closed_while_idle", "count_tokens", "finish", "json_problem", "token_counts",
           "upstream_head", "valid_request_id"]

IMPLEMENTATION = "pure"

if os.environ.get("SLUICE_NO_EXTENSIONS") != "1":
    try:
        from ._context import SECURITY_HEADERS, RequestContext  # type: ignore[assignment]
        from ._jsoncheck import json_problem
        from ._limits import LocalLimiter  # type: ignore[assignment]
        from ._logline import LineFormatter  # type: ignore[assignment]
        from ._speedups import RequestIds, TraceIds, answer_head, count_tokens, finish, token_counts, valid_request_id  # type: ignore[assignment]
        from ._stats import Histograms, RequestStats  # type: ignore[assignment]
        from ._upstream import Connection as UpstreamConnection  # type: ignore[assignment]
        from ._upstream import Response as UpstreamResponse  # type: ignore[assignment]
        from ._upstream import closed_while_idle  # type: ignore[assignment]
        from ._upstream import head as upstream_head
    except ImportError:  # not built: the pure twins serve
        from ._pure_context import SECURITY_HEADERS, RequestContext
        from ._pure_jsoncheck import json_problem
        from ._pure_limits import LocalLimiter
        from ._pure_logline import LineFormatter
        from ._pure_speedups import (
            RequestIds,
            TraceIds,
            answer_head,
            count_tokens,
            finish,
            token_counts,
            valid_request_id,
        )
        from ._pure_stats import Histograms, RequestStats
        from ._pure_upstream import Connection as UpstreamConnection
        from ._pure_upstream import Response as UpstreamResponse
        from ._pure_upstream import closed_while_idle
        from ._pure_upstream import head as upstream_head
    else:
        IMPLEMENTATION = "compiled"
