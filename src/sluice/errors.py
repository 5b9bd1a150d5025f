"""The errors sluice raises, and how each reaches the caller.

    SluiceError
     ├── ConfigError                 a config mistake: path + problem, exit code 2 at start
     └── GatewayError                answered to the caller in its wire format
          ├── InvalidRequest         400 invalid_request_error (names the field in ``param``)
          ├── Unauthorized           401 (missing or wrong credentials; carries WWW-Authenticate)
          ├── Forbidden              403 (a permission, a model or the client address not allowed)
          ├── NotFound               404 (unknown path, unknown model)
          ├── MethodNotAllowed       405
          ├── PayloadTooLarge        413
          ├── BadGateway             502 upstream unreachable, reset or malformed
          ├── AuthUnavailable        503 the key store or a token issuer cannot be reached
          ├── NoDeployment           503 every deployment of a model and its fallbacks is failing or resting
          └── GatewayTimeout         504 upstream too slow

Each error renders in the caller's wire format: OpenAI's shape on OpenAI
routes, Anthropic's on /v1/messages (``GatewayError.body``).

``Unauthorized``, ``Forbidden`` and ``AuthUnavailable`` carry a ``reason`` for the
audit log (finer than the code the caller sees: "revoked" and "unknown" share
the code ``invalid_api_key``).

Errors of the upstream client (sluice.upstream.errors) are mapped to
BadGateway / GatewayTimeout by ``from_upstream``.  Upstream 4xx/5xx answers are
not errors of the gateway: they are relayed with their own status and body.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

__all__ = [
    "AuthUnavailable",
    "BadGateway",
    "ConfigError",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "InvalidRequest",
    "MethodNotAllowed",
    "NoDeployment",
    "NotFound",
    "PayloadTooLarge",
    "SluiceError",
    "Unauthorized",
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

    def anthropic_body(self) -> bytes:
        """The Anthropic error shape: {"type": "error", "error": {"type", "message"}}."""
        kind = ANTHROPIC_ERROR_TYPES.get(self.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})

    def body(self, wire: str) -> bytes:
        """The error in the caller's wire format."""
        return self.anthropic_body() if wire == "anthropic" else self.openai_body()


ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                         429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
                         504: "api_error", 529: "overloaded_error"}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None,
                 headers: tuple[tuple[str, str], ...] = (("www-authenticate", 'Bearer realm="sluice"'),)) -> None:
        super().__init__(message, code=code, headers=headers)
        self.reason = reason or code or "unauthorized"


class Forbidden(GatewayError):
    """403: Anthropic's ``permission_error``; OpenAI's invalid_request_error with the code saying what is missing."""

    status = 403
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.reason = reason or code or "forbidden"


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


class AuthUnavailable(GatewayError):
    """503: the credential could not be checked (store or issuer down); nothing about it is known yet."""

    status = 503
    type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, code=code, headers=(("retry-after", "1"),))
        self.reason = reason or code or "unavailable"


class NoDeployment(GatewayError):
    """503: no deployment can take the request now (breakers open, keys resting); it may be retried later."""

    status = 503
    type = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
