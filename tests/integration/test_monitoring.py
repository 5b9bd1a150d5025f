"""monitoring/: the Prometheus config, alert rules and Grafana dashboards are valid, name only metrics
that docs/metrics.md documents, and work against a real Prometheus scraping a real gateway.

promtool and prometheus come with Debian's `prometheus` package (scripts/bootstrap.sh installs it when
it may). Without them the tests that need them skip, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Proc, call, free_port, start_gateway, wait_for_port

pytestmark = pytest.mark.integration

MONITORING = ROOT / "monitoring"
DOCS = ROOT / "docs" / "metrics.md"
DASHBOARDS = ("overview.json", "providers.json", "cost.json", "sla.json")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
SENT = 5

# A documented metric's series in the exposition: counters are documented with their `_total`,
# histograms by their base name.
SERIES_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Alerts the brief asks promtool tests for, each shown firing and silent in alerts.test.yml.
UNIT_TESTED = ("SluiceHighErrorRate", "SluiceGatewayOverheadHigh", "SluiceBreakerOpen",
               "SluiceFileDescriptorsExhausted")
# What the alert rules must watch (one alert or more per line).
ALERTED = {
    "sluice_requests_total", "sluice_request_duration_seconds_bucket", "sluice_gateway_overhead_seconds_bucket",
    "sluice_time_to_first_token_seconds_bucket", "sluice_breaker_transitions_total", "sluice_ratelimit_decisions_total",
    "sluice_process_resident_memory_bytes",
    "sluice_process_open_fds", "sluice_process_max_fds", "up", "sluice_access_log_dropped_total",
    "sluice_trace_spans_dropped_total",
}
# Grafana's variables, as a Prometheus query can stand them.
GRAFANA_VARIABLES = {"instance": ".*", "__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def tool(name: str) -> str:
    """A Prometheus binary's path: the test skips without it, except in CI, where it fails."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH (Debian: apt-get install --no-install-recommends prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the monitoring tests")
        pytest.skip(reason)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------------------
# What the files say


def documented() -> dict[str, str]:
    """The metric table(s) of docs/metrics.md, read now: name -> type."""
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|", DOCS.read_text(), re.M)
    return {name: kind for name, kind in rows}


def documented_series() -> dict[str, str]:
    """Every series name the documented metrics put in the exposition -> the documented name."""
    return {name + suffix: name for name, kind in documented().items() for suffix in SERIES_SUFFIXES.get(kind, ("",))}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and variables aside)."""
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"\1", expr)  # a Grafana variable's query
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in {"by", "without", "and", "or", "unless", "bool", "offset", "inf",
                                                  "nan"}}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads((MONITORING / "dashboards" / name).read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of a dashboard."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query


def all_queries() -> Iterator[tuple[str, str]]:
    for rule in alert_rules():
        yield f"alerts.yml {rule['alert']}", rule["expr"]
    for name in DASHBOARDS:
        for where, expr in dashboard_queries(load_dashboard(name)):
            yield f"{name} {where}", expr


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, gen_ai_provider_name) (rate(x_bucket{a="b", le=~"0.1"}[5m])))'
            ' / on (instance) group_left (pod) sum(rate(y_total[$__rate_interval])) * 3600 / 1e6 > 100'
            ' and absent(up{job="s"}) unless z offset 1h')
    assert metric_names(expr) == {"x_bucket", "y_total", "up", "z"}
    assert metric_names("label_values(sluice_requests_total, instance)") == {"sluice_requests_total"}


def test_the_metrics_table_is_consistent() -> None:
    docs = documented()
    assert "sluice_requests_total" in docs, "docs/metrics.md: no metric table found"
    for name, kind in docs.items():
        assert re.fullmatch(r"(sluice|gen_ai)_[a-z0-9_]+", name), f"docs/metrics.md: odd metric name {name!r}"
        assert kind in SERIES_SUFFIXES, f"docs/metrics.md: {name}: unknown type {kind!r}"
        if kind == "counter":
            assert name.endswith("_total"), f"docs/metrics.md: counter {name} is exposed as {name}_total"
        else:
            assert not name.endswith(("_total", "_bucket", "_sum", "_count")), \
                f"docs/metrics.md: the {kind} {name} should be listed by its base name"


def test_monitoring_uses_only_documented_metrics() -> None:
    known = set(documented_series()) | {"up"}
    unknown = sorted({f"{where}: {name}" for where, expr in all_queries() for name in metric_names(expr)
                      if name not in known})
    assert not unknown, "metrics not listed in docs/metrics.md:\n" + "\n".join(unknown)


def test_every_documented_metric_is_monitored() -> None:
    series = documented_series()
    used = {series[name] for _, expr in all_queries() for name in metric_names(expr) if name in series}
    unused = sorted(set(documented()) - used)
    assert not unused, f"documented metrics that no dashboard or alert shows: {unused}"


# ---------------------------------------------------------------------------------------------------
# Alert rules and the scrape config


def test_config_and_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    config = run(promtool, "check", "config", "monitoring/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", "monitoring/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout


def test_the_kubernetes_example_is_valid(tmp_path: Path) -> None:
    lines = (MONITORING / "prometheus.yml").read_text().splitlines()
    start = lines.index("  # - job_name: sluice")
    example = "\n".join(line.replace("# ", "", 1).rstrip() for line in lines[start:] if line.startswith("  #"))
    (job,) = yaml.safe_load(example)
    assert job["job_name"] == "sluice"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    # The relabelling keeps annotated pods and scrapes the annotated port.
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert (keep["action"], keep["regex"]) == ("keep", "true")
    port = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    replacement = port["replacement"].replace("$", "\\")
    assert re.sub(f"^(?:{port['regex']})$", replacement, "10.1.2.3:9999;8080") == "10.1.2.3:8080"
    assert re.sub(f"^(?:{port['regex']})$", replacement, "10.1.2.3;8080") == "10.1.2.3:8080"
    config = tmp_path / "kubernetes.yml"
    config.write_text(f"scrape_configs:\n{example}\n")
    result = run(tool("promtool"), "check", "config", str(config))
    if "field kubernetes_sd_configs not found" in result.stderr + result.stdout:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", "monitoring/alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_show_alerts_firing_and_silent() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for alert in UNIT_TESTED:
        expected = [check.get("exp_alerts") or [] for check in checks if check["alertname"] == alert]
        assert any(expected), f"alerts.test.yml never shows {alert} firing"
        assert not all(expected), f"alerts.test.yml never shows {alert} silent"


def test_every_alert_is_actionable() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    watched = {name for rule in rules for name in metric_names(rule["expr"])}
    assert watched >= ALERTED, f"no alert on {sorted(ALERTED - watched)}"


# ---------------------------------------------------------------------------------------------------
# Dashboards


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_well_formed(name: str) -> None:
    board = load_dashboard(name)
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == f"sluice-{name.removesuffix('.json')}"
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel.get("title"), f"{name}: panel {panel['id']} has no title"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']} is wider than the dashboard"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, f"{name}: {panel['title']}"
        assert panel["targets"], f"{name}: {panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{name}: {panel['title']}: empty query"
            assert 'instance=~"$instance"' in target["expr"], f"{name}: {panel['title']} ignores $instance"


# ---------------------------------------------------------------------------------------------------
# A real Prometheus scraping a real gateway, with the shipped scrape config and alert rules


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(MONITORING / "alerts.yml")]
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "sluice"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"][0]["targets"] = [target]
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for_port(self.port, self.process, self.log, timeout=30)
            self.wait_until(lambda: (call(self.url, "GET", "/-/ready").status == 200, None), "Prometheus ready")
        except BaseException:
            self.stop()
            raise

    def api(self, path: str, **params: str) -> Any:
        reply = call(self.url, "GET", f"{path}?{urllib.parse.urlencode(params)}" if params else path)
        answer = reply.json()
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def wait_until(self, check: Callable[[], tuple[bool, Any]], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
            done, last = check()
            if done:
                return last
            time.sleep(0.25)  # pacing: the interval of this bounded poll (the deadline above)
        raise AssertionError(f"no {what} within {timeout}s; last answer: {last}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc) -> Iterator[tuple[Proc, Prometheus]]:
    tool("prometheus")
    tmp = tmp_path_factory.mktemp("monitoring")
    config = f"""
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""
    gateway = start_gateway(tmp, config)
    try:
        prometheus = Prometheus(tmp, f"127.0.0.1:{gateway.port}")
        try:
            yield gateway, prometheus
        finally:
            prometheus.stop()
    finally:
        gateway.stop()


