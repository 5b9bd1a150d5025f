"""The config loader: any text gives a Config or a ConfigError naming the path, never a traceback.

``parse_config`` (what ``load_config`` and every CLI command run) then ``check_providers`` (the
kinds' own checks): arbitrary text, YAML of any shape, and the example configs with one value
replaced by another of any type, or one key dropped or renamed.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from sluice.config import Config
from sluice.config.loader import parse_config
from sluice.errors import ConfigError
from sluice.providers import check_providers
from tests.conftest import ROOT
from tests.fuzz._fuzz import FUZZ, JSON, corpus

ENV = {"SLUICE_ADMIN_KEY": "sk-admin-" + "t" * 24, "SLUICE_DB": "/nonexistent/sluice.db", "OPENAI_API_KEY": "sk-x",
       "ANTHROPIC_API_KEY": "sk-y", "GEMINI_API_KEY": "g", "EMPTY": ""}
EXAMPLES = {path.name: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "examples").glob("*.yaml"))}


def load(text: str) -> None:
    try:
        config = parse_config(text, ENV)
        check_providers(config)
    except ConfigError as exc:
        assert str(exc)  # "path: problem", one line of it at least
        return
    assert isinstance(config, Config)


@pytest.mark.parametrize("text", corpus("config"))
def test_config_corpus(text: bytes) -> None:
    load(text.decode("utf-8", "replace"))


@FUZZ
@given(text=st.text(max_size=200) | st.lists(st.sampled_from(
    ["providers:", "models:", "server:", "\n", "  ", "- ", "a: ", "{", "}", "[", "]", "!!python/object:os.system",
     "&a ", "*a", "${X}", "${X:-1}", "$$", "on", "null", "1e400", "0x10", "'", '"', "? ", "---", "...", "\t"]),
    max_size=40).map("".join))
@example(text="")
@example(text="- a")
@example(text="providers: {p: {kind: openai, base_url: 'http://[::1'}}")
def test_any_text(text: str) -> None:
    load(text)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a YAML tree (keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, (*prefix, i))
    return out


def replaced(node: Any, path: tuple[Any, ...], value: Any, action: str) -> Any:
    """``node`` with the value at ``path`` replaced by ``value``, or its key dropped or renamed to ``value``."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        copy = dict(node)
        if not rest and action == "drop":
            copy.pop(head, None)
        elif not rest and action == "rename":
            copy[str(value)[:20]] = copy.pop(head)
        else:
            copy[head] = replaced(node[head], rest, value, action)
        return copy
    copy = list(node)
    copy[head] = replaced(node[head], rest, value, action)
    return copy


VALUES = JSON | st.sampled_from([0, -1, 10**30, 1e300, float("inf"), "", " ", "${UNSET}", "${EMPTY:-}", "x" * 300,
                                 "http://", "http://[::1", "redis://:0", "0.0.0.0/33", [], {}, None, True])


@pytest.mark.parametrize("name", list(EXAMPLES))
@FUZZ
@given(data=st.data(), value=VALUES, action=st.sampled_from(["replace", "replace", "drop", "rename"]))
def test_examples_with_one_thing_changed(name: str, data: st.DataObject, value: Any, action: str) -> None:
    tree = EXAMPLES[name]
    path = data.draw(st.sampled_from(paths(tree)[1:]))
    load(yaml.safe_dump(replaced(tree, path, value, action)))
