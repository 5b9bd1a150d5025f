"""The errors sluice raises, and how each reaches the caller.

    SluiceError
     ├── ConfigError                 a config mistake: path + problem, exit code 2 at start
     └── GatewayError                answered to the caller in its wire format
          ├── InvalidRequest         400 invalid_request_error (names the field in ``param``)
          ├── NotFound               404 (unknown path, unknown model)
          ├── MethodNotAllowed       405
          ├── PayloadTooLarge        413
          ├── BadGateway             502 upstream unreachable, reset or malformed
          └── GatewayTimeout         504 upstream too slow

Errors of the upstream client (sluice.upstream.errors) are mapped to
BadGateway / GatewayTimeout by ``from_upstream``.  Upstream 4xx/5xx answers are
not errors of the gateway: they are relayed with their own status and body.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

__all__ = [
    "BadGateway",
    "ConfigError",
    "GatewayError",
    "GatewayTimeout",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "SluiceError",
]


class SluiceError(Exception):
    """Base of every error sluice raises on purpose."""


class ConfigError(SluiceError):
    """A config file mistake; ``str()`` is ``path: problem``."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class GatewayError(SluiceError):
    """An error answered to the caller: status, OpenAI error type and code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    def openai_body(self) -> bytes:
        """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"

    @classmethod
    def over(cls, limit: int) -> PayloadTooLarge:
        return cls(f"The request body is larger than the limit of {limit} bytes.", code="request_too_large")


class BadGateway(GatewayError):
    status = 502
    type = "upstream_error"


class GatewayTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
