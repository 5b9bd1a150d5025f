"""Redaction of secrets and personal data from bodies written to the debug access log.

Only used with ``observability.log_bodies`` (a debugging aid, off by default);
bodies are never logged otherwise.  Patterns err on the side of redacting too
much: a debug log that leaks a key is worse than one that hides a number.
"""

from __future__ import annotations

import re

__all__ = ["MARKS", "redact"]

_PATTERNS = (
    # Secrets first, so a key that looks like a number is still called a secret.
    ("secret", re.compile(r'(?i)("(?:api[_-]?key|authorization|password|secret|token|access_token)"\s*:\s*)"[^"]*"')),
    ("secret", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")),
    ("secret", re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}")),
    ("secret", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("secret", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")),
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
    ("card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b")),
    ("phone", re.compile(r"\+?\(?\d{1,4}\)?[ .-]?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}\b")),
    ("ip", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")),
)

# What redact() leaves where it took something out ("[email]", ...): a text holding one is not the original.
MARKS = re.compile(r"\[(?:" + "|".join(sorted({kind for kind, _ in _PATTERNS})) + r")\]")


def redact(body: bytes, limit: int) -> str:
    """The body as text, clipped to ``limit`` characters, with secrets and personal data replaced."""
    # Redact a margin past the limit, then clip: a secret cut in two at the limit is still found.
    text = body[:limit * 8].decode("utf-8", "replace")
    clipped = len(text) > limit
    text = text[:limit * 2]
    for kind, pattern in _PATTERNS:
        # A pattern with a group keeps it (the JSON key) and replaces the value.
        text = pattern.sub(rf'\1"[{kind}]"' if pattern.groups else f"[{kind}]", text)
    return text[:limit] + "…[clipped]" if clipped else text
