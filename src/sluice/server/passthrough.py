"""The other OpenAI endpoints, relayed as they are: responses, assistants, threads, files, batches, audio, images.

sluice does not model these APIs; it forwards them to an openai-kind provider
(the model's target when a JSON body names a model, else ``passthrough.provider``)
with that provider's key, and relays the answer piece by piece as it arrives:
run and response streams stay streams, audio stays binary, and uploads
(multipart) are streamed through without being buffered.

Keys limited to some models (``Principal.model_globs``): a JSON body's
``model`` is checked (``PassthroughRequest._target``); a JSON body that
names none is refused where the endpoint would start model work with a model
the gateway cannot see (``refuse_unnamed_model``, the table in docs/auth.md:
creating responses, runs, speech, images; creating an upload of purpose
``batch``, whose parts cannot be checked) and passes elsewhere (reading,
listing, deleting, cancelling, threads, messages, files, batches, vector
stores).  Their batch files (``POST /v1/files``, purpose ``batch``) are read
whole, bounded by ``server.max_body_bytes``, and each JSONL line's
``body.model`` checked (``check_batch_upload``); other keys' uploads still
stream through unread.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import orjson

from ..auth.rbac import model_not_allowed
from ..context import ClientGone, Exchange, Headers, RequestContext
from ..errors import Forbidden, InvalidRequest, NotFound
from ..pipeline.stage import DISCARD_LIMIT, Stage
from ..pipeline.validate import check_json, rename_model
from ..providers import Provider
from ..routing import Router
from ..routing.plan import model_not_found
from ..upstream import Response, UpstreamClient, UpstreamError
from .backlog import Backlog, Stalled
from .forward import gateway_error
from .multipart import boundary_of, read_form
from .relay import relay_headers

if TYPE_CHECKING:
    from ..auth.principal import Principal
    from ..pipeline.auth import AuthStage

__all__ = ["FAMILIES", "FORWARDED_HEADERS", "PassthroughRelay", "PassthroughRequest", "check_batch_upload",
           "is_file_upload", "needs_model", "refuse_unnamed_model", "relay_raw", "safe_path"]

# The bounded route label of each passthrough family (metrics and logs).
FAMILIES = ("/v1/responses", "/v1/assistants", "/v1/threads", "/v1/files", "/v1/batches", "/v1/audio",
             "/v1/images", "/v1/vector_stores", "/v1/uploads")
# Caller headers the upstream needs to read the request as meant; the caller's credentials never go on.
FORWARDED_HEADERS = ("content-type", "accept", "openai-beta", "idempotency-key")


async def relay_raw(ex: Exchange, response: Response, headers: Headers) -> str | None:
    """Relays an answer of any kind as its pieces arrive: no parsing, no buffering.

    Returns an error class when the upstream broke off mid-body (the caller sees a cut body: there is
    no format to write an error event in), or when the caller stopped reading (``client_stalled``: the
    stream's ``Backlog``, as in relay_stream).
    """
    stop_watch: Callable[[], object] | None = None
    gone = False
    backlog = Backlog(ex.client)
    written = 0

    def caller_left() -> None:
        nonlocal gone
        gone = True
        response.abort()  # the read below then fails: the caller's leaving, not the upstream's fault

    try:
        await ex.start_stream(response.status, headers)
        stop_watch = ex.on_disconnect(caller_left)
        while chunk := await response.next_chunk():
            await ex.write(chunk)
            written += len(chunk)
            if written > backlog.next_check:
                await backlog.check(written)
        await ex.end_stream()
    except ClientGone:
        return "client_disconnected"
    except UpstreamError:
        return "client_disconnected" if gone else "upstream_stream_error"
    except Stalled:
        await backlog.cut(ex)
        return "client_stalled"
    finally:
        if stop_watch is not None:
            stop_watch()
        backlog.close()
        response.release()
    return None


# -- keys limited to some models -------------------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    """The path's segments without empty ones: "/v1//threads/x/runs/" is ["v1", "threads", "x", "runs"]."""
    return [segment for segment in path.split("/") if segment]


def needs_model(method: str, path: str) -> bool:
    """Whether a JSON ``method`` on ``path`` starts model work, so that a model-limited key must name the model.

    POST only (reads, lists and deletes start nothing): every POST under /v1/responses but a cancel
    (create, input_tokens, compact: a response continued from ``previous_response_id`` or a stored
    ``prompt`` runs a model the body need not name), /v1/audio and /v1/images (speech, generations: the
    provider's default model otherwise), and runs (/v1/threads/runs, /v1/threads/{id}/runs: the
    assistant's model otherwise).  Not: assistants (created with a model the gateway checks; changing one
    starts nothing), threads and messages, a run's tool outputs (they continue a run whose model was
    checked when it was created), files and batches (their batch files are checked at upload), vector
    stores (their embedding model is the provider's own, not one a body can name).
    """
    if method != "POST":
        return False
    segments = _segments(path)
    family = segments[1] if len(segments) > 1 else ""
    if family == "responses":
        return segments[-1] != "cancel" or len(segments) != 4
    if family in ("audio", "images"):
        return True
    if family == "threads":
        return segments[2:] == ["runs"] or (len(segments) == 4 and segments[3] == "runs")
    return False


def _upload_of_batch(method: str, path: str, parsed: Any) -> bool:
    """POST /v1/uploads creating an upload of purpose "batch": its parts come as they are, never checked."""
    if method != "POST" or _segments(path) != ["v1", "uploads"] or not isinstance(parsed, dict):
        return False
    purpose = parsed.get("purpose")
    return not isinstance(purpose, str) or purpose.strip().lower() == "batch"


def refuse_unnamed_model(method: str, path: str, body: bytes) -> None:
    """For a model-limited key whose JSON body names no model (as a string): 403 where that would start
    model work the gateway cannot check (``needs_model``), or make a batch file it cannot read."""
    if needs_model(method, path):
        raise Forbidden(f"This key is limited to certain models, so it must name the model (`model`, a string) in "
                        f"the body of {method} {path[:200]}: without it the provider would choose one the gateway "
                        "cannot check.", code="model_not_allowed", param="model", reason="model_required")
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:  # PassthroughRequest._target refused it already; here for any other caller
        raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if _upload_of_batch(method, path, parsed):
        raise Forbidden("This key is limited to certain models, and the parts of an upload of purpose `batch` "
                        "cannot be checked for the models they name; upload the batch file with POST /v1/files "
                        "(purpose=batch), where each line's model is checked.", code="model_not_allowed",
                        param="purpose", reason="model_not_allowed")


def is_file_upload(method: str, path: str) -> bool:
    """POST /v1/files: where batch files are uploaded."""
    return method == "POST" and _segments(path) == ["v1", "files"]


def check_batch_upload(principal: Principal, content_type: str, body: bytes) -> None:
    """A model-limited key's file upload (read whole): a form whose file of purpose "batch" names on each
    JSONL line, in ``body.model``, a model the key may use.  403 naming the first line that does not, 400
    for a form or a line that cannot be read (what cannot be read here must not go on to be read there)."""
    parts = read_form(body, boundary_of(content_type))
    purposes = [part for part in parts if part.name == "purpose"]
    files = [part for part in parts if part.name == "file"]
    if len(purposes) > 1 or len(files) > 1:
        raise InvalidRequest("A file upload has one `purpose` and one `file` field; this one has more.",
                             param="file" if len(files) > 1 else "purpose", code="invalid_multipart")
    if not purposes or not files or bytes(purposes[0].data).strip().lower() != b"batch":
        return  # not a batch file: no model work comes of it (the upstream refuses a form without these)
    _check_batch_lines(principal, files[0].data)


def _check_batch_lines(principal: Principal, data: memoryview) -> None:
    for number, line in enumerate(bytes(data).split(b"\n"), 1):
        if not line.strip():
            continue  # a blank line (the file's last newline, say)
        try:
            check_json(line)  # a key twice (body.model) would be read one way here, maybe another upstream
            request = orjson.loads(line)
        except InvalidRequest as exc:
            raise InvalidRequest(f"Line {number} of the batch file: {exc.message}", param="file",
                                 code=exc.code) from None
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"Line {number} of the batch file is not one JSON object.", param="file",
                                 code="invalid_batch_file") from None
        body = request.get("body") if isinstance(request, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            raise Forbidden(f"Line {number} of the batch file names no model (`body.model`); this key is limited "
                            "to certain models, so each line must name one.", code="model_not_allowed",
                            param="file", reason="model_required")
        if not principal.may_use(model):
            raise Forbidden(f"Line {number} of the batch file names the model `{model[:200]}`, which this "
                            "credential may not use; ask an administrator for access to it.",
                            code="model_not_allowed", param="file", reason="model_not_allowed")


class Outgoing:
    """What the passthrough sends: the provider, the upstream path, and the body (bytes, pieces as they arrive,
    or none); on ``ctx.request``."""

    __slots__ = ("body", "path", "provider")

    def __init__(self, provider: Provider, path: str, body: bytes | AsyncIterator[bytes] | None) -> None:
        self.provider = provider
        self.path = path
        self.body = body


class PassthroughRequest(Stage):
    """Another OpenAI endpoint: which provider takes it and what body goes (see the module docstring); the
    signature and model checks of a limited or signing key on what can be read of the body."""

    name = "passthrough_request"

    def __init__(self, router: Router, provider: Provider | None, max_body: int, auth: AuthStage | None) -> None:
        self.router = router
        self.provider = provider  # passthrough.provider
        self.max_body = max_body
        self.auth = auth

    async def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        provider = self.provider
        path = safe_path(ex.path)  # refused before a byte is read if it could leave its family
        body: bytes | AsyncIterator[bytes] | None = None
        content_type = ex.header("content-type") or ""
        principal = ctx.principal
        limited = principal is not None and principal.model_globs is not None
        if ex.method in ("POST", "PUT", "PATCH"):
            media = content_type.split(";", 1)[0].strip().lower()  # media types are case-insensitive
            if not media or media == "application/json":
                body = await ex.read_body(self.max_body)
                await self._verified(ex, ctx, body)  # the model is checked by _target
                body, provider = self._target(ctx, body, provider)
                if ctx.model is None and limited:
                    refuse_unnamed_model(ex.method, ex.path, body)  # where the provider would pick the model
            elif limited and is_file_upload(ex.method, ex.path):
                body = await ex.read_body(self.max_body)  # a limited key's batch file: read whole, models checked
                await self._verified(ex, ctx, body)
                assert principal is not None
                check_batch_upload(principal, content_type, body)
            elif limited and ex.path in ("/v1/uploads", "/v1/batches"):
                # Their bodies are JSON, checked above: another content type could hide what the check reads.
                await ex.discard_body(DISCARD_LIMIT)
                raise InvalidRequest(f"{ex.path} takes an application/json body, not {media[:100]}.",
                                     code="unsupported_media_type")
            elif limited and ctx.route not in ("/v1/files", "/v1/uploads", "/v1/batches"):
                # A form (audio, images) names its model where the gateway does not look: a key limited
                # to some models may not send one. Upload parts name none, and stay allowed.
                await ex.discard_body(DISCARD_LIMIT)  # so that the 403 is read, not reset away
                raise Forbidden(f"This key is limited to certain models, and a {media[:100]} body to {ctx.route} "
                                "cannot be checked for the model it names; such uploads are refused for it.",
                                code="model_not_allowed", reason="model_not_allowed")
            elif principal is not None and principal.signing_secret is not None:
                body = await ex.read_body(self.max_body)  # a signed upload is verified whole before it goes on
                await self._verified(ex, ctx, body)
            else:
                body = ex.body_chunks(self.max_body)  # uploads go through as they arrive
        if provider is None:
            raise NotFound(f"No provider serves {ex.method} {ex.path[:200]}: name a model with an openai-kind "
                           "target in the body, or set passthrough.provider.", code="unknown_url")
        ctx.provider = provider.name
        if isinstance(body, bytes):
            ctx.body = body  # uploads count as requests; their tokens, if any, settle from usage
        ctx.request = Outgoing(provider, path, body)

    async def _verified(self, ex: Exchange, ctx: RequestContext, body: bytes) -> None:
        """A signing key's signature over the body (and its claim on Redis, when signatures are shared)."""
        if ctx.principal is not None and self.auth is not None:
            claim = self.auth.verify_body(ex, ctx, body)
            if claim is not None:
                await claim

    def _target(self, ctx: RequestContext, body: bytes, provider: Provider | None) -> tuple[bytes, Provider | None]:
        """A JSON body that names a configured model goes to that model's openai-kind target, renamed.

        Other model names (tts-1, whisper-1, …) go as they are to the passthrough provider.
        """
        check_json(body)  # a key twice, too deep, not UTF-8: forwarded as it is, it could be read otherwise
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if not isinstance(model, str):
            return body, provider
        ctx.model = model
        if ctx.principal is not None and not ctx.principal.may_use(model):
            raise model_not_allowed(model)
        route = self.router.get(model)
        if route is None:
            if provider is None:
                raise model_not_found(model)
            return body, provider
        target = next((t for t in route.targets if t.provider.kind == "openai"), None)
        if target is None:
            raise InvalidRequest(f"Model `{model}` has no openai-kind target to serve this endpoint.",
                                 param="model", code="unsupported_capability")
        if target.model != model:
            body = rename_model(body, target.model)
        return body, target.provider


class PassthroughRelay(Stage):
    """Sends the passthrough request as it is and relays the answer piece by piece (no retries: an upload
    cannot be sent twice)."""

    name = "upstream"

    def __init__(self, client: Callable[[], UpstreamClient]) -> None:
        self.client = client

    async def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        outgoing: Outgoing = ctx.request
        provider = outgoing.provider
        target = provider.prefix + outgoing.path + (f"?{quote(ex.query, safe=_QUERY_SAFE)}" if ex.query else "")
        headers = [(name, value) for name in FORWARDED_HEADERS if (value := ex.header(name)) is not None]
        headers += [("x-request-id", ctx.request_id), *provider.next_auth(), *provider.extra_headers()]
        sent = time.perf_counter()
        try:
            response = await self.client().request(provider.origin, ex.method, target, headers, outgoing.body)
        except UpstreamError as exc:
            raise gateway_error(exc, provider.name, ctx.request_id) from None
        finally:
            ctx.upstream_s = time.perf_counter() - sent
        ctx.upstream_status = response.status
        ctx.error = await relay_raw(ex, response, ctx.headers(*relay_headers(response)))

    def describe(self) -> str:
        return "upstream (relayed as it is, one attempt)"


_PATH_SAFE = "/-._~:@!$&'()*+,;="
_SEGMENTS = re.compile(r"[/\\]")
_QUERY_SAFE = _PATH_SAFE + "=?&%"


def safe_path(path: str) -> str:
    """The caller's (decoded) path, re-encoded for the upstream request line; 404 for one that tries to
    leave its endpoint family (dot segments) or carries control characters.  A backslash counts as a slash
    and a segment is also read percent-decoded once more (``%2e%2e`` sent as ``%252e%252e``): an upstream
    or a proxy before it that normalises either way would otherwise walk out of the family."""
    # The regular-expression split and unquote only where they can matter: an ordinary path costs as before.
    segments = _SEGMENTS.split(path) if "\\" in path else path.split("/")
    if any(segment in (".", "..") or ("%" in segment and unquote(segment) in (".", ".."))
           for segment in segments) or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise NotFound(f"Unknown request URL: {quote(path[:200], safe=_PATH_SAFE)}.", code="unknown_url")
    return quote(path, safe=_PATH_SAFE)
