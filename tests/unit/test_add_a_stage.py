"""docs/architecture.md's worked example ("Add a stage: a max_tokens cap") runs as it is written there.

The page's code blocks are read, not copied: the stage module is loaded as ``sluice.pipeline.max_tokens``,
the page's test block is run, and the page's diff to ``build_routes`` is applied to today's
src/sluice/server/routes.py (its context and removed lines must still be there: when the route table
changes, this fails and the example is brought up to date) and built into a real gateway's routes.
"""

from __future__ import annotations

import asyncio
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.config import parse_config
from sluice.context import RequestContext

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
ROUTES = ROOT / "src" / "sluice" / "server" / "routes.py"
STAGE_FILE = "# src/sluice/pipeline/max_tokens.py"
TEST_FILE = "# tests/unit/test_max_tokens.py"
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages")


def example() -> str:
    text = DOC.read_text()
    start = text.index("## Add a stage")
    return text[start:text.index("\n## ", start + 1)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", example(), re.S | re.M)


def block(first_line: str) -> str:
    found = [b for b in blocks("python") if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/architecture.md: one python block starting {first_line!r}"
    return found[0]


@pytest.fixture
def stage_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The page's stage, as the module it says it is (relative imports and all)."""
    module = types.ModuleType("sluice.pipeline.max_tokens")
    module.__package__ = "sluice.pipeline"
    module.__file__ = str(DOC)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block(STAGE_FILE), f"{DOC}:max_tokens.py", "exec"), module.__dict__)
    return module


@pytest.fixture
def doc_tests(stage_module: types.ModuleType) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "test_max_tokens"}
    exec(compile(block(TEST_FILE), f"{DOC}:test_max_tokens.py", "exec"), namespace)
    return namespace


def test_the_stage(stage_module: types.ModuleType) -> None:
    cap = stage_module.MaxTokensCap(4096)
    assert cap.name == "max_tokens_cap"
    assert cap.on_response is None  # nothing after the response: skipped on the way back
    assert cap.describe() == "max_tokens_cap (at most 4096)"


def test_the_pages_test_passes(doc_tests: dict[str, Any]) -> None:
    tests: list[Callable[[], None]] = [f for name, f in doc_tests.items() if name.startswith("test_")]
    assert len(tests) >= 2
    for test in tests:
        test()


# -- step 3: its place in build_routes ---------------------------------------------------------------------

def hunks(diff: str) -> Iterator[tuple[list[str], list[str]]]:
    """(lines before, lines after) of each hunk of a unified diff without file headers."""
    before: list[str] = []
    after: list[str] = []
    for line in diff.splitlines():
        if line.startswith("@@"):
            if before or after:
                yield before, after
            before, after = [], []
            continue
        sign, text = line[:1], line[1:]
        if sign in (" ", "-"):
            before.append(text)
        if sign in (" ", "+"):
            after.append(text)
    if before or after:
        yield before, after


def patched_routes() -> str:
    [diff] = blocks("diff")
    source = ROUTES.read_text()
    for before, after in hunks(diff):
        old, new = "\n".join(before) + "\n", "\n".join(after) + "\n"
        assert source.count(old) == 1, (
            "docs/architecture.md, add a stage, step 3: these lines are no longer in src/sluice/server/routes.py "
            "as the diff says; bring the example up to date:\n" + old)
        source = source.replace(old, new)
    return source


class Override:
    """``obj`` with some attributes replaced (the config field step 1 adds, which this tree does not have)."""

    def __init__(self, obj: Any, **attributes: Any) -> None:
        self._obj = obj
        self.__dict__.update(attributes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)


def build_with_cap(config_text: str, cap: int | None, tmp_path: Path, stage_module: types.ModuleType,
                   monkeypatch: pytest.MonkeyPatch) -> Any:
    """The route table of ``build_routes`` with the page's diff applied, for a gateway of ``config_text`` whose
    ``server.max_tokens`` is ``cap``."""
    from sluice.server.app import create_gateway

    module = types.ModuleType("sluice.server._routes_with_cap")
    module.__package__ = "sluice.server"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(patched_routes(), f"{ROUTES} (+ docs/architecture.md step 3)", "exec"), module.__dict__)
    monkeypatch.setenv("SLUICE_METRICS_DIR", str(tmp_path))
    config = parse_config(config_text, {"SLUICE_ADMIN_KEY": "sk-admin-" + "x" * 24,
                                        "SLUICE_DB": str(tmp_path / "sluice.db")})

    async def build() -> Any:
        gateway = create_gateway(config)
        try:
            server = Override(config.server, max_tokens=cap)
            return module.build_routes(Override(gateway, config=Override(config, server=server)))
        finally:
            await gateway.close()

    return asyncio.run(build())


QUIET = "\nobservability: {access_log: false, metrics: false}\n"


def test_build_routes_puts_it_where_the_page_says(tmp_path: Path, stage_module: types.ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    table = build_with_cap((ROOT / "examples" / "auth.yaml").read_text() + QUIET, 4096, tmp_path, stage_module,
                           monkeypatch)
    for path in MODEL_ROUTES:
        names = [stage.name for stage in table.exact[path]["POST"].stages]
        assert names.index("decode") < names.index("model_access") < names.index("max_tokens_cap"), names
        assert names.index("max_tokens_cap") < names.index("routing") < names.index("rate_limits"), names
    assert "max_tokens_cap (at most 4096)" in table.exact["/v1/chat/completions"]["POST"].describe()
    assert "max_tokens_cap" not in [s.name for s in table.exact["/v1/messages/count_tokens"]["POST"].stages]


def test_absent_setting_absent_stage(tmp_path: Path, stage_module: types.ModuleType,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    table = build_with_cap((ROOT / "examples" / "quickstart.yaml").read_text() + QUIET, None, tmp_path,
                           stage_module, monkeypatch)
    for methods in table.exact.values():
        for pipeline in methods.values():
            assert "max_tokens_cap" not in [stage.name for stage in pipeline.stages]


def test_a_real_route_refuses_before_routing(tmp_path: Path, stage_module: types.ModuleType,
                                             doc_tests: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    table = build_with_cap((ROOT / "examples" / "quickstart.yaml").read_text() + QUIET, 100, tmp_path,
                           stage_module, monkeypatch)
    exchange = doc_tests["MemoryExchange"]
    # A model no route knows: routing would answer 404; the cap, before it, answers first.
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 101}
    for path, shape in (("/v1/chat/completions", "error"), ("/v1/messages", "type")):
        pipeline = table.exact[path]["POST"]
        ex = exchange(body, path)
        asyncio.run(pipeline.run(ex, RequestContext("req-1", 0.0, pipeline.route)))
        assert ex.status == 400, ex.answer
        assert shape in orjson.loads(ex.answer)
        assert b"max_tokens_too_large" in ex.answer or b"at most 100 tokens" in ex.answer
    ex = exchange({**body, "max_tokens": 100})
    pipeline = table.exact["/v1/chat/completions"]["POST"]
    asyncio.run(pipeline.run(ex, RequestContext("req-2", 0.0, pipeline.route)))
    assert ex.status == 404  # within the cap: on to routing, which knows no such model