def test_prometheus_scrapes_the_gateway(stack: tuple[Proc, Prometheus]) -> None:
    gateway, prometheus = stack
    for _ in range(SENT):
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200

    def target_up() -> tuple[bool, Any]:
        targets = [t for t in prometheus.api("/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "sluice"]
        return [t["health"] for t in targets] == ["up"], targets

    (target,) = prometheus.wait_until(target_up, "healthy sluice target")
    assert target["scrapeUrl"] == f"{gateway.url}/metrics"

    def counted() -> tuple[bool, Any]:
        result = prometheus.api("/api/v1/query", query='sluice_requests_total{route="/v1/chat/completions"}')["result"]
        return sum(float(series["value"][1]) for series in result) == SENT, result

    (series,) = prometheus.wait_until(counted, f"sluice_requests_total of {SENT}")
    assert series["metric"] == {"__name__": "sluice_requests_total", "job": "sluice", "instance": target["labels"][
        "instance"], "env": "dev", "route": "/v1/chat/completions", "model": "gpt-4o-mini", "provider": "mock",
        "status": "200"}

    scraped = {name for name in prometheus.api("/api/v1/label/__name__/values")
               if name.startswith(("sluice_", "gen_ai_"))}
    assert "sluice_gateway_overhead_seconds_bucket" in scraped
    undocumented = sorted(scraped - set(documented_series()))
    assert not undocumented, f"the gateway exposes metrics docs/metrics.md does not list: {undocumented}"


def test_dashboard_queries_run_on_prometheus(stack: tuple[Proc, Prometheus]) -> None:
    _, prometheus = stack
    failures = []
    for name in DASHBOARDS:
        for where, expr in dashboard_queries(load_dashboard(name)):
            query = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"\1", expr)
            query = re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], query)
            answer = call(prometheus.url, "GET", "/api/v1/query?" + urllib.parse.urlencode({"query": query})).json()
            if answer["status"] != "success":
                failures.append(f"{name} {where}: {answer.get('error')}")
    assert not failures, "\n".join(failures)


def test_alert_rules_evaluate_on_prometheus(stack: tuple[Proc, Prometheus]) -> None:
    _, prometheus = stack
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> tuple[bool, Any]:
        rules = {rule["name"]: rule for group in prometheus.api("/api/v1/rules")["groups"] for rule in group["rules"]}
        return set(rules) == expected and all(r["health"] != "unknown" for r in rules.values()), rules

    rules = prometheus.wait_until(evaluated, "evaluation of every alert rule")
    broken = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert not broken
