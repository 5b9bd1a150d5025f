"""Every metric that monitoring/ names is emitted by a gateway running the examples, and docs/metrics.md's table
is exactly what the gateways declare.

Real gateways (`sluice serve` subprocesses) run each of examples/*.yaml against `sluice mock-upstream`, a real
redis-server for examples/ratelimit.yaml, and the abuse sections of docs/abuse.md on top of two examples (no
example turns abuse protection on, and proof of work and anomaly detection exclude each other). A few requests
drive the events the alerts and panels watch (an error, a stream, retries, a failover, breakers opening, a
rate-limited call, a refused address, a proof-of-work challenge); then /metrics is scraped once per gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Proc, call, start_gateway, start_mock
from tests.integration.test_monitoring import all_queries, documented, metric_names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES = ROOT / "examples"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
JSON = {"content-type": "application/json"}
DEMO_KEY = {"authorization": "Bearer sk-sluice-demo", **JSON}
LISTED = "203.0.113.7"  # on the reputation list of the abuse gateway, presented through X-Forwarded-For
# Families the driven traffic must have given samples (not only declared): the alerts' and panels' core.
MUST_COUNT = {
    "sluice_requests_total", "sluice_errors_total", "sluice_request_duration_seconds_bucket",
    "sluice_gateway_overhead_seconds_bucket", "sluice_upstream_duration_seconds_bucket",
    "sluice_time_to_first_token_seconds_bucket", "sluice_tokens_input_total", "sluice_tokens_output_total",
    "sluice_retries_total", "sluice_failovers_total", "sluice_breaker_transitions_total",
    "sluice_ratelimit_decisions_total", "sluice_audit_records_total", "sluice_ip_reputation_refused_total",
    "sluice_ip_reputation_reloads_total", "sluice_pow_challenges_total", "gen_ai_client_token_usage_sum",
}
# The series a declared family exposes, by type (gauges: the family's own name).
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


class Scrape:
    """One /metrics answer: the series each declared family exposes, and those that had a sample."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, str] = {}  # documented name (counters with _total) -> type
        self.declared: set[str] = set()
        self.sampled: set[str] = set()
        for family in text_string_to_metric_families(text):
            suffixes = SERIES_SUFFIXES.get(family.type, ("",))
            self.families[family.name + ("_total" if family.type == "counter" else "")] = family.type
            self.declared.update(family.name + suffix for suffix in suffixes)
            self.sampled.update(sample.name for sample in family.samples)


def scrape(gateway: Proc) -> Scrape:
    reply = call(gateway.url, "GET", "/metrics")
    assert reply.status == 200, reply.body[:500]
    return Scrape(reply.body.decode())


def example(name: str, **overlay: Any) -> str:
    """An example's text, with sections added on top (the example's own left as they are)."""
    config = yaml.safe_load((EXAMPLES / name).read_text())
    for section, values in overlay.items():
        config[section] = {**config.get(section, {}), **values}
    return yaml.safe_dump(config)


def serve(tmp: Path, config: str, env: dict[str, str]) -> Proc:
    return start_gateway(tmp, config, "--workers", "1", env=env)


def chat(gateway: Proc, body: dict[str, Any] = CHAT, headers: dict[str, str] = DEMO_KEY) -> int:
    return call(gateway.url, "POST", "/v1/chat/completions", body, headers).status


def drive_quickstart(gateway: Proc) -> None:
    assert chat(gateway) == 200
    assert chat(gateway, {**CHAT, "stream": True}) == 200  # time to first token
    assert call(gateway.url, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"},
                DEMO_KEY).status == 200
    assert chat(gateway, {**CHAT, "model": "no-such-model"}) == 404  # sluice_errors_total{class=model_not_found}


def drive_providers(gateway: Proc) -> None:
    for model in ("gpt-4o-mini", "claude-haiku", "gemini-flash"):
        assert chat(gateway, {**CHAT, "model": model}) == 200


def drive_resilience(gateway: Proc) -> None:
    # Both gpt-4o-mini deployments fail: each request is retried, then moved to claude-haiku; after 5 failures
    # in a row each deployment's breaker opens.
    for _ in range(6):
        assert chat(gateway) == 200


def drive_ratelimit(gateway: Proc) -> None:
    statuses = [chat(gateway) for _ in range(31)]  # the policy's burst is 30
    assert statuses.count(429) >= 1, statuses


def drive_auth(gateway: Proc, admin_key: str) -> None:
    assert chat(gateway, headers=JSON) == 401  # missing_api_key, an audit record
    assert chat(gateway, headers={"authorization": f"Bearer {admin_key}", **JSON}) == 200


