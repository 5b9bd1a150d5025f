"""The other OpenAI endpoints, relayed as they are: responses, assistants, threads, files, batches, audio, images.

sluice does not model these APIs; it forwards them to an openai-kind provider
(the model's target when a JSON body names a model, else ``passthrough.provider``)
with that provider's key, and relays the answer piece by piece as it arrives:
run and response streams stay streams, audio stays binary, and uploads
(multipart) are streamed through without being buffered.

Keys limited to some models (``Principal.model_globs``): a JSON body's
``model`` is checked (the gateway's ``_passthrough_target``); a JSON body that
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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import Forbidden, InvalidRequest
from ..upstream import Response, UpstreamError
from .exchange import ClientGone, Exchange, Headers
from .multipart import boundary_of, read_form

if TYPE_CHECKING:
    from ..auth.principal import Principal

__all__ = ["FORWARDED_HEADERS", "check_batch_upload", "is_file_upload", "needs_model", "passthrough_route",
           "refuse_unnamed_model", "relay_raw"]

# The bounded route label of each passthrough family (metrics and logs).
_PREFIXES = ("/v1/responses", "/v1/assistants", "/v1/threads", "/v1/files", "/v1/batches", "/v1/audio",
             "/v1/images", "/v1/vector_stores", "/v1/uploads")
# Caller headers the upstream needs to read the request as meant; the caller's credentials never go on.
FORWARDED_HEADERS = ("content-type", "accept", "openai-beta", "idempotency-key")


def passthrough_route(path: str) -> str | None:
    """The passthrough family of ``path`` (e.g. "/v1/files"), or None if it is not one."""
    for prefix in _PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return None


async def relay_raw(ex: Exchange, response: Response, headers: Headers) -> str | None:
    """Relays an answer of any kind as its pieces arrive: no parsing, no buffering.

    Returns an error class when the upstream broke off mid-body (the caller sees a cut body: there is
    no format to write an error event in).
    """
    stop_watch: Callable[[], object] | None = None
    try:
        await ex.start_stream(response.status, headers)
        stop_watch = ex.on_disconnect(response.abort)
        while chunk := await response.next_chunk():
            await ex.write(chunk)
        await ex.end_stream()
    except ClientGone:
        return "client_disconnected"
    except UpstreamError:
        return "upstream_stream_error"
    finally:
        if stop_watch is not None:
            stop_watch()
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
    except orjson.JSONDecodeError:  # _passthrough_target refused it already; here for any other caller
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
            request = orjson.loads(line)
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
