"""The upstream HTTP client and its errors."""

from .client import Body, Response, UpstreamClient
from .errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    MalformedResponse,
    PoolTimeout,
    ReadTimeout,
    ResponseTooLarge,
    TruncatedBody,
    UpstreamError,
    UpstreamTimeout,
)
from .origin import Origin, parse_base_url

__all__ = [
    "Body",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "MalformedResponse",
    "Origin",
    "PoolTimeout",
    "ReadTimeout",
    "Response",
    "ResponseTooLarge",
    "TruncatedBody",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamTimeout",
    "parse_base_url",
]