def drive_abuse(gateway: Proc) -> None:
    assert chat(gateway, headers={"x-forwarded-for": LISTED, **DEMO_KEY}) == 403  # ip_listed
    statuses = [chat(gateway) for _ in range(5)]  # past threshold_rps: challenged
    assert 429 in statuses, statuses


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scrape]]:
    from tests.redis_server import RedisServer

    tmp = tmp_path_factory.mktemp("emitted")
    processes: list[Proc] = []
    try:
        healthy = start_mock(tmp)
        failing = start_mock(tmp, "--error-rate", "1.0", "--error-status", "503")
        processes += [healthy, failing]
        upstream = {"SLUICE_UPSTREAM": healthy.url}
        redis = RedisServer(tmp / "redis")
        with redis:
            found: dict[str, Scrape] = {}

            def run(name: str, config: str, env: dict[str, str], drive: Any) -> None:
                gateway = serve(tmp, config, env)
                processes.append(gateway)
                drive(gateway)
                found[name] = scrape(gateway)

            run("quickstart.yaml", example("quickstart.yaml"), upstream, drive_quickstart)
            run("providers.yaml", example("providers.yaml"), upstream, drive_providers)
            run("resilience.yaml", example("resilience.yaml"), {
                "SLUICE_UPSTREAM_A": failing.url, "SLUICE_UPSTREAM_B": failing.url,
                "SLUICE_UPSTREAM_C": healthy.url}, drive_resilience)
            run("ratelimit.yaml", example("ratelimit.yaml"), {**upstream, "SLUICE_REDIS": redis.url},
                drive_ratelimit)
            admin_key = "sk-admin-" + "x" * 40
            anomaly = {"anomaly": {"warmup_s": 0, "min_requests": 1, "action": "flag"}}
            run("auth.yaml + abuse.anomaly", example("auth.yaml", abuse=anomaly),
                {**upstream, "SLUICE_ADMIN_KEY": admin_key, "SLUICE_DB": str(tmp / "auth.db")},
                lambda gateway: drive_auth(gateway, admin_key))
            listed = tmp / "listed.txt"
            listed.write_text(f"# made-up abusers\n{LISTED}\n")
            abuse = {"reputation": {"files": [str(listed)]},
                     "pow": {"threshold_rps": 0.1, "window_s": 10, "difficulty": 1}}
            run("quickstart.yaml + abuse.reputation, abuse.pow",
                example("quickstart.yaml", abuse=abuse, ratelimit={"trusted_proxies": ["127.0.0.1/32"]}),
                upstream, drive_abuse)
            yield found
    finally:
        for process in reversed(processes):
            process.stop()


def monitored() -> dict[str, list[str]]:
    """Every metric name monitoring/ uses (alerts, dashboards) -> where."""
    names: dict[str, list[str]] = {}
    for where, expr in all_queries():
        for name in metric_names(expr):
            names.setdefault(name, []).append(where)
    names.pop("up", None)  # Prometheus's own
    return names


def test_every_example_ran(scrapes: dict[str, Scrape]) -> None:
    ran = {name.split(" ")[0] for name in scrapes}
    assert {path.name for path in EXAMPLES.glob("*.yaml")} == ran, "a new example needs its gateway here"


def test_every_metric_monitoring_names_is_emitted(scrapes: dict[str, Scrape]) -> None:
    declared = set().union(*(s.declared for s in scrapes.values()))
    missing = sorted(f"{name} ({', '.join(where[:2])})" for name, where in monitored().items()
                     if name not in declared)
    assert not missing, "monitoring/ names metrics no example gateway emits:\n" + "\n".join(missing)


def test_the_driven_events_were_counted(scrapes: dict[str, Scrape]) -> None:
    sampled = set().union(*(s.sampled for s in scrapes.values()))
    assert not MUST_COUNT - sampled, f"no sample of {sorted(MUST_COUNT - sampled)}"
    assert set(monitored()) | {"sluice_ip_reputation_reloads_total"} >= MUST_COUNT  # the list stays honest


def test_the_metrics_table_is_what_the_gateways_declare(scrapes: dict[str, Scrape]) -> None:
    declared: dict[str, str] = {}
    for found in scrapes.values():
        declared.update(found.families)
    declared = {name: kind for name, kind in declared.items() if re.match(r"(sluice|gen_ai)_", name)}
    docs = documented()
    assert sorted(set(declared) - set(docs)) == [], "emitted, missing from docs/metrics.md's table"
    assert sorted(set(docs) - set(declared)) == [], "in docs/metrics.md's table, emitted by no example gateway"
    wrong = {name: (docs[name], kind) for name, kind in declared.items() if docs[name] != kind}
    assert not wrong, f"documented type, emitted type: {wrong}"
