"""CPU that the per-request observability work costs, per request, without a server or an upstream.

    .venv/bin/python profiles/observability_cpu.py 'observability: {metrics: false}' \\
        'observability: {access_log: true, access_log_path: /dev/null}' [...]

For each config snippet: builds the gateway, then times ``Gateway._account`` (usage parsing,
metrics, trace, access-log queueing) over 100,000 finished requests with an OpenAI answer, plus
the access log's batch formatting, best of 5. Throughput on this shared 2-core machine drifts by
more than the few per cent this work costs; this counts only the work itself, so compare it with
the CPU one request costs in all (1 / req/s of one worker on one core, bench/).
"""

from __future__ import annotations

import asyncio
import sys
import time

from sluice.config import parse_config
from sluice.server.app import Gateway, RequestContext

ANSWER = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
          b'"content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,'
          b'"total_tokens":17}}')
REQUESTS = 100_000


class FinishedExchange:
    method, path, status = "POST", "/v1/chat/completions", 200

    def header(self, name: str) -> str | None:
        return None


def finished(count: int) -> list[RequestContext]:
    contexts = []
    for _ in range(count):
        ctx = RequestContext("0123456789abcdef0123456789abcdef", time.perf_counter())
        ctx.model, ctx.provider, ctx.upstream_status, ctx.answer = "gpt-4o-mini", "u", 200, ANSWER
        ctx.upstream_s, ctx.overhead_s, ctx.ttfb_s = 0.001, 0.00002, 0.0011
        contexts.append(ctx)
    return contexts


async def measure(snippet: str) -> float:
    gateway = Gateway(parse_config(f"""{snippet}
providers: {{u: {{kind: openai, base_url: "http://127.0.0.1:1"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: u, model: gpt-4o-mini}}]}}}}
""", {}))
    exchange = FinishedExchange()
    best = float("inf")
    for _ in range(5):
        contexts = finished(REQUESTS)
        if gateway.metrics is not None:
            gateway.metrics.in_flight += REQUESTS
        start = time.perf_counter()
        for ctx in contexts:
            gateway._account(exchange, ctx)  # type: ignore[arg-type]
        if gateway.access_log is not None:
            gateway.access_log.flush()
        best = min(best, (time.perf_counter() - start) / REQUESTS)
    gateway.close_logs()
    return best


def main() -> None:
    for snippet in sys.argv[1:]:
        seconds = asyncio.run(measure(snippet))
        print(f"{seconds * 1e6:6.2f} us/request  {snippet}")


if __name__ == "__main__":
    main()
