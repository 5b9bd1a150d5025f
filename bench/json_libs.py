"""orjson against msgspec on the JSON the gateway's hot path handles: does each earn its place?

sluice depends on both.  msgspec decodes and validates request bodies into typed structs (pipeline/validate.py)
and encodes the access log's fallback lines; orjson encodes error bodies, stream chunks and the model list, and
re-reads bodies it renames or translates and the upstream's answers.  For each of those jobs this times every
library that could do it, on the payload the gateway really handles there:

- ``request decode``: the benchmarks' 324-byte chat request (bench/_harness.py), decoded: msgspec into
  ChatRequest with its validation (today), msgspec and orjson untyped (a dict, no validation);
- ``model rename``: the same body decoded, its model replaced, encoded again (validate.rename_model);
- ``response decode``: the 629-byte chat.completion an upstream answers (its usage is read from it);
- ``chunk decode`` / ``chunk encode``: one chat.completion.chunk of a stream with a short text delta, as a dict
  and (msgspec) as a struct made for the call; ``chunk text encode``: the delta's text alone, which is what the
  translated streams encode per chunk (providers/translate/anthropic_stream.py joins it into bytes made once);
- ``log line encode``: one access-log line (msgspec: the Line struct, as today; both: the same as a dict);
- ``error body encode``: the OpenAI error shape of a 400 (errors.GatewayError.openai_body), as a dict and
  (msgspec) as a struct made for the call.

Two measures: ``--callgrind`` (the default) counts instructions per call under valgrind, the difference between
a run of N calls and a run of none (made once) in a fresh interpreter (PYTHONHASHSEED=0), so the figure does not
depend on the machine's load; ``--timeit`` is the best of R timed loops of N calls, in ns (quick, noisy on a busy
machine).  A call includes the loop and the lambda around the library's call: the first row measures them alone.
Encoders and decoders are made once and reused, as the gateway does.  It reports; it never fails on a figure.

    .venv/bin/python bench/json_libs.py [--callgrind | --timeit] [--calls 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _harness import CHAT_COMPLETION, chat_request  # noqa: E402 - bench/ is not a package
from sluice.observability.access_log import Line  # noqa: E402
from sluice.pipeline.validate import ChatRequest  # noqa: E402

Case = tuple[str, str, Callable[[], Any]]  # job, library (and how), one call

CHUNK = orjson.dumps({
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk", "created": 1741570283,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_06737a9306",
    "choices": [{"index": 0, "delta": {"content": " Paris, on the"}, "logprobs": None, "finish_reason": None}],
})
LINE: dict[str, Any] = {
    "time": "2026-12-07T21:48:01.123Z", "request_id": "9f1c2d3e4b5a69788796a5b4c3d2e1f0", "method": "POST",
    "path": "/v1/chat/completions", "route": "/v1/chat/completions", "status": 200, "duration_ms": 412.357,
    "overhead_ms": 0.412, "retries": 0, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "error": None,
    "ttfb_ms": 388.102, "ttft_ms": 388.102, "model": "gpt-4o-mini", "provider": "openai", "upstream_status": 200,
    "tokens_in": 52, "tokens_out": 11, "key_prefix": "sk-sluice-de", "user": "alice", "cache": None,
}
ERROR = {"error": {"message": "Invalid value for 'max_tokens': Expected `int` >= 1.", "type": "invalid_request_error",
                   "param": "max_tokens", "code": "invalid_value"}}


class Delta(msgspec.Struct):
    content: str


class Choice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: str | None


class Chunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def cases() -> list[Case]:
    body = chat_request("gpt-4o-mini")
    response = CHAT_COMPLETION.encode()
    chunk = msgspec.json.decode(CHUNK)
    text = chunk["choices"][0]["delta"]["content"]
    line = Line(**LINE)
    typed = msgspec.json.Decoder(ChatRequest)
    decoder = msgspec.json.Decoder()
    encoder = msgspec.json.Encoder()

    def rename_orjson() -> bytes:
        data = orjson.loads(body)
        data["model"] = "gpt-4o-mini-2024-07-18"
        return orjson.dumps(data)

    def rename_msgspec() -> bytes:
        data = decoder.decode(body)
        data["model"] = "gpt-4o-mini-2024-07-18"
        return encoder.encode(data)

    return [
        ("loop and call", "none (what every row below includes)", lambda: None),
        ("request decode", "msgspec typed+validated (today)", lambda: typed.decode(body)),
        ("request decode", "msgspec untyped", lambda: decoder.decode(body)),
        ("request decode", "orjson untyped", lambda: orjson.loads(body)),
        ("model rename", "orjson (today)", rename_orjson),
        ("model rename", "msgspec", rename_msgspec),
        ("response decode", "orjson (today)", lambda: orjson.loads(response)),
        ("response decode", "msgspec", lambda: decoder.decode(response)),
        ("chunk decode", "orjson (today)", lambda: orjson.loads(CHUNK)),
        ("chunk decode", "msgspec", lambda: decoder.decode(CHUNK)),
        ("chunk encode", "orjson (today)", lambda: orjson.dumps(chunk)),
        ("chunk encode", "msgspec", lambda: encoder.encode(chunk)),
        ("chunk encode", "msgspec struct", lambda: encoder.encode(Chunk(
            chunk["id"], chunk["object"], chunk["created"], chunk["model"], chunk["system_fingerprint"],
            [Choice(0, Delta(text), None, None)]))),
        ("chunk text encode", "orjson (today)", lambda: orjson.dumps(text)),
        ("chunk text encode", "msgspec", lambda: encoder.encode(text)),
        ("log line encode", "msgspec struct (today)", lambda: encoder.encode(line)),
        ("log line encode", "msgspec dict", lambda: encoder.encode(LINE)),
        ("log line encode", "orjson dict", lambda: orjson.dumps(LINE)),
        ("error body encode", "orjson (today)", lambda: orjson.dumps(ERROR)),
        ("error body encode", "msgspec", lambda: encoder.encode(ERROR)),
        ("error body encode", "msgspec struct", lambda: encoder.encode(ErrorBody(ErrorDetail(**ERROR["error"])))),
    ]


def child(index: int, calls: int) -> None:
    """Runs one case ``calls`` times (under callgrind: the parent counts the instructions)."""
    call = cases()[index][2]
    for _ in range(calls):
        call()


def callgrind(index: int, calls: int) -> int:
    """Instructions of a fresh interpreter that makes ``calls`` calls of the case."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", str(index), "--calls", str(calls)], capture_output=True, text=True, env=env, check=True)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise SystemExit(f"json_libs: no instruction count in callgrind's output:\n{result.stderr[-2000:]}")
    return int(match.group(1))


