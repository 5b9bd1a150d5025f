"""Tiny RSGI proxies for bench/client_compare.py: the same forwarding shape, three HTTP clients.

Each factory returns an RSGI app that sends the request body, as a POST to the
same path, to the upstream named by BENCH_UPSTREAM_URL (e.g.
http://127.0.0.1:8001) and answers with the upstream's status, content-type and
body.  Nothing else happens per request (no parsing, no routing), so the
difference between the variants is the client.

    granian --interface rsgi --factory --loop uvloop --workers 1 forwarders:sluice_app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["aiohttp_app", "httpx_app", "sluice_app"]

LIMIT = 64 * 1024 * 1024
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
JSON = "application/json"

# forward(path, body) -> (status, content-type, body)
Forward = Callable[[str, bytes], Awaitable[tuple[int, str, bytes]]]


def _upstream() -> str:
    url = os.environ.get("BENCH_UPSTREAM_URL")
    if not url:
        raise RuntimeError("BENCH_UPSTREAM_URL must name the upstream, e.g. http://127.0.0.1:8001")
    return url.rstrip("/")


class ForwardApp:
    """The RSGI side, shared by all variants: read the body, forward it, answer with the result."""

    def __init__(self, forward: Forward, close: Callable[[], Awaitable[None]] | None = None) -> None:
        self._forward = forward
        self._close = close

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        body: bytes = await proto()
        try:
            status, content_type, data = await self._forward(scope.path, body)
        except Exception as exc:  # answered 502 so that wrk counts it as non-2xx
            proto.response_bytes(502, [("content-type", "text/plain")], f"forwarding failed: {exc!r}".encode())
            return
        proto.response_bytes(status, [("content-type", content_type)], data)

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        if self._close is not None:
            with contextlib.suppress(Exception):  # shutting down: nothing to report to
                loop.run_until_complete(self._close())


def sluice_app() -> ForwardApp:
    """(a) sluice.upstream.UpstreamClient: the client the gateway uses."""
    from sluice.upstream import UpstreamClient, parse_base_url

    origin, prefix = parse_base_url(_upstream())
    headers = list(HEADERS.items())
    state: dict[str, UpstreamClient] = {}

    async def forward(path: str, body: bytes) -> tuple[int, str, bytes]:
        client = state.get("client")
        if client is None:  # made inside the worker's running loop
            client = state["client"] = UpstreamClient()
        response = await client.request(origin, "POST", prefix + path, headers, body)
        data = await response.read(LIMIT)
        content_type = response.header(b"content-type")
        return response.status, content_type.decode("latin-1") if content_type else JSON, data

    async def close() -> None:
        if "client" in state:
            await state["client"].close()

    return ForwardApp(forward, close)


def aiohttp_app() -> ForwardApp:
    """(b) aiohttp.ClientSession with a keep-alive TCPConnector and no connection limit."""
    import aiohttp

    base = _upstream()
    state: dict[str, aiohttp.ClientSession] = {}

    async def forward(path: str, body: bytes) -> tuple[int, str, bytes]:
        session = state.get("session")
        if session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
            session = state["session"] = aiohttp.ClientSession(connector=connector)
        async with session.post(base + path, data=body, headers=HEADERS) as response:
            data = await response.read()
            return response.status, response.headers.get("content-type", JSON), data

    async def close() -> None:
        if "session" in state:
            await state["session"].close()

    return ForwardApp(forward, close)


def httpx_app() -> ForwardApp:
    """(c) httpx.AsyncClient with unlimited keep-alive connections (only when httpx is installed)."""
    import httpx  # type: ignore[import-not-found,unused-ignore]  # optional

    base = _upstream()
    state: dict[str, httpx.AsyncClient] = {}

    async def forward(path: str, body: bytes) -> tuple[int, str, bytes]:
        client = state.get("client")
        if client is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=30)
            client = state["client"] = httpx.AsyncClient(limits=limits, timeout=30)
        response = await client.post(base + path, content=body, headers=HEADERS)
        return response.status_code, response.headers.get("content-type", JSON), response.content

    async def close() -> None:
        if "client" in state:
            await state["client"].aclose()

    return ForwardApp(forward, close)
