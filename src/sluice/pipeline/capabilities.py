"""What a request needs from its target: the capabilities routing checks.

Only computed for models whose targets differ in what they can do (see
``routing.ModelRoute.complete``); an OpenAI-only model never pays for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_needs", "messages_needs", "needs_of"]

_JSON_FORMATS = frozenset({"json_object", "json_schema"})
_ENDPOINT_NEEDS = {"/v1/completions": "completions", "/v1/embeddings": "embeddings"}


def needs_of(request: Any, endpoint: str) -> frozenset[str]:
    """What a decoded request to ``endpoint`` needs from its target."""
    if endpoint == "/v1/chat/completions":
        return chat_needs(request)
    if endpoint == "/v1/messages":
        return messages_needs(request)
    needs = {_ENDPOINT_NEEDS[endpoint]}
    if getattr(request, "stream", False):
        needs.add("streaming")
    return frozenset(needs)


def chat_needs(request: Any) -> frozenset[str]:
    """Needs of an OpenAI chat request (a decoded ChatRequest)."""
    needs = _conversation_needs(request, "image_url")
    response_format = request.response_format
    if isinstance(response_format, dict) and response_format.get("type") in _JSON_FORMATS:
        needs.add("json_mode")
    return frozenset(needs)


def messages_needs(request: Any) -> frozenset[str]:
    """Needs of an Anthropic Messages request (a decoded MessagesRequest)."""
    return frozenset(_conversation_needs(request, "image"))


def _conversation_needs(request: Any, image_part: str) -> set[str]:
    needs = {"chat"}
    if request.stream:
        needs.add("streaming")
    if request.tools:
        needs.add("tools")
    if any(_has_part(m.content, image_part) for m in request.messages):
        needs.add("vision")
    return needs


def _has_part(content: Any, kind: str) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == kind for p in content)
