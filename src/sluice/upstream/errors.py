"""Errors of the upstream HTTP client.

    UpstreamError
     ├── ConnectError           could not open a connection (refused, DNS, TLS handshake)
     ├── ConnectionClosed       the peer closed or reset before the response was complete
     │    └── TruncatedBody     ... after the headers: the body is shorter than announced
     ├── MalformedResponse      bytes that are not HTTP/1.1
     ├── ResponseTooLarge       a buffered body over the caller's limit
     └── UpstreamTimeout        a deadline passed
          ├── ConnectTimeout
          ├── ReadTimeout       no byte for read_timeout, or the total deadline passed
          └── PoolTimeout       no connection became free in time

They are defined in sluice._native._upstream_errors, below the connection's two twins (compiled and pure),
which raise them; this module is where the rest of sluice finds them.
"""

from __future__ import annotations

from .._native._upstream_errors import (
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

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "MalformedResponse",
    "PoolTimeout",
    "ReadTimeout",
    "ResponseTooLarge",
    "TruncatedBody",
    "UpstreamError",
    "UpstreamTimeout",
]
