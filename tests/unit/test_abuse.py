"""Abuse protection's stages (docs/abuse.md), with test clocks: per-key anomaly detection, IP reputation lists,
proof of work; their config checks and their places in the route table."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.auth.reputation import Ranges, Reputation, parse_list
from sluice.config import parse_config
from sluice.config.model import AnomalyConfig, PowConfig, ReputationConfig
from sluice.context import RequestContext
from sluice.errors import AddressListed, AnomalyThrottled, ConfigError, PowRequired
from sluice.pipeline.abuse import ReputationStage
from sluice.pipeline.anomaly import AnomalyStage
from sluice.pipeline.pow import CHALLENGE_HEADER, SOLUTION_HEADER, PowStage, solve
from sluice.pipeline.stage import Pipeline, Stage


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryExchange:
    def __init__(self, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
                 client: str = "127.0.0.1:50000") -> None:
        self.method, self.path, self.query, self.client = "POST", path, "", client
        self.headers = headers or {}
        self.started, self.status, self.answer, self.sent_headers = False, 0, b"", []

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        return [self.headers[name]] if name in self.headers else []

    async def discard_body(self, limit: int) -> None:
        return None

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started, self.status, self.answer, self.sent_headers = True, status, body, headers


class Principal:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id


def context(key_id: str | None = "key-1", tokens: int = -1) -> RequestContext:
    ctx = RequestContext("req", 0.0, "/v1/chat/completions")
    ctx.principal = Principal(key_id) if key_id is not None else None
    ctx.key_prefix = f"sk-{key_id}" if key_id else None
    ctx.tokens_in = tokens
    return ctx


# -- anomaly ----------------------------------------------------------------------------------------------------

def anomaly(clock: Clock, audit: list[dict[str, Any]] | None = None, **settings: Any) -> AnomalyStage:
    config = AnomalyConfig(**{"window_s": 10.0, "baseline_s": 100.0, "factor": 4.0, "warmup_s": 50.0,
                              "min_requests": 5, "min_tokens": 100, **settings})
    record = (lambda action, **fields: audit.append({"action": action, **fields})) if audit is not None else None
    return AnomalyStage(config, audit=record, client_ip=lambda ex: "192.0.2.1", clock=clock)


def steady(stage: AnomalyStage, clock: Clock, windows: int, per_window: int, key: str = "key-1",
           tokens: int = -1) -> None:
    """``per_window`` requests (each reporting ``tokens``) in each of ``windows`` windows from clock.now."""
    for _ in range(windows):
        start = clock.now
        for i in range(per_window):
            clock.now = start + 0.001 * i
            ex, ctx = MemoryExchange(), context(key, tokens)
            stage.on_request(ex, ctx)
            stage.on_response(ex, ctx)
        clock.now = start + 10  # the next window's start


def test_a_steady_key_is_never_flagged_and_its_baseline_is_its_mean() -> None:
    clock, audit = Clock(0.0), []
    stage = anomaly(clock, audit)
    steady(stage, clock, 12, 3)
    assert stage.anomalies == {("requests",): 0, ("tokens",): 0} and audit == []
    stage.on_request(MemoryExchange(), context())  # rolls the last window into the baseline
    key = stage._keys["key-1"]
    assert key.base_reqs / key.weight == pytest.approx(3.0)  # debiased: the mean from the first window on


def test_a_spike_is_flagged_once_per_episode_and_ends_with_a_quiet_window() -> None:
    clock, audit = Clock(0.0), []
    stage = anomaly(clock, audit)
    steady(stage, clock, 10, 2)  # warm (100 s > 50 s), baseline 2 a window: limit max(4 x 2, 5) = 8
    for i in range(30):  # flag only: never refused
        stage.on_request(MemoryExchange(), context())
        assert stage.anomalies[("requests",)] == (1 if i >= 8 else 0)  # the 9th request passes the limit
    assert len(audit) == 1
    record = audit[0]
    assert record["action"] == "abuse.anomaly" and record["actor"] == "sk-key-1"
    assert record["client_ip"] == "192.0.2.1" and record["target"] == "/v1/chat/completions"
    assert record["details"]["kind"] == "requests" and record["details"]["count"] == 9
    assert record["details"]["baseline"] == pytest.approx(2.0) and record["details"]["action"] == "flag"
    clock.now += 10
    steady(stage, clock, 1, 30)  # still flooding in the next window: the same episode
    assert stage.anomalies[("requests",)] == 1 and len(audit) == 1
    steady(stage, clock, 1, 2)  # a quiet window ends it
    steady(stage, clock, 1, 2)
    steady(stage, clock, 1, 40)  # a new spike, a new episode
    assert stage.anomalies[("requests",)] == 2 and len(audit) == 2
    assert stage.throttled == {(): 0}


def test_a_new_key_is_not_flagged_during_warm_up() -> None:
    clock, audit = Clock(0.0), []
    stage = anomaly(clock, audit)
    steady(stage, clock, 2, 1)
    steady(stage, clock, 1, 200)  # 20 s after its first request: not warm yet
    assert stage.anomalies[("requests",)] == 0 and audit == []


def test_a_quiet_key_sending_a_handful_is_not_a_spike() -> None:
    clock = Clock(0.0)
    stage = anomaly(clock, min_requests=20)
    steady(stage, clock, 10, 1)
    steady(stage, clock, 1, 20)  # 20 x its baseline, but not past min_requests
    assert stage.anomalies[("requests",)] == 0


def test_throttle_refuses_past_the_allowance_with_retry_after() -> None:
    clock = Clock(0.0)
    stage = anomaly(clock, action="throttle")
    steady(stage, clock, 10, 2)
    clock.now += 3.0  # 3 s into a window
    for _ in range(8):
        stage.on_request(MemoryExchange(), context())
    with pytest.raises(AnomalyThrottled) as refused:
        stage.on_request(MemoryExchange(), context())
    assert refused.value.status == 429 and refused.value.code == "key_anomaly_throttled"
    assert dict(refused.value.headers)["retry-after"] == "7"
    assert stage.throttled == {(): 1}
    stage.on_request(MemoryExchange(), context("key-2"))  # another key is not affected
    clock.now += 7.0  # the next window: the allowance again
    for _ in range(8):
        stage.on_request(MemoryExchange(), context())


def test_token_spikes_from_the_response_side() -> None:
    clock, audit = Clock(0.0), []
    stage = anomaly(clock, audit, action="throttle")
    steady(stage, clock, 10, 2, tokens=50)  # 100 tokens a window: limit max(4 x 100, 100) = 400
    ex, ctx = MemoryExchange(), context(tokens=5000)
    stage.on_request(ex, ctx)
    stage.on_response(ex, ctx)
    assert stage.anomalies == {("requests",): 0, ("tokens",): 1}
    assert audit[0]["details"]["kind"] == "tokens" and audit[0]["details"]["count"] == 5000
    with pytest.raises(AnomalyThrottled):  # the window's tokens are past the limit: the next request waits
        stage.on_request(MemoryExchange(), context())
    stage.on_response(MemoryExchange(), context(None, 10))  # no principal: nothing


def test_keys_are_bounded_least_recently_seen_forgotten() -> None:
    clock = Clock(0.0)
    stage = anomaly(clock, max_keys=2)
    for key in ("a", "b", "a", "c"):
        stage.on_request(MemoryExchange(), context(key))
    assert list(stage._keys) == ["a", "c"]


def test_the_error_in_the_callers_wire_format() -> None:
    clock = Clock(0.0)
    stage = anomaly(clock, action="throttle", warmup_s=0.0, min_requests=1)

    class WithPrincipal(Stage):
        name = "auth"

        def on_request(self, ex: Any, ctx: RequestContext) -> None:
            ctx.principal = Principal("key-1")

    class Answer(Stage):
        name = "answer"

        async def answer(self, ex: Any, ctx: RequestContext) -> None:
            await ex.respond(200, ctx.headers(), b"{}")

        def on_request(self, ex: Any, ctx: RequestContext) -> Any:
            return self.answer(ex, ctx)

    statuses = []
    for wire in ("openai", "anthropic", "anthropic"):
        pipeline = Pipeline("/v1/messages", [WithPrincipal(), stage, Answer()], wire=wire)
        ex = MemoryExchange("/v1/messages")
        asyncio.run(pipeline.run(ex, RequestContext("r", 0.0, "/v1/messages")))
        statuses.append(ex.status)
    assert statuses == [200, 429, 429]
    body = orjson.loads(ex.answer)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert ("retry-after", "10") in ex.sent_headers


# -- IP reputation lists ----------------------------------------------------------------------------------------

LIST = """# a blocklist
203.0.113.0/24 ; SBL123
198.51.100.7
2001:db8::/32   # documentation prefix

