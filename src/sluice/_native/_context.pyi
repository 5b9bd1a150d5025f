from typing import Any, Final, final

SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]]

@final
class RequestContext:
    """Fields declared in ext/_context.pxd (C doubles and longs for the times and counts); the object fields are
    slots to Python.  The compiled helpers of sluice._native take only this class."""

    started: float
    upstream_s: float
    overhead_s: float
    ttfb_s: float
    ttft_s: float
    total_s: float
    at: float
    status: int
    retries: int
    tokens_in: int
    tokens_out: int
    usage_asked: bool
    request_id: str
    route: str
    wire: str
    credential: str | None
    body: bytes | None
    request: Any
    plan: Any
    admission: Any
    model: str | None
    provider: str | None
    upstream_status: int | None
    error: str | None
    answer: bytes | None
    request_body: bytes | None
    trace: Any
    propagated: list[tuple[str, str]] | None
    traceparent: str | None
    key_prefix: str | None
    user: str | None
    principal: Any
    security: tuple[tuple[str, str], ...]
    served_model: str | None
    variant: str | None
    cache: str | None
    method: str
    path: str
    def __init__(self, request_id: str, started: float, route: str = "") -> None: ...
    def headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]: ...
