"""GET /openapi.json: an OpenAPI 3.1 document of the gateway's own routes, generated from its route table.

Nothing here is a hand-kept list of routes: the document walks the ``RouteTable`` that serves the
requests (``build_routes``), so a route added there is described here, and one taken away is gone
(tests/unit/test_openapi.py keeps the two in step on every example config).

- **Exact routes** (``table.exact``): each path and method.  A route with a ``decode`` stage takes
  the msgspec type it decodes into (``DecodeStage.kind``) as its request body schema
  (``msgspec.json.schema_components``): the fields the gateway reads and checks; other fields are
  allowed and go upstream untouched, so the schemas do not forbid them.
- **Paths with ids**: ``GET /v1/models/{model}``, and the admin API's ids
  (``/admin/keys/{id}``, ``…/revoke``, ``…/rotate``, ``/admin/users/{id}``, …) asked of the dispatch
  stage that serves them (``Unknown.admin_routes``), for each admin collection in the table.
- **Passthrough families** (``table.families``): ``/v1/files`` and ``/v1/files/{rest}`` and so on,
  bodies as the caller's provider defines them (not described here).
- **Security**: a route whose pipeline has the ``auth`` stage needs a credential (a bearer token or
  ``x-api-key``); the others (health probes, ``/metrics``, this document) are open.
- **Errors**: every operation's ``default`` response is the error shape of its wire format (OpenAI's
  ``{"error": {...}}``, Anthropic's ``{"type": "error", ...}`` on ``/v1/messages*``).

The document is served without a credential, like the health probes (and like LiteLLM's
``/openapi.json``): SDK generators and API fuzzers fetch it before they hold a key, and it names no
model, provider or key of the config, only which route families are on.  The admin API is listed
when it is mounted (authentication on): it is part of the surface an operator's tooling calls, its
paths are in the public docs already, and each of its operations says it needs a credential (whose
role must hold the admin permission).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from .. import __version__
from ..admin.bodies import (
    KeyCreate,
    KeyRevoke,
    KeyRotate,
    KeyUpdate,
    RoleCreate,
    RoleUpdate,
    TeamCreate,
    TeamUpdate,
    UserCreate,
    UserUpdate,
)
from ..context import Exchange, RequestContext
from ..pipeline.stage import Pipeline, Stage, Traced
from ..pipeline.validate import DecodeStage
from .endpoints import Unknown

if TYPE_CHECKING:
    from .routes import RouteTable

__all__ = ["OPENAPI_PATH", "OpenApi", "openapi_document"]

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/{name}"
_JSON = "application/json"
# The bodies of the admin API's writes, by collection and action (its handlers are closures over them).
_ADMIN_BODIES: dict[str, tuple[type[Any], type[Any]]] = {
    "keys": (KeyCreate, KeyUpdate), "users": (UserCreate, UserUpdate), "teams": (TeamCreate, TeamUpdate),
    "roles": (RoleCreate, RoleUpdate),
}
_ADMIN_ACTIONS: dict[str, type[Any]] = {"revoke": KeyRevoke, "rotate": KeyRotate}
_PASSTHROUGH_METHODS = ("GET", "POST", "DELETE")
_ERRORS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
    },
    "AnthropicError": {
        "type": "object", "required": ["type", "error"],
        "properties": {"type": {"const": "error"}, "error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "ModelList": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}}},
    },
}
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "A sluice API key or a JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "A sluice API key"},
}


def _stages(pipeline: Pipeline) -> Iterator[Stage]:
    for stage in pipeline.stages:
        yield stage.inner if isinstance(stage, Traced) else stage


def _guarded(pipeline: Pipeline) -> bool:
    return any(stage.name == "auth" for stage in _stages(pipeline))


def _decoded(pipeline: Pipeline) -> type[Any] | None:
    return next((stage.kind for stage in _stages(pipeline) if isinstance(stage, DecodeStage)), None)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


class _Builder:
    """Operations, and the request types whose schemas the document's components hold."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self.paths: dict[str, dict[str, Any]] = {}
        self.bodies: list[type[Any]] = []
        self.secured = False

    def operation(self, path: str, method: str, pipeline: Pipeline, *, body: type[Any] | None = None,
                  ok: dict[str, Any] | None = None, summary: str = "", params: tuple[str, ...] = (),
                  status: str = "200", tag: str = "") -> None:
        wire_error = _ref("AnthropicError" if pipeline.wire == "anthropic" else "OpenAIError")
        guarded = _guarded(pipeline)
        self.secured = self.secured or guarded
        op: dict[str, Any] = {
            "operationId": f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '')}",
            "summary": summary or f"{method} {path}",
            "tags": [tag or _tag(path)],
            "security": [{"bearer": []}, {"apiKey": []}] if guarded else [],
            "responses": {status: ok or {"description": "The answer"},
                          "default": {"description": "An error in the caller's wire format",
                                      "content": _json(wire_error)}},
        }
        if params:
            op["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                for name in params]
        if body is not None:
            self.bodies.append(body)
            op["requestBody"] = {"required": True, "content": _json(_ref(body.__name__))}
        self.paths.setdefault(path, {})[method.lower()] = op

    def exact(self) -> None:
        for path, methods in self.table.exact.items():
            for method, pipeline in methods.items():
                kind = _decoded(pipeline)
                if kind is not None:
                    self.operation(path, method, pipeline, body=kind, ok=_model_answer(path),
                                   summary=f"{kind.__name__}: the fields the gateway reads; others go upstream")
                elif path.startswith("/admin/"):
                    collection = path.split("/")[2]
                    bodies = _ADMIN_BODIES.get(collection)
                    creates = bool(bodies) and method == "POST"
                    self.operation(path, method, pipeline, body=bodies[0] if creates and bodies else None,
                                   ok=_object_answer(), summary=f"admin: {method} {path}",
                                   status="201" if creates else "200")
                else:
                    self.operation(path, method, pipeline, ok=_open_answer(path))
                    if path.startswith("/health/"):  # a probe's 503 is its own JSON (the checks), not an error
                        self.paths[path][method.lower()]["responses"]["default"] = _object_answer()

    def with_ids(self) -> None:
        other = self.table.unknown["openai"]
        self.operation("/v1/models/{model}", "GET", other, ok={"description": "A model card",
                                                               "content": _json({"type": "object"})},
                       params=("model",))
        admin = self.table.unknown["admin"]
        dispatch = next((s for s in _stages(admin) if isinstance(s, Unknown)), None)
        if dispatch is None or dispatch.admin_routes is None:
            return
        for collection in sorted({path.split("/")[2] for path in self.table.exact if path.startswith("/admin/")}):
            for action in ("", *_ADMIN_ACTIONS):
                template = f"/admin/{collection}/{{id}}" + (f"/{action}" if action else "")
                methods = dispatch.admin_routes(template)
                for method in methods or ():
                    body = _ADMIN_ACTIONS.get(action) if action else (
                        _ADMIN_BODIES[collection][1] if method == "PATCH" and collection in _ADMIN_BODIES else None)
                    self.operation(template, method, admin, body=body, ok=_object_answer(), params=("id",),
                                   summary=f"admin: {method} {template}",
                                   status="201" if action == "rotate" else "200")  # a new key, as create

    def families(self) -> None:
        for prefix, pipeline in self.table.families.items():
            for path, params in ((prefix, ()), (prefix + "/{rest}", ("rest",))):
                for method in _PASSTHROUGH_METHODS:
                    self.operation(path, method, pipeline, params=params, tag="passthrough",
                                   summary="passthrough: relayed to an openai-kind provider as it is")
                    # The provider's answers and errors are relayed as they are: no schema of ours.
                    self.paths[path][method.lower()]["responses"]["default"] = {"description": "The provider's"}

    def document(self) -> dict[str, Any]:
        self.exact()
        self.with_ids()
        self.families()
        schemas: dict[str, Any] = dict(_ERRORS)
        if self.bodies:
            _, components = msgspec.json.schema_components(list(dict.fromkeys(self.bodies)), ref_template=_REF)
            schemas.update(components)
        components_out: dict[str, Any] = {"schemas": schemas}
        if self.secured:
            components_out["securitySchemes"] = _SECURITY_SCHEMES
        return {
            "openapi": "3.1.0",
            "info": {"title": "sluice", "version": __version__,
                     "description": "The routes of this sluice gateway: OpenAI- and Anthropic-compatible model "
                                    "calls, passthrough families, health, metrics and (with auth) the admin API."},
            "paths": self.paths,
            "components": components_out,
        }


def _tag(path: str) -> str:
    if path.startswith("/admin"):
        return "admin"
    if path.startswith("/health") or path in ("/metrics", OPENAPI_PATH):
        return "operations"
    return "models"


def _model_answer(path: str) -> dict[str, Any]:
    """A model call's answer: the provider's JSON in the caller's format, or an event stream (``stream``)."""
    return {"description": "The answer (JSON), or its event stream when `stream` is true",
            "content": {_JSON: {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}}


def _object_answer() -> dict[str, Any]:
    return {"description": "The answer", "content": _json({"type": "object"})}


def _open_answer(path: str) -> dict[str, Any]:
    if path == "/v1/models":
        return {"description": "The models the caller may use", "content": _json(_ref("ModelList"))}
    if path == "/metrics":
        return {"description": "Prometheus exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return _object_answer()


def openapi_document(table: RouteTable) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``table``'s routes."""
    return _Builder(table).document()


class OpenApi:
    """The handler of GET /openapi.json: the document of the table it is given once built, made on first use
    (per worker and config snapshot) and kept as bytes."""

    def __init__(self) -> None:
        self.table: RouteTable | None = None
        self._body: bytes | None = None

    async def serve(self, ex: Exchange, ctx: RequestContext) -> None:
        body = self._body
        if body is None:
            assert self.table is not None  # build_routes hands it the table before any request
            body = self._body = orjson.dumps(openapi_document(self.table))
        await ex.respond(200, ctx.headers(("content-type", _JSON)), body)
