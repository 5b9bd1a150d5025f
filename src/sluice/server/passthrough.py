"""The other OpenAI endpoints, relayed as they are: responses, assistants, threads, files, batches, audio, images.

sluice does not model these APIs; it forwards them to an openai-kind provider
(the model's target when a JSON body names a model, else ``passthrough.provider``)
with that provider's key, and relays the answer piece by piece as it arrives:
run and response streams stay streams, audio stays binary, and uploads
(multipart) are streamed through without being buffered.
"""

from __future__ import annotations

from collections.abc import Callable

from ..upstream import Response, UpstreamError
from .exchange import ClientGone, Exchange, Headers

__all__ = ["FORWARDED_HEADERS", "passthrough_route", "relay_raw"]

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
