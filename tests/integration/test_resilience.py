"""Chaos tests of retries, budgets, breakers, failover, sticky routing, A/B splits and deadlines (issue 6).

Three `sluice mock-upstream` processes are the deployments; their faults change at run time through
PUT /_mock/faults and their request counts come from GET /_mock/stats, so each test knows exactly how
many attempts reached each upstream.  Every test is bounded in requests and seconds.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, call, start_gateway, start_mock, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
DEADLINE_MARGIN_S = 0.75  # the stated bound on outliving the total timeout: reported with each case, not asserted


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    tmp = tmp_path_factory.mktemp("chaos")
    procs = [start_mock(tmp, "--seed", str(seed)) for seed in (1, 2, 3)]
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(autouse=True)
def healthy(mocks: list[Proc]) -> None:
    """Every test starts with well-behaved upstreams and zeroed counts."""
    for mock in mocks:
        assert call(mock.url, "DELETE", "/_mock/faults").status == 200
        assert call(mock.url, "POST", "/_mock/stats/reset", b"").status == 200


def faults(mock: Proc, **options: object) -> None:
    reply = call(mock.url, "PUT", "/_mock/faults", options, {"content-type": "application/json"})
    assert reply.status == 200, reply.body


def received(mock: Proc) -> int:
    return int(call(mock.url, "GET", "/_mock/stats").json()["requests"])


def gateway_yaml(mocks: list[Proc], *, resilience: str = "", model: str = "", extra_models: str = "",
                 targets: int = 3) -> str:
    providers = "\n".join(
        f"  p{i}: {{kind: openai, base_url: \"{m.url}\", api_keys: [sk-up-{i}]}}" for i, m in enumerate(mocks))
    target_list = ", ".join(f"{{provider: p{i}, model: gpt-4o-mini}}" for i in range(targets))
    return f"""
providers:
{providers}
  anthropic: {{kind: anthropic, base_url: "{mocks[2].url}", api_keys: [sk-ant-up]}}
models:
  gpt-4o-mini:
    targets: [{target_list}]
{model}
  claude-haiku:
    targets: [{{provider: anthropic, model: claude-3-5-haiku-latest}}]
{extra_models}
resilience:
  backoff_base_s: 0.001
  backoff_max_s: 0.01
{resilience}
"""


class Client:
    """Keep-alive HTTP/1.1 to the gateway (http.client: nothing retried behind the test's back)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def chat(self, body: dict[str, object] | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body or CHAT),
                          {"content-type": "application/json", **(headers or {})})
        response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def close(self) -> None:
        self.conn.close()


def serve(tmp_path: Path, config: str) -> Proc:
    return start_gateway(tmp_path, config)


