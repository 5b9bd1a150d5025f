"""Tool calls for the mock's answers, shared by its wire formats: which tools to call, with what input.

Deterministic, so tests can predict them: a call is made when the request
forces one or its last user text says "use a tool" or "call <name>"; the input
holds the schema's required properties with sample values.
"""

from __future__ import annotations

from typing import Any

__all__ = ["choose_tools", "sample_input"]


def choose_tools(names: list[str], text: str, *, forced: bool, only: list[str] | None = None,
                 parallel: bool = True) -> list[str]:
    """The tools an answer calls, [] for a plain answer.

    A call is made when ``forced`` or when ``text`` says "use a tool" or "call <name>"; it goes to
    the first of ``only`` (the tools the request allows), else of the tools named, else of all;
    "parallel" in the text (when ``parallel`` is allowed) makes two calls: the first two of those,
    or the one twice.
    """
    if not names:
        return []
    lowered = text.lower()
    named = [name for name in names if f"call {name.lower()}" in lowered]
    if not (forced or named or "use a tool" in lowered):
        return []
    pool = only or named or names
    if parallel and "parallel" in lowered:
        return [pool[0], pool[1] if len(pool) > 1 else pool[0]]
    return [pool[0]]


def sample_input(schema: Any) -> dict[str, Any]:
    """An object holding the required properties of a JSON (or Gemini) schema, with sample values."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    return {name: _sample(properties.get(name)) for name in required if isinstance(name, str)}


def _sample(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "mock"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if isinstance(options, list) and options:
            return _sample(options[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if not isinstance(kind, str):
        kind = "object" if "properties" in schema else "string"
    kind = kind.lower()
    if kind == "object":
        return sample_input(schema)
    return {"number": 1, "integer": 1, "boolean": True, "array": [], "null": None}.get(kind, "mock")