10.1.2.3/8
"""


def test_the_list_format_and_lookups() -> None:
    ranges = Ranges(parse_list(LIST))
    for ip in ("203.0.113.0", "203.0.113.255", "198.51.100.7", "10.200.0.1", "2001:db8::1", "::ffff:198.51.100.7"):
        assert ip in ranges, ip
    for ip in ("203.0.114.0", "198.51.100.6", "198.51.100.8", "11.0.0.0", "2001:db9::1", "not an ip", "",
               "fe80::1%eth0", "10.0.0.1\x00", "10.0.0.1 ", "é"):
        assert ip not in ranges, ip
    with pytest.raises(ValueError, match="list:3"):
        parse_list("1.2.3.4\n\nexample.com\n")


def test_overlapping_and_adjacent_networks_merge() -> None:
    ranges = Ranges(parse_list("10.0.0.0/25\n10.0.0.128/25\n10.0.0.5\n10.0.1.0/24\n"))
    assert ranges._starts[4] == [int.from_bytes(bytes([10, 0, 0, 0]), "big")] and len(ranges._ends[4]) == 1
    assert "10.0.1.255" in ranges and "10.0.2.0" not in ranges


def test_a_bad_file_keeps_the_last_good_list_and_is_logged_once(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "block.txt"
    path.write_text("192.0.2.0/24\n")
    reputation = Reputation([str(path)])
    assert reputation.listed("192.0.2.9") and reputation.reloads == {("ok",): 1, ("failed",): 0}
    assert not reputation.refresh()  # unchanged: not read again
    path.write_text("192.0.2.0/24\nnonsense\n")
    with caplog.at_level(logging.ERROR, "sluice.gateway"):
        assert not reputation.refresh()
        assert not reputation.refresh()
    [logged] = [r.getMessage() for r in caplog.records if "reputation" in r.getMessage()]  # once per bad version
    assert "block.txt:2" in logged
    assert reputation.listed("192.0.2.9")  # the last good contents
    path.write_text("198.51.100.0/24\n")
    assert reputation.refresh()
    assert reputation.listed("198.51.100.1") and not reputation.listed("192.0.2.9")
    path.unlink()
    assert not reputation.refresh() and reputation.listed("198.51.100.1")  # a missing file: kept too
    assert reputation.reloads == {("ok",): 2, ("failed",): 1 + 1}


def test_a_missing_file_at_start_is_an_empty_list(tmp_path: Path) -> None:
    reputation = Reputation([str(tmp_path / "absent.txt")])
    assert not reputation.listed("192.0.2.9") and reputation.reloads[("failed",)] == 1


def test_the_stage_refuses_listed_addresses_and_refreshes_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    path.write_text("192.0.2.0/24\n")
    clock = Clock(0.0)
    stage = ReputationStage(ReputationConfig(files=(str(path),), refresh_s=30.0), lambda ex: ex.client.split(":")[0],
                            clock=clock)
    assert stage.on_request(MemoryExchange(client="198.51.100.1:1"), context()) is None
    with pytest.raises(AddressListed) as refused:
        stage.on_request(MemoryExchange(client="192.0.2.9:1"), context())
    assert refused.value.status == 403 and refused.value.code == "ip_listed"
    assert stage.refused == {(): 1}
    path.write_text("198.51.100.0/24\n")

    async def after_refresh() -> None:
        clock.now = 31.0
        stage.on_request(MemoryExchange(client="10.0.0.1:1"), context())  # starts the re-read
        assert stage._refreshing is not None
        await stage._refreshing

    asyncio.run(after_refresh())
    with pytest.raises(AddressListed):
        stage.on_request(MemoryExchange(client="198.51.100.1:1"), context())
    stage.on_request(MemoryExchange(client="192.0.2.9:1"), context())
    assert stage.describe() == "ip_reputation (1 file, refreshed every 30s)"


# -- proof of work ----------------------------------------------------------------------------------------------

def pow_stage(clock: Clock, **settings: Any) -> PowStage:
    config = PowConfig(**{"threshold_rps": 1.0, "window_s": 10.0, "difficulty": 8, "ttl_s": 60.0,
                          "secret": "s" * 32, **settings})
    return PowStage(config, clock=clock)


def challenge_of(stage: PowStage, ex: MemoryExchange) -> str:
    with pytest.raises(PowRequired) as refused:
        stage.on_request(ex, context(None))
    assert refused.value.status == 429
    return dict(refused.value.headers)[CHALLENGE_HEADER]


def test_no_challenge_under_the_threshold() -> None:
    clock = Clock()
    stage = pow_stage(clock)
    for _ in range(10):  # 10 a window of 10 s: 1 a second
        stage.on_request(MemoryExchange(), context(None))
    assert stage.results[("challenged",)] == 0


def test_each_route_has_its_own_rate() -> None:
    clock = Clock()
    stage = pow_stage(clock)
    for _ in range(10):
        stage.on_request(MemoryExchange(), context(None))
    challenge_of(stage, MemoryExchange())
    other = context(None)
    other.route = "/v1/models"
    stage.on_request(MemoryExchange("/v1/models"), other)  # not flooded: not challenged
    assert stage.results[("challenged",)] == 1


def test_under_flood_a_solution_is_needed_good_once() -> None:
    clock = Clock()
    stage = pow_stage(clock)
    for _ in range(10):
        stage.on_request(MemoryExchange(), context(None))
    challenge = challenge_of(stage, MemoryExchange())
    solution = solve(challenge)
    stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: solution}), context(None))
    assert stage.results == {("challenged",): 1, ("solved",): 1, ("invalid",): 0}
    with pytest.raises(PowRequired) as refused:  # single use
        stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: solution}), context(None))
    assert refused.value.code == "pow_invalid" and "used already" in refused.value.message
    assert CHALLENGE_HEADER in dict(refused.value.headers)


@pytest.mark.parametrize("spoil", ["expired", "forged", "unsolved", "shape", "difficulty"])
def test_bad_solutions_are_refused_with_a_new_challenge(spoil: str) -> None:
    clock = Clock()
    stage = pow_stage(clock, threshold_rps=0.05)  # past the threshold from the first request
    challenge = challenge_of(stage, MemoryExchange())
    expires, nonce, difficulty, mac = challenge.split(".")
    if spoil == "expired":
        solution = solve(challenge)
        clock.now += 61
    elif spoil == "forged":
        solution = solve(f"{expires}.{'0' * 16}.{difficulty}.{mac}")
    elif spoil == "unsolved":
        solution = next(f"{challenge}:{c}" for c in range(1000)
                        if hashlib.sha256(f"{challenge}:{c}".encode()).digest()[0] != 0)
    elif spoil == "shape":
        solution = "x" * 300
    else:
        solution = solve(f"{expires}.{nonce}.4.{mac}")
    with pytest.raises(PowRequired) as refused:
        stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: solution}), context(None))
    assert refused.value.code == "pow_invalid"
    assert stage.results[("invalid",)] == 1 and stage.results[("solved",)] == 0


def test_the_flood_ends_after_a_quiet_window_and_solutions_are_bounded() -> None:
    clock = Clock()
    stage = pow_stage(clock, max_solutions=1)
    for _ in range(10):
        stage.on_request(MemoryExchange(), context(None))
    first, second = challenge_of(stage, MemoryExchange()), challenge_of(stage, MemoryExchange())
    stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: solve(first)}), context(None))
    with pytest.raises(PowRequired, match="too many solutions"):
        stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: solve(second)}), context(None))
    clock.now += 10  # the window that closed was a flood: the next one is too
    challenge_of(stage, MemoryExchange())
    clock.now += 10  # that one had one request: quiet again
    stage.on_request(MemoryExchange(), context(None))
    clock.now += 100  # and a long gap is no flood either
    stage.on_request(MemoryExchange(), context(None))


# -- config and routes ------------------------------------------------------------------------------------------

BASE = """
providers: {mock: {kind: openai, base_url: "http://127.0.0.1:9"}}
models: {m: {targets: [{provider: mock, model: m}]}}
observability: {access_log: false, metrics: false}
"""


@pytest.mark.parametrize(("extra", "path"), [
    ("abuse: {anomaly: {}}", "abuse.anomaly"),
    ("abuse: {anomaly: {factor: 1}}\nauth: {enabled: true}", "abuse.anomaly.factor"),
    ("abuse: {pow: {}}\nauth: {enabled: true}", "abuse.pow"),
    ("abuse: {pow: {difficulty: 40}}", "abuse.pow.difficulty"),
    ("abuse: {pow: {secret: short}}", "abuse.pow.secret"),
    ("abuse: {reputation: {files: []}}", "abuse.reputation.files"),
    ("abuse: {reputation: {files: [a], refresh_s: 0}}", "abuse.reputation.refresh_s"),
    ("abuse: {reputation: {file: a}}", "abuse.reputation"),
])
def test_config_mistakes(extra: str, path: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + extra, {})
    assert error.value.path.startswith(path), str(error.value)


def routes(tmp_path: Path, extra: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from sluice.server.app import create_gateway

    monkeypatch.setenv("SLUICE_METRICS_DIR", str(tmp_path))
    config = parse_config(BASE + extra.replace("DB", str(tmp_path / "s.db")), {})

    async def build() -> Any:
        gateway = create_gateway(config)
        await gateway.close()
        return gateway.routes

    return asyncio.run(build())


def names(pipeline: Pipeline) -> list[str]:
    return [stage.name for stage in pipeline.stages]


def test_each_stage_where_it_belongs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("192.0.2.0/24\n")
    with_auth = routes(tmp_path, f"""
