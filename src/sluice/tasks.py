"""Stopping a background task: the one way every part of the gateway does it.

A background loop (a sync, a poll, a writer, a health check) is stopped by
cancelling it and awaiting it, so that it has left its ``finally`` blocks
before its owner closes what the loop uses (a client, a store).  Its
``CancelledError`` is the expected end, not an error of the caller: it is
swallowed here, unless the caller is being cancelled itself while it waits
(then it propagates, so a shutdown's timeout is not lost); any other
exception the task ended with is raised.

A bottom-floor module: it imports nothing of sluice, so every layer may use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any], *, cancel: bool = True) -> None:
    """Cancels ``task`` (unless ``cancel`` is False: it was cancelled already, or is let finish) and waits
    until it has ended, swallowing the ``CancelledError`` it ends with."""
    if cancel:
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled (a shutdown's timeout): that is not the task's end