def send(gateway: Proc, n: int, body: dict[str, object] | None = None,
         headers: dict[str, str] | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    client = Client(gateway.url)
    try:
        return [client.chat(body, headers) for _ in range(n)]
    finally:
        client.close()


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """A figure the issue asks to see in the test output, printed past pytest's capture."""
    with capsys.disabled():
        print(f"\n[chaos] {line}")


def metric(gateway: Proc, name: str, **labels: str) -> float:
    text = call(gateway.url, "GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- retries and failover against none ----------------------------------------------------


def test_retries_and_failover_turn_transient_errors_into_successes(tmp_path: Path, mocks: list[Proc],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for mock in mocks:
        faults(mock, error_rate=0.3, error_status=503)
    plain = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 0"))
    try:
        without = sum(status == 200 for status, _, _ in send(plain, 300))
    finally:
        plain.stop()
    resilient = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 2\n  retry_budget: 1.0"))
    try:
        replies = send(resilient, 300)
    finally:
        resilient.stop()
    with_retries = sum(status == 200 for status, _, _ in replies)
    report(capsys, f"success with a 30 % error rate on each of 3 deployments: without retries {without}/300, "
                   f"with retries and failover {with_retries}/300")
    assert without < 240  # ~70 % expected
    assert with_retries >= 276 and with_retries > without  # ~97 % expected (1 - 0.3^3)
    attempts = Counter(h["x-sluice-attempts"] for status, h, _ in replies if status == 200)
    assert set(attempts) <= {"1", "2", "3"} and attempts["2"] > 0


def test_no_retry_storm_when_every_deployment_fails(tmp_path: Path, mocks: list[Proc],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for mock in mocks:
        faults(mock, error_rate=1.0, error_status=503)
    budget = 0.2
    gateway = serve(tmp_path, gateway_yaml(
        mocks, resilience=f"  retries: 3\n  retry_budget: {budget}\n  retry_budget_floor: 0\n"
                          "  retry_budget_window_s: 60"))
    try:
        replies = send(gateway, 200)
        retries = metric(gateway, "sluice_retries_total")
    finally:
        gateway.stop()
    attempts = sum(received(m) for m in mocks)
    report(capsys, f"200 requests, every upstream failing, retries 3, budget {budget}: {attempts} upstream attempts")
    assert all(status == 503 for status, _, _ in replies)
    assert 200 < attempts <= (1 + budget) * 200
    assert retries == attempts - 200


# -- circuit breakers ---------------------------------------------------------------------


BREAKER = """  retries: 1
  retry_budget: 1.0
  breaker: {{enabled: true, consecutive_failures: 3, min_requests: 1000, open_s: {open_s}, half_open_probes: 1}}"""


def test_a_breaker_opens_after_consecutive_failures(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=500)
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience=BREAKER.format(open_s=60), targets=2))
    try:
        replies = send(gateway, 40)
        opened = metric(gateway, "sluice_breaker_transitions_total", state="open")
    finally:
        gateway.stop()
    assert all(status == 200 for status, _, _ in replies)  # each failure retried on the other deployment
    assert received(mocks[0]) == 3  # then open: no more traffic while it is
    assert received(mocks[1]) == 40
    assert opened == 1


def test_a_breaker_lets_a_probe_through_and_closes(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=500)
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience=BREAKER.format(open_s=0.3), targets=2))
    try:
        send(gateway, 10)
        assert received(mocks[0]) >= 3
        faults(mocks[0], error_rate=0.0)
        before = received(mocks[0])
        # the probe, after open_s: each request asks again (no sleep: the requests themselves pace the poll)
        wait_until(lambda: send(gateway, 1) and received(mocks[0]) > before, "the probe reaching the mock")
        start_a = received(mocks[0])
        replies = send(gateway, 40)
        closed = metric(gateway, "sluice_breaker_transitions_total", state="closed")
    finally:
        gateway.stop()
    assert all(status == 200 for status, _, _ in replies)
    assert received(mocks[0]) - start_a >= 10  # closed: it takes its share again (about half)
    assert closed >= 1


def test_active_health_checks_bring_a_deployment_back_before_its_open_time(tmp_path: Path,
                                                                           mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=500)
    checks = BREAKER.format(open_s=60) + "\n  health_check: {interval_s: 0.2, timeout_s: 0.2}"
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience=checks, targets=2))
    try:
        send(gateway, 10)
        assert received(mocks[0]) >= 3  # its failures, then the health checks' model-list requests
        faults(mocks[0], error_rate=0.0)
        # long before open_s (60 s): the health checks found it well
        wait_until(lambda: "p0" in {h["x-sluice-provider"] for _, h, _ in send(gateway, 4)}, "p0 back in use")
    finally:
        gateway.stop()


# -- key cool-down on 429 -------------------------------------------------------------------


def test_a_429_rests_the_deployment_for_its_retry_after(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=429, retry_after=60)
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 1\n  retry_budget: 1.0", targets=2))
    try:
        replies = send(gateway, 30)
    finally:
        gateway.stop()
    assert all(status == 200 for status, _, _ in replies)
    assert received(mocks[0]) == 1  # one 429, then it rests for its Retry-After while B carries the load
    assert received(mocks[1]) == 30


# -- broken answers -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["invalid-json", "error-200", "reset", "close-mid-stream"])
def test_broken_answers_are_retried_on_another_deployment(tmp_path: Path, mocks: list[Proc], fault: str) -> None:
    faults(mocks[0], fault=fault)
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 1\n  retry_budget: 1.0", targets=2))
    try:
        replies = send(gateway, 20)
    finally:
        gateway.stop()
    assert [status for status, _, _ in replies] == [200] * 20
    assert all(json.loads(body)["choices"] for _, _, body in replies)
    assert received(mocks[0]) >= 1


