"""The provider interface: what a provider kind implements to serve requests.

A provider turns a call into an upstream request (origin, path, headers, body)
and the upstream's answer back into the caller's wire format.  The gateway
speaks OpenAI chat internally: a call's body is either OpenAI (``wire ==
"openai"``) or already in the provider's own format (``wire == provider.wire``,
e.g. an Anthropic client talking to an Anthropic target), which passes through
untouched both ways.  A kind whose format differs translates in ``prepare``,
``answer`` and ``stream`` with the helpers of ``sluice.providers.translate``;
the OpenAI kind translates nothing, which is the fast path.

Third-party kinds subclass ``Provider`` and register through the
``sluice.providers`` entry-point group (docs/providers.md).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson

from ..config import ProviderConfig
from ..config.vocabulary import CAPABILITIES
from ..upstream import Origin, parse_base_url

__all__ = ["Call", "InvalidAnswer", "Provider", "StreamTranslator", "UpstreamRequest", "json_answer"]


@dataclass(slots=True)
class Call:
    """One request as the gateway understood it, on its way to a provider."""

    endpoint: str  # the OpenAI path it stands for, e.g. /v1/chat/completions (or /v1/messages natively)
    method: str
    body: bytes  # with the model already renamed for the target
    stream: bool
    request_id: str
    model: str = ""  # the target's name for the model
    wire: str = "openai"  # the format of body: "openai", or the provider's own
    headers: dict[str, str] | None = None  # caller headers a kind may pass on (e.g. anthropic-beta)
    # The credential headers of the deployment it goes to (Deployment.prepare sets them); None: the
    # provider's next key in rotation.
    auth: tuple[tuple[str, str], ...] | None = None
    _parsed: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        """The body as JSON, parsed once (only kinds that translate need it)."""
        if self._parsed is None:
            parsed = orjson.loads(self.body)
            if not isinstance(parsed, dict):
                raise ValueError("the body is not a JSON object")
            self._parsed = parsed
        return self._parsed


class InvalidAnswer(ValueError):
    """The upstream answered something its kind's format cannot parse (the gateway answers 502)."""

    def __init__(self, status: int, body: bytes, problem: str) -> None:
        clipped = body[:300].decode("utf-8", "replace")
        super().__init__(f"status {status}, {problem}: {clipped!r}")
        self.status = status


def json_answer(status: int, body: bytes) -> dict[str, Any]:
    """An upstream answer parsed as a JSON object, or InvalidAnswer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidAnswer(status, body, "not JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidAnswer(status, body, "not a JSON object")
    return parsed


@dataclass(slots=True)
class UpstreamRequest:
    origin: Origin
    method: str
    target: str  # path and query on the origin
    headers: list[tuple[str, str]]
    body: bytes | None


class StreamTranslator(Protocol):
    """A provider's stream, translated as bytes arrive: whole events of the caller's format out."""

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens seen, -1 when unknown."""

    @property
    def error(self) -> str | None:
        """An error class when the stream failed."""

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class Provider(ABC):
    """A configured provider at one base URL, with a pool of API keys, speaking a wire format.

    A provider section with several base URLs becomes one instance per URL (routing.Router), each
    key of each becoming a deployment of its own.
    """

    kind: ClassVar[str]
    wire: ClassVar[str] = "openai"  # the format it speaks natively
    # What targets of this kind can do unless the config says otherwise.
    capabilities: ClassVar[frozenset[str]] = CAPABILITIES

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.origin, self.prefix = parse_base_url(
            config.base_url, verify_tls=config.verify_tls, ca_file=config.ca_file
        )
        self._auth = itertools.cycle(self.auth_headers(key) for key in config.api_keys or ("",))
        self._extra = list(config.headers.items())

    @abstractmethod
    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        """The headers that carry ``api_key`` (empty key: no credentials)."""

    @abstractmethod
    def prepare(self, call: Call) -> UpstreamRequest:
        """The upstream request for ``call`` (translated into this kind's format when call.wire differs)."""

    def answer(self, call: Call, status: int, body: bytes) -> bytes:
        """The upstream's non-streamed answer (or error) in the call's format; the OpenAI kind passes it on."""
        return body

    def stream(self, call: Call) -> StreamTranslator | None:
        """A translator for the upstream's stream into the call's format; None when it needs none."""
        return None

    def token_counts(self, call: Call, answer: bytes) -> tuple[int, int] | None:
        """(prompt, completion) tokens of a native answer the gateway passed on untouched; None: OpenAI usage."""
        return None

    @classmethod
    def check_config(cls, config: ProviderConfig) -> list[tuple[str, str]]:
        """Problems of a provider section for this kind, as (field, problem); empty when fine."""
        return []

    def health_request(self, auth: tuple[tuple[str, str], ...] | None = None) -> UpstreamRequest:
        """A cheap request that tells whether this base URL and key serve (routing.health_check): the model
        list by default (GET {prefix}/v1/models); ``auth`` the key's headers, None: the next key's."""
        headers = [("accept", "application/json"), *(self.next_auth() if auth is None else auth), *self._extra]
        return UpstreamRequest(self.origin, "GET", self.prefix + "/v1/models", headers, None)

    def next_auth(self) -> tuple[tuple[str, str], ...]:
        """Credentials of the next key of the pool, in rotation (when no deployment names its key)."""
        return next(self._auth)

    def extra_headers(self) -> list[tuple[str, str]]:
        return self._extra

    def request_headers(self, call: Call, *own: tuple[str, str]) -> list[tuple[str, str]]:
        """The headers every JSON call carries: type, what it accepts, the request id, then the kind's
        ``own``, the credentials (the deployment's key, else the next key's) and the configured extras."""
        auth = call.auth
        return [
            ("content-type", "application/json"),
            ("accept", "text/event-stream" if call.stream else "application/json"),
            ("x-request-id", call.request_id),
            *own,
            *(self.next_auth() if auth is None else auth),
            *self._extra,
        ]

    def translates(self, call: Call) -> bool:
        """Whether this call crosses formats (and so its body must be parsed)."""
        return call.wire != self.wire
