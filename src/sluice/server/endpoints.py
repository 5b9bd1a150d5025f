"""The endpoints: the last stage of each route's pipeline, the one that answers.

Model calls (chat, completions, embeddings, Anthropic messages) build the call for each deployment
the attempt loop tries (sluice.resilience.attempts) and answer with what the upstream said; token
counting is one attempt at the model's anthropic deployment; the rest (models, health, metrics,
admin) answer from the gateway itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson

from ..context import Exchange, Handler, RequestContext
from ..errors import InvalidRequest, MethodNotAllowed, NotFound
from ..pipeline.stage import Stage
from ..pipeline.validate import rename_model
from ..providers import Call
from ..resilience.attempts import Attempts
from ..routing import Deployment, Router
from ..routing.plan import NOTHING, Plan, model_not_found
from .messages import Egress, messages_call

__all__ = ["CountTokensCall", "CountTokensRouting", "Endpoint", "MessagesCall", "ModelCall", "NotAllowed",
           "Unknown"]


class Endpoint(Stage):
    """A handler that answers from the gateway itself (models, health, metrics, admin)."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name  # type: ignore[misc]  # per endpoint
        self.on_request = handler  # type: ignore[method-assign,assignment]  # the handler itself: no call around it


class ModelCall(Stage):
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings: the caller's bytes to the plan's deployments
    (renamed to each deployment's model; a stream asks for its usage when someone needs it)."""

    name = "upstream"

    def __init__(self, attempts: Attempts, endpoint: str, *, keep_answer: bool) -> None:
        self.attempts = attempts
        self.endpoint = endpoint
        self.keep_answer = keep_answer  # metrics, logs or traces read the usage of every answer

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None]:
        return self.attempts.serve(ex, ctx, ctx.plan, self.build)

    def build(self, ex: Exchange, ctx: RequestContext, dep: Deployment) -> tuple[Call, None]:
        request, body = ctx.request, ctx.body
        assert body is not None
        stream = bool(request.stream)
        call = Call(self.endpoint, "POST", body, stream, ctx.request_id, dep.model)
        ctx.usage_asked = False
        if not dep.provider.translates(call):
            # Someone needs the tokens a streaming caller did not ask for: ask for them; the relay hides them.
            if (stream and (self.keep_answer or ctx.admission is not None)
                    and _usage_unasked(self.endpoint, request)):
                ctx.usage_asked = True
                call.body = _asking_usage(body, dep.model if dep.model != request.model else None,
                                          request.stream_options is not msgspec.UNSET)
            elif dep.model != request.model:
                call.body = rename_model(body, dep.model)
        return call, None

    def describe(self) -> str:
        return f"upstream ({self.endpoint}: attempts, retries, failover)"


class MessagesCall(Stage):
    """POST /v1/messages: Anthropic's API, natively to anthropic targets, translated to the others."""

    name = "upstream"

    def __init__(self, attempts: Attempts) -> None:
        self.attempts = attempts

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None]:
        return self.attempts.serve(ex, ctx, ctx.plan, self.build)

    @staticmethod
    def build(ex: Exchange, ctx: RequestContext, dep: Deployment) -> tuple[Call, Egress | None]:
        assert ctx.body is not None
        return messages_call(ctx.request, ctx.body, dep, ctx.request_id, ex.header("anthropic-beta"))

    def describe(self) -> str:
        return "upstream (/v1/messages, translated for non-anthropic targets: attempts, retries, failover)"


class CountTokensRouting(Stage):
    """POST /v1/messages/count_tokens: the model's anthropic deployment, on ``ctx.plan`` (token counting is
    offered by anthropic targets only; 400 for a model without one)."""

    name = "routing"

    def __init__(self, router: Router) -> None:
        self.router = router

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        model = ctx.request.model
        route = self.router.get(model)
        if route is None:
            raise model_not_found(model)
        dep = next((d for d in route.deployments if d.provider.wire == "anthropic"), None)
        if dep is None:
            raise InvalidRequest(f"Token counting is only offered by anthropic targets, and model "
                                 f"`{route.name}` has none.", param="model", code="unsupported_capability")
        ctx.plan = Plan(route, route, dep, NOTHING, None, None)

    def describe(self) -> str:
        return "routing (the model's anthropic deployment)"


class CountTokensCall(Stage):
    """One attempt, no retries: the count is the caller's answer, or the failure is."""

    name = "upstream"

    def __init__(self, attempts: Attempts) -> None:
        self.attempts = attempts

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None]:
        dep = ctx.plan.first
        body = ctx.body
        assert body is not None
        if dep.model != ctx.request.model:
            body = rename_model(body, dep.model)
        call = Call("/v1/messages/count_tokens", "POST", body, False, ctx.request_id, dep.model, "anthropic")
        return self.attempts.once(ex, ctx, dep, call)

    def describe(self) -> str:
        return "upstream (/v1/messages/count_tokens: one attempt)"


class NotAllowed(Stage):
    """405 with the path's methods in ``allow``."""

    name = "method_not_allowed"

    def __init__(self, methods: list[str]) -> None:
        self.allowed = ", ".join(methods)

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        raise MethodNotAllowed(f"Method {ex.method} is not allowed on {ex.path}; use {self.allowed}.",
                               code="method_not_allowed", headers=(("allow", self.allowed),))


class Unknown(Stage):
    """Paths outside the route table: a model card (/v1/models/{id}), an admin path with an id, else 404."""

    name = "dispatch"

    def __init__(self, get_model: Handler, admin_routes: Callable[[str], dict[str, Handler] | None] | None) -> None:
        self.get_model = get_model
        self.admin_routes = admin_routes

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[Any]:
        path = ex.path
        methods: dict[str, Handler] | None = None
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            methods = {"GET": self.get_model}
        elif self.admin_routes is not None:
            methods = self.admin_routes(path)  # /admin/keys/{id}, /admin/keys/{id}/revoke, /admin/users/{id}, ...
        if methods is None:
            raise NotFound(f"Unknown request URL: {ex.method} {path[:200]}.", code="unknown_url")
        handler = methods.get(ex.method)
        if handler is None:
            allowed = ", ".join(methods)
            raise MethodNotAllowed(f"Method {ex.method} is not allowed on {path}; use {allowed}.",
                                   code="method_not_allowed", headers=(("allow", allowed),))
        return handler(ex, ctx)

    def describe(self) -> str:
        return "dispatch (/v1/models/{id}, /admin/.../{id}, else 404)"


def _usage_unasked(endpoint: str, request: Any) -> bool:
    """A chat request whose caller did not ask for its stream's usage (stream_options.include_usage)."""
    if endpoint != "/v1/chat/completions":
        return False
    options = request.stream_options
    return options is None or options is msgspec.UNSET or options.include_usage is not True


def _asking_usage(body: bytes, model: str | None, has_options: bool) -> bytes:
    """A chat body with stream_options.include_usage on (and renamed to ``model`` unless None).

    Without a rename or a stream_options key of its own (the usual case) the key is appended to the
    object as it is, every byte kept; otherwise the body is parsed once and the options merged.
    ``has_options`` is the decoded request's word (not the bytes': the key may be spelt with escapes,
    "stream\\u005foptions", and appending one more would send the upstream two).
    """
    if model is None and not has_options:
        head = body.rstrip()
        if head.endswith(b"}"):
            head = head[:-1].rstrip()
            return head + (b'"stream_options":{"include_usage":true}}' if head.endswith(b"{") else
                           b',"stream_options":{"include_usage":true}}')
    data = orjson.loads(body)
    if model is not None:
        data["model"] = model
    options = data.get("stream_options")
    data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(data)
