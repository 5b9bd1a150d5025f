"""What the server faces share: the body limits they enforce (the ``Exchange`` protocol itself is in
sluice.context, which ``rsgi.py`` and ``asgi.py`` adapt to)."""

from __future__ import annotations

from ..context import ClientGone, Exchange, Headers
from ..errors import InvalidRequest, PayloadTooLarge

__all__ = ["DISCARD_TIMEOUT_S", "ClientGone", "Exchange", "Headers", "check_declared_length"]

DISCARD_TIMEOUT_S = 2.0  # the most a refused body is read for, to be dropped


def check_declared_length(value: str, limit: int) -> None:
    """Rejects a Content-Length over ``limit`` before a byte of the body is read."""
    if not value.isdigit():
        raise InvalidRequest("Invalid Content-Length header.", code="invalid_content_length")
    if int(value) > limit:
        raise PayloadTooLarge.over(limit)
