"""Stages and the pipeline that runs them: the shape of every request's path through the gateway.

A stage is a small object with two steps::

    on_request(ex, ctx)   in order; may raise a GatewayError (the request is refused), may answer the
                          request itself (a cache hit, the endpoint), or may return an awaitable when it
                          has to wait (a body to read, a key to look up, Redis): the pipeline awaits it
    on_response(ex, ctx)  in reverse order, once the request is over, for every stage whose on_request
                          completed, whatever happened after (an error, the caller gone, a cancellation):
                          settling reservations, metrics, traces, the access log

A route's pipeline is a flat tuple of stages built once from the config (server/routes.py); a
feature that is not configured is not in it, so the request path has no ``if enabled`` branch.  The
last stage is the endpoint, which answers.  A stage that answers early (``ex.started`` after its
awaitable) ends the request side there.

Between the two sides the pipeline completes the context once (``finish``: total and overhead time,
status, error class, token counts), for the response steps to read.  A pipeline whose stages have
no response step skips that too.

``sluice routes --config FILE`` prints each route's stages; docs/architecture.md draws them and
shows how to add one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from .._native import finish
from ..context import ClientGone, Exchange, RequestContext
from ..errors import GatewayError, PayloadTooLarge

__all__ = ["DISCARD_LIMIT", "Pipeline", "Stage", "Traced", "send_error"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"
DISCARD_LIMIT = 16 * 2**20  # a refused body is read (and dropped) up to this much before the 413

Step = Callable[[Exchange, RequestContext], "Awaitable[Any] | None"]
Respond = Callable[[Exchange, RequestContext], None]


class Stage:
    """One step of a route's pipeline (see the module docstring).  Subclasses set ``name`` and implement
    ``on_request``; those with work after the response also define ``on_response``."""

    name: ClassVar[str] = "stage"
    on_response: Respond | None = None  # None: the pipeline skips this stage on the way back

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[Any] | None:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``sluice routes``: the stage's name and what it was built with."""
        return self.name


class Traced(Stage):
    """A stage in a span of its own on sampled requests (added around auth, routing and rate limits when
    tracing is configured; absent otherwise).  ``attributes`` names the span's attributes after the step."""

    def __init__(self, inner: Stage, attributes: Callable[[RequestContext], dict[str, Any]] | None = None) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # the wrapped stage's name, per instance
        self._step = inner.on_request
        self._attributes = attributes
        if inner.on_response is not None:
            self.on_response = inner.on_response

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[Any] | None:
        trace = ctx.trace
        if trace is None:  # not sampled: the stage as it is
            return self._step(ex, ctx)
        return self._spanned(ex, ctx, trace)

    async def _spanned(self, ex: Exchange, ctx: RequestContext, trace: Any) -> None:
        with trace.stage(self.name) as span:
            pending = self._step(ex, ctx)
            if pending is not None:
                await pending
            if self._attributes is not None:
                span.set_attributes(self._attributes(ctx))

    def describe(self) -> str:
        return f"{self.inner.describe()} (traced)"


class Pipeline:
    """A route's stages, run for each of its requests (``run``)."""

    __slots__ = ("_audit", "_responders", "_steps", "route", "stages", "wire")

    def __init__(self, route: str, stages: Sequence[Stage], *, wire: str = "openai",
                 audit: Callable[[Exchange, RequestContext, GatewayError], None] | None = None) -> None:
        self.route = route  # the route's name in metrics, logs and traces
        self.stages = tuple(stages)
        self.wire = wire  # the caller's wire format, for errors
        self._steps: tuple[Step, ...] = tuple(stage.on_request for stage in self.stages)
        # (index, step), last stage first: a response step runs when its stage's request step completed.
        self._responders: tuple[tuple[int, Respond], ...] = tuple(
            (i, stage.on_response) for i, stage in reversed(list(enumerate(self.stages)))
            if stage.on_response is not None)
        self._audit = audit  # refusals of authentication and RBAC, for the audit log

    async def run(self, ex: Exchange, ctx: RequestContext) -> None:
        ran = 0  # the stages whose request step completed
        ctx.wire = self.wire
        try:
            for step in self._steps:
                pending = step(ex, ctx)
                if pending is not None:
                    await pending
                    if ex.started:  # the stage answered: the request side ends here
                        ran += 1
                        break
                ran += 1
        except GatewayError as exc:
            ctx.error = exc.code or exc.type
            if self._audit is not None:
                self._audit(ex, ctx, exc)
            await send_error(ex, ctx, exc)
        except ClientGone:
            ctx.error = "client_disconnected"
        except asyncio.CancelledError:  # the server cancelled the request: the caller left
            ctx.error = "client_disconnected"
            raise
        except Exception:
            log.exception("unhandled error", extra={"request_id": ctx.request_id})
            ctx.error = "internal_error"
            await send_error(ex, ctx, GatewayError("The gateway failed to handle the request."))
        finally:  # also when sending the error was cancelled: nothing taken is left unsettled
            self.respond(ex, ctx, ran)

    def respond(self, ex: Exchange, ctx: RequestContext, ran: int) -> None:
        """The response steps, in reverse, of the stages that ran; one failing does not stop the others."""
        responders = self._responders
        if not responders:
            return
        finish(ctx, ex.status)  # total and overhead time, status, error class, token counts
        for index, step in responders:
            if index < ran:
                try:
                    step(ex, ctx)
                except Exception:
                    log.exception("a response step failed", extra={"request_id": ctx.request_id})

    def describe(self) -> list[str]:
        return [stage.describe() for stage in self.stages]


async def send_error(ex: Exchange, ctx: RequestContext, exc: GatewayError) -> None:
    """The error in the caller's wire format, unless the response has begun (a stream ends itself with an error
    event)."""
    if ex.started:
        return
    if isinstance(exc, PayloadTooLarge):
        await ex.discard_body(DISCARD_LIMIT)  # so that the 413 is read, not reset away
    headers = ctx.headers(("content-type", JSON), *exc.headers)
    with contextlib.suppress(ClientGone):
        await ex.respond(exc.status, headers, exc.body(ctx.wire))