def stream(gateway: Proc, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    client = Client(gateway.url)
    try:
        return client.chat({**CHAT, "stream": True}, headers)
    finally:
        client.close()


def test_a_stream_that_broke_after_its_first_bytes_is_never_retried(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], fault="close-mid-stream")
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 2\n  retry_budget: 1.0", targets=1))
    try:
        status, headers, body = stream(gateway)
    finally:
        gateway.stop()
    assert status == 200 and headers["x-sluice-attempts"] == "1"
    assert b"upstream_stream_error" in body  # the caller is told, in a well-formed error event
    assert received(mocks[0]) == 1


def test_a_stream_that_opens_with_an_error_is_retried(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], fault="error-200")
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 1\n  retry_budget: 1.0", targets=2))
    try:
        replies = [stream(gateway) for _ in range(6)]
    finally:
        gateway.stop()
    for status, _, body in replies:
        assert status == 200 and b"data: [DONE]" in body and b'"error"' not in body


def test_streams_that_fail_before_their_first_bytes_give_their_connections_back(tmp_path: Path,
                                                                                  mocks: list[Proc]) -> None:
    faults(mocks[0], fault="hang-after-headers")
    config = gateway_yaml(mocks, targets=1) + "upstream: {max_connections_per_origin: 2}\n"
    gateway = serve(tmp_path, config)
    try:
        hung = [stream(gateway, {"x-sluice-timeout": "0.3"}) for _ in range(3)]  # more than the pool holds
        faults(mocks[0], fault=None)
        client = Client(gateway.url, timeout=10)
        after = client.chat({**CHAT, "stream": True}, {"x-sluice-timeout": "5"})
        client.close()
    finally:
        gateway.stop()
    assert [status for status, _, _ in hung] == [504] * 3
    assert after[0] == 200 and b"data: [DONE]" in after[2]  # the pool was not left full of dead slots


# -- failover chains -------------------------------------------------------------------------


FAILOVER = """    fallbacks: [claude-haiku]"""


def test_failover_to_another_provider_says_who_answered(tmp_path: Path, mocks: list[Proc]) -> None:
    for mock in mocks[:2]:
        faults(mock, error_rate=1.0, error_status=503)
    gateway = serve(tmp_path, gateway_yaml(mocks, model=FAILOVER, resilience="  retries: 2\n  retry_budget: 1.0",
                                           targets=2))
    try:
        replies = send(gateway, 10)
        streamed = stream(gateway)
    finally:
        gateway.stop()
    for status, headers, body in replies:
        assert status == 200, body
        assert headers["x-sluice-model"] == "claude-haiku" and headers["x-sluice-provider"] == "anthropic"
        assert headers["x-sluice-attempts"] == "3"
        assert json.loads(body)["object"] == "chat.completion"  # translated back into the caller's format
    assert streamed[0] == 200 and streamed[1]["x-sluice-model"] == "claude-haiku"
    assert b"chat.completion.chunk" in streamed[2]


def test_a_fallback_that_cannot_serve_the_request_is_skipped(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=503)
    fallback_without_tools = """  claude-haiku-notools:
    targets: [{provider: anthropic, model: claude-3-5-haiku-latest, capabilities: [chat, streaming]}]"""
    model = "    fallbacks: [claude-haiku-notools]"
    gateway = serve(tmp_path, gateway_yaml(mocks, model=model, extra_models=fallback_without_tools,
                                           resilience="  retries: 2\n  retry_budget: 1.0", targets=1))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    try:
        with_tools = send(gateway, 1, {**CHAT, "tools": tools})[0]
        plain = send(gateway, 1)[0]
    finally:
        gateway.stop()
    assert with_tools[0] == 503 and with_tools[1].get("x-sluice-model") == "gpt-4o-mini"  # never sent without tools
    assert plain[0] == 200 and plain[1]["x-sluice-model"] == "claude-haiku-notools"


def test_a_fallback_of_a_kind_that_cannot_carry_the_request_is_skipped(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=503)
    gateway = serve(tmp_path, gateway_yaml(mocks, model=FAILOVER, resilience="  retries: 2\n  retry_budget: 1.0",
                                           targets=1))
    try:
        two_choices = send(gateway, 1, {**CHAT, "n": 2})[0]  # Anthropic has no n
        one = send(gateway, 1)[0]
    finally:
        gateway.stop()
    assert two_choices[0] == 503 and two_choices[1]["x-sluice-model"] == "gpt-4o-mini"  # the primary's own answer
    assert one[0] == 200 and one[1]["x-sluice-model"] == "claude-haiku"


