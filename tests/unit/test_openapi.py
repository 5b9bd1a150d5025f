"""GET /openapi.json is generated from the route table, and stays in step with it on every example config."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sluice.config import load_config
from sluice.pipeline.validate import DecodeStage
from sluice.server.app import create_gateway
from sluice.server.openapi import OPENAPI_PATH, openapi_document
from sluice.server.routes import RouteTable
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
ADMIN_KEY = "sk-admin-" + "t" * 24  # examples/auth.yaml's ${SLUICE_ADMIN_KEY}


def built(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RouteTable, dict[str, Any]]:
    """The route table the gateway builds from ``config``, and its document."""
    monkeypatch.setenv("SLUICE_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("SLUICE_DB", str(tmp_path / "sluice.db"))
    monkeypatch.setenv("SLUICE_METRICS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # whatever the gateway makes lands here, not in the checkout

    async def build() -> tuple[RouteTable, dict[str, Any]]:
        gateway = create_gateway(load_config(config))
        try:
            return gateway.routes, openapi_document(gateway.routes)
        finally:
            await gateway.close()

    return asyncio.run(build())


@pytest.mark.parametrize("config", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_document_describes_every_route_of_the_table(config: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    table, doc = built(config, tmp_path, monkeypatch)
    paths = doc["paths"]
    served = {(path, method.lower()) for path, methods in table.exact.items() for method in methods}
    for path, method in served:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is served but not in /openapi.json"
    for prefix in table.families:
        assert {"get", "post", "delete"} <= set(paths[prefix]) and prefix + "/{rest}" in paths
    # Nothing described that the table does not serve (templated paths are served by the dispatch stage).
    for path, methods in paths.items():
        if "{" in path:
            continue
        for method in methods:
            assert (path, method) in served or path in table.families, f"{method} {path} described, not served"
    # A decoding route's body schema is the type it decodes into.
    for path, methods in table.exact.items():
        for method, pipeline in methods.items():
            kinds = [stage.kind for stage in pipeline.stages if isinstance(stage, DecodeStage)]
            if kinds:
                body = paths[path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
                assert body == {"$ref": f"#/components/schemas/{kinds[0].__name__}"}
    # A valid OpenAPI 3.1 document (schemathesis checks it against the specification's schema).
    import schemathesis  # here: a second of import that the rest of the unit tests need not pay

    schemathesis.openapi.from_dict(doc).validate()
    assert doc["openapi"] == "3.1.0"
    assert paths[OPENAPI_PATH]["get"]["security"] == []


def test_admin_routes_are_listed_with_auth_and_need_a_credential(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, doc = built(ROOT / "examples" / "auth.yaml", tmp_path, monkeypatch)
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/admin/keys"])
    assert set(paths["/admin/keys/{id}"]) == {"get", "patch"}
    assert set(paths["/admin/keys/{id}/revoke"]) == {"post"}
    assert set(paths["/admin/users/{id}"]) == {"get", "patch", "delete"}
    for path, methods in paths.items():
        for method, op in methods.items():
            if path.startswith(("/health/", "/metrics", OPENAPI_PATH)):
                assert op["security"] == [], (method, path)
            else:
                assert op["security"], f"{method} {path} is guarded by auth but the document says it is open"
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    # The Anthropic routes answer errors in Anthropic's shape.
    error = paths["/v1/messages"]["post"]["responses"]["default"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/AnthropicError"}


def test_without_auth_no_admin_routes_and_nothing_needs_a_key(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, doc = built(ROOT / "examples" / "quickstart.yaml", tmp_path, monkeypatch)
    assert not [path for path in doc["paths"] if path.startswith("/admin")]
    assert all(op["security"] == [] for methods in doc["paths"].values() for op in methods.values())
    assert "securitySchemes" not in doc["components"]