store: {{sqlite_path: DB}}
auth: {{enabled: true, static_keys: [{{name: a, key: sk-abcdefghijklmnopqrstuvwxyz, roles: [user]}}]}}
abuse: {{reputation: {{files: ["{blocklist}"]}}, anomaly: {{action: throttle}}}}
""", monkeypatch)
    chat = names(with_auth.exact["/v1/chat/completions"]["POST"])
    assert chat.index("ip_reputation") < chat.index("auth") < chat.index("model_access") < chat.index("anomaly")
    assert chat.index("anomaly") < chat.index("routing")
    assert "anomaly" in names(with_auth.families["/v1/files"])
    assert "ip_reputation" in names(with_auth.exact["/v1/models"]["GET"]) and "pow" not in chat
    assert "ip_reputation" not in names(with_auth.exact["/health/live"]["GET"])
    assert any(line.startswith("anomaly (throttle past 5x") for line in
               with_auth.exact["/v1/chat/completions"]["POST"].describe())
    without_auth = routes(tmp_path, "abuse: {pow: {}}", monkeypatch)
    chat = names(without_auth.exact["/v1/chat/completions"]["POST"])
    assert chat.index("pow") < chat.index("decode") and "auth" not in chat and "anomaly" not in chat
    assert "pow" not in names(without_auth.exact["/health/ready"]["GET"])
    plain = routes(tmp_path, "", monkeypatch)
    for methods in plain.exact.values():
        for pipeline in methods.values():
            assert not {"pow", "anomaly", "ip_reputation"} & set(names(pipeline))


def test_the_client_snippet_in_the_docs_solves_a_challenge(monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import sys
    import types

    monkeypatch.setitem(sys.modules, "httpx", types.ModuleType("httpx"))  # the snippet's client: not needed here

    text = (Path(__file__).resolve().parents[2] / "docs" / "abuse.md").read_text()
    [snippet] = [b for b in re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M) if "def solve" in b]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/abuse.md", "exec"), namespace)
    clock = Clock()
    stage = pow_stage(clock, threshold_rps=0.05)
    challenge = challenge_of(stage, MemoryExchange())
    stage.on_request(MemoryExchange(headers={SOLUTION_HEADER: namespace["solve"](challenge)}), context(None))
    assert stage.results[("solved",)] == 1
