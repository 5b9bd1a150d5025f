"""The error the translators raise for a request the target format cannot carry."""

from __future__ import annotations

__all__ = ["UnsupportedContent"]


class UnsupportedContent(ValueError):
    """Part of a request has no equivalent upstream; ``field`` is its path, e.g. ``messages[2].content[1].type``."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
