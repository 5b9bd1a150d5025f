"""schemathesis against a real ``sluice serve`` in front of ``sluice mock-upstream``, from its own /openapi.json.

Every operation of the document (model calls, passthrough families, health, metrics, the admin API:
authentication is on, with a SQLite store) gets a handful of generated requests, valid ones and
schema-violating ones, sent with the admin credential.  Checks: ``not_a_server_error`` (no 5xx, no
dropped connection) and ``response_schema_conformance`` (each answer, errors included, has the shape
the document declares for its status).  Bounded: a few examples per operation (``SLUICE_FUZZ=long``:
many more, tests/fuzz/README.md), each request with a timeout, the whole test under pytest-timeout.

The configured models are offered to the generator beside arbitrary names (the document names none):
an arbitrary name is refused at routing (404), a configured one goes through decode, routing and the
provider's translation (OpenAI, Anthropic and Gemini kinds) to the mock and back.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import Proc, start_gateway, start_mock
from tests.fuzz._fuzz import LONG

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600 if LONG else 240)]

ADMIN_KEY = "sk-admin-" + "s" * 24
MODELS = ["gpt-4o-mini", "claude", "gemini"]
EXAMPLES = 50 if LONG else 3
# The passthrough families are nine prefixes over the same two stages: fewer examples each when bounded.
PASSTHROUGH_EXAMPLES = 50 if LONG else 1
REQUEST_TIMEOUT = 10.0


def config(mock_url: str, db: Path) -> str:
    return f"""
server:
  max_body_bytes: 65536
store:
  sqlite_path: {db}
  migrate_on_start: true
auth:
  enabled: true
  static_keys:
    - {{name: admin, key: {ADMIN_KEY}, roles: [admin]}}
observability:
  health_details_token: details-token-0123456789
upstream:
  read_timeout_s: 5
  connect_timeout_s: 1
passthrough:
  provider: mock
providers:
  mock: {{kind: openai, base_url: "{mock_url}", api_keys: [sk-mock]}}
  anth: {{kind: anthropic, base_url: "{mock_url}", api_keys: [sk-mock]}}
  gem: {{kind: gemini, base_url: "{mock_url}", api_keys: [sk-mock]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  claude: {{targets: [{{provider: anth, model: claude-3-5-haiku-latest}}]}}
  gemini: {{targets: [{{provider: gem, model: gemini-2.0-flash}}]}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    mock = start_mock(tmp)
    try:
        proc = start_gateway(tmp, config(mock.url, tmp / "sluice.db"))
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        mock.stop()


def with_models(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with the configured model names offered beside any string for ``model``."""
    doc = copy.deepcopy(doc)
    for schema in doc["components"]["schemas"].values():
        model = schema.get("properties", {}).get("model")
        if model == {"type": "string"}:
            schema["properties"]["model"] = {"anyOf": [{"enum": MODELS}, {"type": "string"}]}
    return doc


def test_openapi_json_is_served_without_a_credential(gateway: Proc) -> None:
    response = requests.get(gateway.url + "/openapi.json", timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["openapi"] == "3.1.0" and "/v1/chat/completions" in doc["paths"] and "/admin/keys" in doc["paths"]
    assert requests.post(gateway.url + "/openapi.json", timeout=REQUEST_TIMEOUT).status_code == 405


@pytest.mark.parametrize(("method", "path"), [("POST", "/admin/keys"), ("POST", "/admin/users"),
                                              ("POST", "/admin/teams"), ("PATCH", "/admin/teams/{id}")])
def test_admin_metadata_with_an_integer_beyond_64_bits_is_refused(gateway: Proc, method: str, path: str) -> None:
    """Regression (found by the long run): the record was created (a key whose secret was never shown), then
    its answer could not be written (500), nor any list holding it afterwards."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    if "{id}" in path:
        team = requests.post(gateway.url + "/admin/teams", json={"name": "t"}, headers=headers, timeout=REQUEST_TIMEOUT)
        path = path.replace("{id}", team.json()["id"])
    body = b'{"metadata": {"a": [-1673222791543403254336359898284032]}}'
    response = requests.request(method, gateway.url + path, data=body, headers=headers, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "metadata"
    for listing in ("/admin/keys", "/admin/users", "/admin/teams"):
        assert requests.get(gateway.url + listing, headers=headers, timeout=REQUEST_TIMEOUT).status_code == 200


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation(gateway: Proc, mode: GenerationMode) -> None:
    doc = requests.get(gateway.url + "/openapi.json", timeout=REQUEST_TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(with_models(doc))
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    session = requests.Session()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        examples = PASSTHROUGH_EXAMPLES if "passthrough" in operation.definition.raw["tags"] else EXAMPLES

        @settings(max_examples=examples, deadline=None, database=None, derandomize=not LONG,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=gateway.url, session=session, headers=headers, timeout=REQUEST_TIMEOUT)
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except (Exception, BaseExceptionGroup) as exc:  # every operation runs; the failures reported together
                failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:600]}")

        try:
            run()
        except Unsatisfiable:  # nothing of it can be made invalid (GET /health/live: no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
    assert operations >= 40  # model routes, families, probes, metrics, this document, the admin API
    assert not failures, "\n\n".join(dict.fromkeys(failures))
