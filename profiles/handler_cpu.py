"""CPU cost of one request inside the gateway, without the server: Gateway.handle on a fake
Exchange, forwarding over the real upstream client to a real upstream (URL as argument, e.g. the
nginx of bench/). Sequential requests on one connection, so it measures per-request work, not
concurrency.

    .venv/bin/python profiles/handler_cpu.py http://127.0.0.1:PORT [--requests N] [--cprofile] [--config YAML]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import uvloop

from sluice.config import parse_config
from sluice.server.app import Gateway

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "content-length": str(len(BODY))}


class FakeExchange:
    """The Exchange interface with the request above; answers are counted, not sent."""

    __slots__ = ("client", "method", "path", "query", "started", "status")

    def __init__(self) -> None:
        self.method, self.path, self.query, self.client = "POST", "/v1/chat/completions", "", "127.0.0.1:1"
        self.started = False
        self.status = 0

    def header(self, name: str) -> str | None:
        return HEADERS.get(name)

    async def read_body(self, limit: int) -> bytes:
        return BODY

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started = True
        self.status = status


async def run(url: str, requests: int, profile: bool, snippet: str) -> None:
    gateway = Gateway(parse_config(f"""{snippet}
providers: {{u: {{kind: openai, base_url: "{url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: u, model: gpt-4o-mini}}]}}}}
""", {}))
    for _ in range(1000):  # warm up: connection open, caches hot
        await gateway.handle(FakeExchange())  # type: ignore[arg-type]
    profiler = cProfile.Profile() if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(requests):
        ex = FakeExchange()
        await gateway.handle(ex)  # type: ignore[arg-type]
        assert ex.status == 200
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{requests} requests: {cpu / requests * 1e6:.1f} us CPU and {wall / requests * 1e6:.1f} us wall each")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    await gateway.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--config", default="", help="a YAML snippet added to the config (a feature on or off)")
    args = parser.parse_args()
    uvloop.run(run(args.url, args.requests, args.cprofile, args.config))


if __name__ == "__main__":
    main()