def test_with_every_deployment_open_requests_go_straight_to_the_fallback(tmp_path: Path, mocks: list[Proc]) -> None:
    faults(mocks[0], error_rate=1.0, error_status=500)
    gateway = serve(tmp_path, gateway_yaml(mocks, model=FAILOVER, resilience=BREAKER.format(open_s=60), targets=1))
    try:
        replies = send(gateway, 20)
    finally:
        gateway.stop()
    assert all(status == 200 for status, _, _ in replies)
    assert received(mocks[0]) == 3  # open after 3 failures; the rest never tried it
    assert [h["x-sluice-attempts"] for _, h, _ in replies[3:]] == ["1"] * 17


# -- sticky routing ---------------------------------------------------------------------------


STICKY = """    strategy: sticky
    sticky: {hash_on: "header:x-session"}"""


def test_sticky_routing_keeps_a_session_on_one_healthy_deployment(tmp_path: Path, mocks: list[Proc]) -> None:
    gateway = serve(tmp_path, gateway_yaml(mocks, model=STICKY, resilience=BREAKER.format(open_s=0.3)))
    try:
        homes = {}
        for session in (f"s{i}" for i in range(12)):
            providers = {h["x-sluice-provider"] for _, h, _ in send(gateway, 4, headers={"x-session": session})}
            assert len(providers) == 1, (session, providers)
            homes[session] = providers.pop()
        assert len(set(homes.values())) >= 2  # sessions spread over the deployments
        session, home = next(iter(homes.items()))
        faults(mocks[int(home[1:])], error_rate=1.0, error_status=500)
        moved = send(gateway, 8, headers={"x-session": session})
        assert all(status == 200 for status, _, _ in moved)
        elsewhere = {h["x-sluice-provider"] for _, h, _ in moved[4:]}  # after the breaker opened
        assert len(elsewhere) == 1 and home not in elsewhere
        others = {s: {h["x-sluice-provider"] for _, h, _ in send(gateway, 2, headers={"x-session": s})}
                  for s, p in homes.items() if p != home}
        assert all(seen == {homes[s]} for s, seen in others.items())  # the others did not move
        faults(mocks[int(home[1:])], error_rate=0.0)
        # after open_s a probe finds it well: it comes back
        wait_until(lambda: send(gateway, 1, headers={"x-session": session})[0][1]["x-sluice-provider"] == home,
                   "the session back on its home deployment")
    finally:
        gateway.stop()


# -- A/B split -----------------------------------------------------------------------------


def test_an_ab_split_sends_its_share_and_labels_it(tmp_path: Path, mocks: list[Proc],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    variants = """    variants: [{name: canary, model: gpt-4o-canary, percent: 20}]"""
    canary = """  gpt-4o-canary:
    targets: [{provider: p1, model: gpt-4o-mini}]"""
    gateway = serve(tmp_path, gateway_yaml(mocks, model=variants, extra_models=canary, targets=1))
    client = Client(gateway.url)
    try:
        # Each caller its own key: the arm is drawn from the caller's affinity (sticky on the key by default), so
        # the 1000 draws are the same on every run: a fixed share, never an unlucky one.
        replies = [client.chat(None, {"authorization": f"Bearer sk-caller-{i}"}) for i in range(1000)]
        client.close()
        counted = {v: metric(gateway, "sluice_variant_requests_total", variant=v) for v in ("control", "canary")}
    finally:
        gateway.stop()
    arms = Counter(h["x-sluice-model"] for _, h, _ in replies)
    share = arms["gpt-4o-canary"] / 1000
    report(capsys, f"A/B split 20 %: canary got {share:.1%} of 1000 requests (tolerance 16-24 %)")
    assert 0.16 <= share <= 0.24  # the stated tolerance: ±4 points (3.2 standard deviations at n = 1000)
    assert arms["gpt-4o-canary"] + arms["gpt-4o-mini"] == 1000
    assert counted == {"control": arms["gpt-4o-mini"], "canary": arms["gpt-4o-canary"]}
    assert received(mocks[1]) == arms["gpt-4o-canary"]


# -- the deadline ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"latency_ms": 5000}, {"fault": "hang-after-headers"},
                                   {"fault": "trickle", "trickle_ms": 200}])