@functools.cache
def baseline() -> int:
    """The interpreter, the imports and the cases made, without a call (the same for every case)."""
    return callgrind(0, 0)


def per_call_instructions(index: int, calls: int) -> float:
    return (callgrind(index, calls) - baseline()) / calls


def per_call_ns(call: Callable[[], Any], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def facts() -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return (f"commit {commit}, Python {platform.python_version()}, orjson {orjson.__version__}, msgspec "
            f"{msgspec.__version__}, nproc {os.cpu_count()}, CPU {cpu}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--callgrind", action="store_true", help="instructions per call under valgrind (the default)")
    how.add_argument("--timeit", action="store_true", help="best-of-R nanoseconds per call")
    parser.add_argument("--calls", type=int, default=None, help="calls per run (5,000 callgrind, 100,000 timeit)")
    parser.add_argument("--repeat", type=int, default=7, help="timed loops per case (--timeit)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.calls)
        return 0
    unit = "ns" if args.timeit else "instructions"
    calls = args.calls or (100_000 if args.timeit else 5_000)
    print(f"# json_libs: {unit} per call ({calls:,} calls{f', best of {args.repeat}' if args.timeit else ''}); "
          f"{facts()}")
    print(f"| job | library | {unit} per call | x today's |")
    print("|---|---|---:|---:|")
    today: dict[str, float] = {}
    for index, (job, library, call) in enumerate(cases()):
        figure = per_call_ns(call, calls, args.repeat) if args.timeit else per_call_instructions(index, calls)
        if "(today)" in library:
            today[job] = figure
        ratio = f"{figure / today[job]:.2f}" if job in today else ""
        print(f"| {job} | {library} | {figure:,.0f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
