"""Errors of the upstream HTTP client (sluice.upstream exports them; defined here, below both twins of the
connection, ext/_upstream.pyx and _pure_upstream.py, which raise them: sluice.upstream imports sluice._native,
not the other way round).

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
"""

from __future__ import annotations

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


class UpstreamError(Exception):
    """Base of the client's errors."""


class ConnectError(UpstreamError):
    pass


class ConnectionClosed(UpstreamError):
    pass


class TruncatedBody(ConnectionClosed):
    pass


class MalformedResponse(UpstreamError):
    pass


class ResponseTooLarge(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class ConnectTimeout(UpstreamTimeout):
    pass


class ReadTimeout(UpstreamTimeout):
    pass


class PoolTimeout(UpstreamTimeout):
    pass
