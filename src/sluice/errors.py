"""The errors sluice raises, and how each reaches the caller.

    SluiceError
     ├── ConfigError                 a config mistake: path + problem, exit code 2 at start
     ├── DependencyUnavailable       internal: a dependency could not be reached, failed or timed out
     │    │                          (``dependency`` names it, ``__cause__`` says why); answered as a DependencyDown,
     │    │                          or the request goes on without it (fail open)
     │    ├── StoreUnavailable       the key store (sluice.store; also a StoreError)
     │    ├── QuotaStoreUnavailable  the quota store (sluice.state.quota_store)
     │    ├── LimiterUnavailable     Redis of the rate limits (sluice.state.redis_limits)
     │    ├── DeadLettersUnavailable the dead-letter queue (also a DeadLetterError)
     │    └── IssuerUnavailable      a token issuer's endpoint (sluice.auth.oidc)
     └── GatewayError                answered to the caller in its wire format
          ├── InvalidRequest         400 invalid_request_error (names the field in ``param``)
          ├── Unauthorized           401 (missing or wrong credentials; carries WWW-Authenticate)
          ├── Forbidden              403 (a permission, a model or the client address not allowed)
          ├── AddressListed          403 the client address is on an IP reputation list
          ├── NotFound               404 (unknown path, unknown model, an admin record that does not exist)
          ├── MethodNotAllowed       405
          ├── BodyTimeout            408 the request body did not arrive in time
          ├── Conflict               409 an admin record's id is taken, or its state forbids the change
          ├── PayloadTooLarge        413
          ├── RateLimited            429 a requests rate limit (error type "requests")
          │    ├── TokensLimited     429 a tokens rate limit (error type "tokens")
          │    │    └── TokenQuotaExceeded   429 a tokens quota (also a QuotaExceeded)
          │    └── QuotaExceeded     429 a requests quota
          ├── Throttled              429 abuse protection (not a limit the caller was given)
          │    ├── AuthThrottled     429 too many authentication failures from the client address
          │    ├── PowRequired       429 with a proof-of-work challenge to solve
          │    └── AnomalyThrottled  429 the key is far above its own baseline
          ├── BadGateway             502 upstream unreachable, reset or malformed
          ├── DependencyDown         503 server_error: a dependency the answer needs is unavailable
          │    ├── AuthUnavailable   503 the key store or a token issuer cannot be reached (retry-after: 1)
          │    ├── LimiterDown       503 the rate limiter is unavailable and its policy fails closed
          │    └── StoreDown         503 the key store cannot be reached by the admin API
          ├── NoDeployment           503 every deployment of a model and its fallbacks is failing or resting
          └── GatewayTimeout         504 upstream too slow

Each error renders in the caller's wire format: OpenAI's shape on OpenAI
routes, Anthropic's on /v1/messages (``GatewayError.body``).

A ``DependencyUnavailable`` is never answered as it is: the stage that met it
decides (fail open, or a ``DependencyDown`` 503 with a message for the caller).
The other errors of a part stay with it: the store's ``RecordNotFound`` and
``RecordConflict`` (sluice.store), and the dead-letter queue's ``DeadLetterError``
family (``LetterNotFound``, ``DeadLettersUnavailable``), defined here so that its backends in
sluice.state and sluice.resilience share them.

``Unauthorized``, ``Forbidden`` and ``AuthUnavailable`` carry a ``reason`` for the
audit log (finer than the code the caller sees: "revoked" and "unknown" share
the code ``invalid_api_key``).

Errors of the upstream client (sluice.upstream.errors) are mapped to
BadGateway / GatewayTimeout by ``sluice.server.forward.gateway_error``.  Upstream
4xx/5xx answers are not errors of the gateway: they are relayed with their own
status and body.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

__all__ = [
    "AddressListed",
    "AnomalyThrottled",
    "AuthThrottled",
    "AuthUnavailable",
    "BadGateway",
    "BodyTimeout",
    "ConfigError",
    "Conflict",
    "DeadLetterError",
    "DeadLettersUnavailable",
    "DependencyDown",
    "DependencyUnavailable",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "InvalidRequest",
    "LetterNotFound",
    "LimiterDown",
    "MethodNotAllowed",
    "NoDeployment",
    "NotFound",
    "PayloadTooLarge",
    "PowRequired",
    "QuotaExceeded",
    "RateLimited",
    "SluiceError",
    "StoreDown",
    "Throttled",
    "TokenQuotaExceeded",
    "TokensLimited",
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


class DependencyUnavailable(SluiceError):
    """A dependency (a store, Redis, a token issuer) could not be reached, failed or did not answer in time;
    ``__cause__`` holds why.  Internal: the stage that meets it fails open or answers a ``DependencyDown``."""

    dependency: ClassVar[str] = "a dependency"  # what could not be reached: each subclass names its own


class DeadLetterError(SluiceError):
    """Base of the dead-letter queue's errors."""


