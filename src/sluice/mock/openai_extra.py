"""More of the OpenAI API for the mock upstream: responses, files and speech.

Enough of each for the gateway's passthrough to be tested end to end: a JSON
answer and an SSE stream (responses), a multipart upload whose size the answer
reports (files), and a binary answer streamed in pieces (speech).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import time
from collections.abc import Iterator
from typing import Any

import orjson

from .openai import REPLY, prompt_tokens

__all__ = ["SPEECH_BYTES", "file_object", "response_events", "response_object", "speech_chunks", "upload"]

SPEECH_BYTES = 256 * 1024  # the mock's "audio": this many deterministic bytes
_ids = itertools.count(1)


def response_object(request: dict[str, Any], number: int | None = None) -> dict[str, Any]:
    """A /v1/responses answer whose output text is REPLY."""
    words = REPLY.split()
    prompt = prompt_tokens(request.get("input", ""))
    return {
        "id": f"resp_mock_{number or next(_ids)}", "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": request.get("model"),
        "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}],
        "usage": {"input_tokens": prompt, "output_tokens": len(words), "total_tokens": prompt + len(words)},
    }


def response_events(request: dict[str, Any]) -> Iterator[bytes]:
    """The SSE events of a streamed response: created, one text delta per word, completed."""
    final = response_object(request)
    started = {**final, "status": "in_progress", "output": []}
    yield _event("response.created", {"type": "response.created", "response": started})
    for position, word in enumerate(REPLY.split()):
        delta = word if position == 0 else " " + word
        yield _event("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_mock",
                                                     "output_index": 0, "content_index": 0, "delta": delta})
    yield _event("response.completed", {"type": "response.completed", "response": final})


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def upload(content_type: str, body: bytes) -> dict[str, Any] | None:
    """The file object for a multipart /v1/files upload; None when the body is not a valid upload."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"content-type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            data, filename = payload, str(part.get_filename() or "upload")
        else:
            fields[name] = payload.decode("utf-8", "replace")
    if data is None or "purpose" not in fields:
        return None
    return file_object(f"file-mock{next(_ids)}", filename, len(data), fields["purpose"])


def file_object(file_id: str, filename: str = "upload", size: int = 0, purpose: str = "batch") -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename,
            "purpose": purpose, "status": "processed"}


def speech_chunks(chunk_size: int = 16 * 1024) -> Iterator[bytes]:
    """SPEECH_BYTES of "audio" (bytes 0..255 repeated), in pieces."""
    pattern = bytes(range(256)) * (chunk_size // 256)
    for _ in range(SPEECH_BYTES // len(pattern)):
        yield pattern
