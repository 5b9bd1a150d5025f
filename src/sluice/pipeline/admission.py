"""The admission stage: rate limits and quotas take their share before the request goes upstream, and
settle it once the answer says what the request really used (sluice.pipeline.ratelimit).

Request side: the policies and quotas the request falls under, without an await when nothing needs
Redis or a store (``RateLimits.admit_local``), else ``RateLimits.admit``.  A request is charged for
its requests and a token estimate (a quarter of its body's bytes plus its ``max_tokens``, or the
configured default).  Response side: the estimate is settled against the tokens the answer
reports; a request that generated nothing (refused later, failed upstream, a passthrough answer the
gateway does not read for usage) gets its whole token reservation back.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ..auth.credential import credential_of
from ..context import Exchange, RequestContext
from .ratelimit import RateLimits
from .stage import Stage
from .validate import EmbeddingRequest

__all__ = ["AdmissionStage", "max_tokens_of"]


class AdmissionStage(Stage):
    name = "rate_limits"

    def __init__(self, limits: RateLimits, *, reads_usage: bool = True) -> None:
        self.limits = limits
        # False on routes whose answers the gateway relays without reading their usage (the passthrough):
        # their token reservations always go back whole.
        self.reads_usage = reads_usage

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None] | None:
        limits = self.limits
        if limits.idle:  # only keys' own limits (auth on, nothing configured): a key without any has nothing here
            principal = ctx.principal
            if principal is None or not (principal.policies or principal.quotas):
                return None
        body = ctx.body
        size = len(body) if body is not None else 0
        max_tokens = max_tokens_of(ctx.request)
        key = credential_of(ex, ctx)
        if not limits.remote:
            admission = limits.admit_local(ex, ctx.route, ctx.model or "", size, max_tokens, ctx.principal, key=key)
            if admission != "await":
                ctx.admission = admission
                return None
        return self._admit(ex, ctx, size, max_tokens, key)

    async def _admit(self, ex: Exchange, ctx: RequestContext, size: int, max_tokens: int | None,
                     key: str | None) -> None:
        ctx.admission = await self.limits.admit(ex, ctx.route, ctx.model or "", size, max_tokens, ctx.principal,
                                                key=key)

    def on_response(self, ex: Exchange, ctx: RequestContext) -> None:
        admission = ctx.admission
        if admission is None or not admission.settles:  # nothing taken that the answer's usage changes
            return
        # An embedding's usage has no completion tokens: its prompt tokens are all it used.
        used = ctx.tokens_in + max(ctx.tokens_out, 0) if ctx.tokens_in >= 0 else -1
        if used < 0 and (ctx.upstream_status is None or ctx.status >= 400 or not self.reads_usage):
            # Nothing was generated, or a passthrough answer the gateway does not read for usage:
            # the whole token reservation goes back (requests still count).
            used = 0
        self.limits.settle(admission, used)

    def describe(self) -> str:
        names = [p.name for p in self.limits.policies]
        quotas = self.limits.quotas
        if quotas is not None:
            names.append("quotas")
        return f"rate_limits ({', '.join(names) or 'per-key policies and quotas'})"


def max_tokens_of(request: Any) -> int | None:
    """What a decoded request may generate: its max_completion_tokens or max_tokens (None: not said)."""
    if request is None:
        return None
    if isinstance(request, EmbeddingRequest):
        return 0  # an embedding generates nothing: its reservation is its input
    value = getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)
    return value if isinstance(value, int) else None