@pytest.mark.parametrize("streamed", [False, True])
def test_no_request_outlives_its_deadline(tmp_path: Path, mocks: list[Proc], fault: dict[str, object],
                                          streamed: bool, capsys: pytest.CaptureFixture[str]) -> None:
    for mock in mocks[:2]:
        faults(mock, **fault)
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience="  retries: 2\n  retry_budget: 1.0", targets=2))
    timeout = 1.0
    try:
        client = Client(gateway.url)
        began = time.monotonic()
        status, _, body = client.chat({**CHAT, "stream": streamed}, {"x-sluice-timeout": str(timeout)})
        took = time.monotonic() - began
        client.close()
    finally:
        gateway.stop()
    report(capsys, f"{fault} streamed={streamed}: answered {status} after {took:.3f} s (deadline {timeout} s, "
                   f"stated bound +{DEADLINE_MARGIN_S} s)")
    # Behaviour, not the stopwatch (a loaded machine is slow, not wrong): without the deadline the latency fault
    # would answer 200 after 5 s, a hang would hang until the client's 30 s, a trickle would end without error.
    if status == 200:  # a stream that had begun: ended by an error event, not left hanging
        assert streamed and b"error" in body
    else:
        assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"


def test_a_bad_timeout_header_is_refused(tmp_path: Path, mocks: list[Proc]) -> None:
    gateway = serve(tmp_path, gateway_yaml(mocks))
    try:
        replies = [send(gateway, 1, headers={"x-sluice-timeout": value})[0] for value in ("soon", "-1", "0", "nan")]
    finally:
        gateway.stop()
    for status, _, body in replies:
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_timeout"


# -- dead letters ------------------------------------------------------------------------------


def dlq(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", "dlq", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def listed_letters(config: Path, at_least: int) -> list[dict[str, object]]:
    """The dead letters `sluice dlq list` shows, once there are ``at_least`` of them (else an empty list)."""
    listed = dlq(config, "list", "--json")
    letters = json.loads(listed.stdout)["data"] if listed.returncode == 0 else []
    return letters if len(letters) >= at_least else []


def test_a_request_that_finally_failed_is_a_dead_letter_and_replays(tmp_path: Path, mocks: list[Proc]) -> None:
    for mock in mocks[:2]:
        faults(mock, error_rate=1.0, error_status=503)
    resilience = f"""  retries: 1
  retry_budget: 1.0
  dead_letters: {{enabled: true}}
store: {{sqlite_path: "{tmp_path / 'dlq.db'}"}}"""
    gateway = serve(tmp_path, gateway_yaml(mocks, resilience=resilience, targets=2))
    config = next(tmp_path.glob("gateway-*.yaml"))
    secret = {**CHAT, "messages": [{"role": "user", "content": "my key is sk-proj-abcdefghijklmnopqrstuvwxyz123456"}]}
    try:
        plain_status, headers, _ = send(gateway, 1)[0]
        secret_status = send(gateway, 1, secret)[0][0]
        letters = wait_until(lambda: listed_letters(config, 2), "both dead letters written (off the request path)")
        for mock in mocks[:2]:
            faults(mock, error_rate=0.0)
        replayed = dlq(config, "replay", "--all", "--gateway", gateway.url, "--key", "sk-anything")
        after = dlq(config, "list", "--json")
    finally:
        gateway.stop()
    assert plain_status == secret_status == 503 and headers["x-sluice-attempts"] == "2"
    assert len(letters) == 2, letters
    assert all(letter["model"] == "gpt-4o-mini" and letter["status"] == 503 and len(letter["attempts"]) == 2
               for letter in letters)
    assert "sk-proj-abcdefghijklmnopqrstuvwxyz123456" not in json.dumps(letters)  # redacted
    # The plain one succeeds and goes; the redacted one is not what the client sent: refused, kept.
    assert replayed.returncode == 1 and "redacted" in replayed.stdout, replayed.stdout + replayed.stderr
    kept = json.loads(after.stdout)["data"]
    assert len(kept) == 1 and "[secret]" in kept[0]["body"]
