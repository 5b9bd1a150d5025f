"""Application logs: one line per event, each carrying the request id when there is one."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure_logging"]


class _RequestIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


def configure_logging(level: str | None = None) -> None:
    """Sends sluice's logs to stderr; level from the argument or SLUICE_LOG_LEVEL (default INFO)."""
    logger = logging.getLogger("sluice")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"
    ))
    handler.addFilter(_RequestIdDefault())
    logger.addHandler(handler)
    logger.setLevel((level or os.environ.get("SLUICE_LOG_LEVEL", "INFO")).upper())
    logger.propagate = False