class LetterNotFound(DeadLetterError):
    """No letter with that id."""


class DeadLettersUnavailable(DeadLetterError, DependencyUnavailable):
    """The store or Redis could not be reached, or failed."""

    dependency: ClassVar[str] = "the dead-letter queue"


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


class AddressListed(GatewayError):
    """403: the client address is on an IP reputation list (not an auth failure: never in the audit log)."""

    status = 403
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


CLOSE = (("connection", "close"),)  # the rest of the body is not read: the connection cannot carry another


class BodyTimeout(GatewayError):
    """A request body that did not arrive in time (``server.body_read_timeout_s``, ``body_min_rate_bytes_s``)."""

    status = 408
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("The request body did not arrive in time.", code="request_timeout", headers=CLOSE)


class Conflict(GatewayError):
    """409: the id is taken, or the record's state forbids the change."""

    status = 409
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"

    @classmethod
    def over(cls, limit: int) -> PayloadTooLarge:
        return cls(f"The request body is larger than the limit of {limit} bytes.", code="request_too_large")


class RateLimited(GatewayError):
    """429 on a requests policy (OpenAI's error type "requests")."""

    status = 429
    type = "requests"


class TokensLimited(RateLimited):
    type = "tokens"


class QuotaExceeded(RateLimited):
    """429 on a requests quota (OpenAI's error type "requests"), code ``quota_exceeded``."""


class TokenQuotaExceeded(QuotaExceeded, TokensLimited):
    """429 on a tokens quota (error type "tokens")."""


class Throttled(GatewayError):
    """429 from abuse protection, not from a limit the caller was given (so not a ``RateLimited``, whose
    subclasses name the caller's own policies); Anthropic's ``rate_limit_error``."""

    status = 429
    type = "requests"


class AuthThrottled(Throttled):
    """429: too many authentication failures from this address."""


class PowRequired(Throttled):
    """429 with a challenge to solve."""


class AnomalyThrottled(Throttled):
    """429: the key is far above its own baseline."""


class BadGateway(GatewayError):
    status = 502
    type = "upstream_error"


class DependencyDown(GatewayError):
    """503: a dependency the answer needs is unavailable (a ``DependencyUnavailable`` met by the stage that
    answers this, and not failed open)."""

    status = 503
    type = "server_error"


class AuthUnavailable(DependencyDown):
    """503: the credential could not be checked (store or issuer down); nothing about it is known yet."""

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, code=code, headers=(("retry-after", "1"),))
        self.reason = reason or code or "unavailable"


class LimiterDown(DependencyDown):
    """503: the rate limiter (Redis) is unavailable and the policy fails closed."""


class StoreDown(DependencyDown):
    """503: the store of keys and users could not be reached (the admin API and the CLI)."""


class NoDeployment(GatewayError):
    """503: no deployment can take the request now (breakers open, keys resting); it may be retried later."""

    status = 503
    type = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
