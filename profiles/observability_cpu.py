"""CPU that the per-request observability work costs, per request, without a server or an upstream.

    .venv/bin/python profiles/observability_cpu.py 'observability: {metrics: false}' \\
        'observability: {access_log: true, access_log_path: /dev/null}' [...] [--requests N] [--rounds R]

For each config snippet: builds the gateway, then times the response side of the chat route's
pipeline (``Pipeline.respond``: the finish, usage parsing, rate-limit settling, metrics, trace,
access-log queueing) over N finished requests (default 100,000) carrying the
answer bench/'s nginx upstream gives (a real OpenAI chat.completion: its usage is followed by
service_tier and system_fingerprint, so the usage search is as long as in the benchmark), plus
the access log's flushes, best of R. Throughput on this shared 2-core machine drifts by
more than the few per cent this work costs; this counts only the work itself, so compare it with
the CPU one request costs in all (1 / req/s of one worker on one core, bench/).

A tight loop over one function keeps caches and branch predictors warm, so the times here are a
floor: in a server the same work runs between Granian's and the upstream client's and costs more
(the 1.1 µs this once gave for metrics was ~17,000 instructions in the real path). For counts that
do not depend on the machine's load, run it under ``valgrind --tool=callgrind`` with two values of
``--requests --rounds 1`` and take the difference of the instruction totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from sluice.config import parse_config
from sluice.context import RequestContext
from sluice.server.app import Gateway

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _harness import CHAT_COMPLETION  # bench/ is not a package

ANSWER = CHAT_COMPLETION.encode()
FLUSH_EVERY = 500  # requests between the access log's flushes (its bound is 10,000 lines)


class FinishedExchange:
    method, path, status = "POST", "/v1/chat/completions", 200

    def header(self, name: str) -> str | None:
        return None


def finished(count: int) -> list[RequestContext]:
    contexts = []
    for _ in range(count):
        ctx = RequestContext("0123456789abcdef0123456789abcdef", time.perf_counter(), "/v1/chat/completions")
        ctx.model, ctx.provider, ctx.upstream_status, ctx.answer = "gpt-4o-mini", "u", 200, ANSWER
        ctx.upstream_s, ctx.overhead_s, ctx.ttfb_s = 0.001, 0.00002, 0.0011
        contexts.append(ctx)
    return contexts


async def measure(snippet: str, requests: int, rounds: int) -> float:
    gateway = Gateway(parse_config(f"""{snippet}
providers: {{u: {{kind: openai, base_url: "http://127.0.0.1:1"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: u, model: gpt-4o-mini}}]}}}}
""", {}))
    exchange = FinishedExchange()
    pipeline = gateway.routes.resolve("/v1/chat/completions", "POST")
    ran = len(pipeline.stages)  # every stage's request step completed: every response step runs
    best = float("inf")
    for _ in range(rounds):
        contexts = finished(requests)
        if gateway.metrics is not None:
            gateway.metrics.in_flight += requests
        access_log = gateway.access_log
        start = time.perf_counter()
        for i, ctx in enumerate(contexts):
            pipeline.respond(exchange, ctx, ran)  # type: ignore[arg-type]
            if access_log is not None and i % FLUSH_EVERY == FLUSH_EVERY - 1:
                access_log.flush()  # as the loop's timer would (~750 requests per 50 ms at 15 K req/s)
        if access_log is not None:
            access_log.flush()
        best = min(best, (time.perf_counter() - start) / requests)
    gateway.close_logs()
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snippets", nargs="+", help="config snippets, one measurement each")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for snippet in args.snippets:
        seconds = asyncio.run(measure(snippet, args.requests, args.rounds))
        print(f"{seconds * 1e6:6.2f} us/request  {snippet}")


if __name__ == "__main__":
    main()
