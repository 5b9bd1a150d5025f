"""docs/configuration.md is what model.py says: regenerated here and compared, every field and value explained."""

from __future__ import annotations

import enum

import msgspec

from sluice.config import model
from sluice.config.reference import COMMAND, render, sections, undocumented
from tests.conftest import ROOT


def test_the_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), f"docs/configuration.md is out of date with config/model.py: run `{COMMAND}`"


def test_every_field_and_enum_value_has_a_comment() -> None:
    assert undocumented() == [], "write a comment beside each of these in src/sluice/config/model.py"


def test_every_struct_and_enum_of_the_model_is_in_the_reference() -> None:
    structs = {v for v in vars(model).values() if isinstance(v, type) and issubclass(v, msgspec.Struct)
               and v.__module__ == model.__name__ and v.__name__ != "_Section"}
    enums = {v for v in vars(model).values() if isinstance(v, type) and issubclass(v, enum.Enum)
             and v.__module__ == model.__name__}
    found = sections()
    assert {s.struct.cls for s in found} == structs
    assert {e for s in found for e in s.enums} == enums
    page = render()
    for section in found:  # each table has its heading and anchor, and every link points at one
        assert f'<a id="{section.anchor}"></a>' in page
    for anchor in {line.split("](#")[1].split(")")[0] for line in page.splitlines() if "](#" in line}:
        assert f'<a id="{anchor}"></a>' in page, anchor


def test_the_reference_shows_type_default_and_meaning() -> None:
    page = render()
    assert "## `models.<name>.targets[]`" in page
    assert "| `port` | integer | `8080` | The port to listen on; --port overrides it |" in page
    assert "| `provider` | string | required | A provider of this config, by name |" in page
    assert "| `hash_on` | string | `\"key\"` |" in page  # the name a file writes, not the attribute's
    assert "| `region` | string or null | `null`, or `$SLUICE_REGION` |" in page
    assert "- `least_inflight`: The fewest requests in flight" in page
    assert "| `http` | one of `auto`, `http1` |" in page or "| `http` | one of `http1`, `auto` |" in page
