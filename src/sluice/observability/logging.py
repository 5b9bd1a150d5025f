"""Application logs: one line per event, with its level and the request id when there is one.

``observability.log_format`` picks plain text (for people) or JSON lines (for
log pipelines); ``observability.log_level`` the level (the loader fills it from SLUICE_LOG_LEVEL when the
file leaves it out).
Application logs are rare events (start, stop, upstream failures); the per-request
record is the access log.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

__all__ = ["JsonFormatter", "configure_logging"]


class _RequestIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (the traceback, an audit record)."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        audit = getattr(record, "audit", None)  # sluice.auth.audit's record, as structured data
        if audit is not None:
            line["audit"] = audit
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return self._encoder.encode(line).decode()


def configure_logging(level: str | None = None, fmt: str = "text") -> None:
    """Sends sluice's logs to stderr at ``level`` (None: INFO), as ``fmt`` ("text" or "json")."""
    logger = logging.getLogger("sluice")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"
        ))
    handler.addFilter(_RequestIdDefault())
    logger.addHandler(handler)
    logger.setLevel((level or "INFO").upper())
    logger.propagate = False
