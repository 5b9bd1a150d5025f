"""docs/configuration.md, generated from the config's Structs (model.py) and the comments beside their fields.

    python -m sluice.config.reference > docs/configuration.md

model.py is the one source: each field's type and default come from msgspec's description of the Structs
(``msgspec.inspect``), its meaning from its comment (the lines just above it, or the one at its end), a
section's introduction from its class docstring.  tests/unit/test_config_reference.py fails when the file
in docs/ is not what this prints, and when a field has no comment.
"""

from __future__ import annotations

import ast
import enum
import inspect
import io
import re
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
from msgspec import inspect as mi

from . import model
from .model import ENVIRONMENT_DEFAULTS, Config
from .schema import unwrap

__all__ = ["Section", "comments", "render", "sections"]

COMMAND = "python -m sluice.config.reference > docs/configuration.md"
_RULER = re.compile(r"^--.*--$")  # "# -- connections (docs/server.md) --": a heading inside a class, not a meaning


@dataclass
class Section:
    """One Struct, where a config first reaches it (``path``), and where its table is (``anchor``)."""

    path: str
    struct: mi.StructType
    intro: str
    anchor: str = ""
    enums: list[type[enum.Enum]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.anchor = re.sub(r"[^a-z0-9]+", "-", self.path.lower()).strip("-") or "top-level-sections"


def comments() -> dict[str, dict[str, str]]:
    """class name -> attribute (field or enum member) -> its comment, from model.py's source."""
    source = inspect.getsource(model)
    by_line: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = {name: _comment(statement, lines, by_line)
                                for name, statement in _attributes(node)}
    return found


def _attributes(node: ast.ClassDef) -> Iterator[tuple[str, ast.stmt]]:
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            yield statement.target.id, statement
        elif isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            yield statement.targets[0].id, statement


def _comment(statement: ast.stmt, lines: list[str], by_line: dict[int, str]) -> str:
    """The comment lines right above the statement (no blank line between), then the one at its end."""
    above: list[str] = []
    line = statement.lineno - 1
    while line >= 1 and lines[line - 1].strip().startswith("#"):
        text = by_line.get(line, "")
        if _RULER.match(text):
            break
        above.insert(0, text)
        line -= 1
    end = statement.end_lineno or statement.lineno
    inline = by_line.get(end, "") if not lines[end - 1].strip().startswith("#") else ""
    return " ".join(part for part in (*above, inline) if part)


def sections() -> list[Section]:
    """Every Struct a config can hold, in the order a reader meets them (each section, then what it holds)."""
    notes = comments()
    found: list[Section] = []
    seen: set[type] = set()

    def visit(path: str, struct: mi.StructType, intro: str) -> None:
        seen.add(struct.cls)
        section = Section(path, struct, _docstring(struct.cls) or intro)
        found.append(section)
        for f in struct.fields:
            for enum_type in _enums(f.type):
                if enum_type not in section.enums:
                    section.enums.append(enum_type)
        for f in struct.fields:
            inner, suffix = _struct_in(f.type)
            if inner is not None and inner.cls not in seen:
                visit(_join(path, f.encode_name) + suffix, inner, notes[struct.cls.__name__].get(f.name, ""))

    visit("", mi.type_info(Config), "")  # type: ignore[arg-type]
    listed: set[type[enum.Enum]] = set()
    for section in found:  # each enum's values are listed once, under the first section that uses it
        section.enums = [e for e in section.enums if e not in listed]
        listed.update(section.enums)
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _docstring(cls: type) -> str:
    own = cls.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(own).split()) if own else ""


def _struct_in(info: mi.Type) -> tuple[mi.StructType | None, str]:
    """The Struct a field holds, directly, in a list ("[]") or as a mapping's values (".<name>")."""
    info = unwrap(info)
    if isinstance(info, mi.StructType):
        return info, ""
    if isinstance(info, (mi.VarTupleType, mi.ListType)) and isinstance(unwrap(info.item_type), mi.StructType):
        return unwrap(info.item_type), "[]"  # type: ignore[return-value]
    if isinstance(info, mi.DictType) and isinstance(unwrap(info.value_type), mi.StructType):
        return unwrap(info.value_type), ".<name>"  # type: ignore[return-value]
    return None, ""


def _enums(info: mi.Type) -> Iterator[type[enum.Enum]]:
    if isinstance(info, mi.EnumType):
        yield info.cls
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from _enums(member)


def _type(info: mi.Type, anchors: dict[type, str]) -> str:
    """The type in a reader's words: string, list of string, map of string to a [section](#...)."""
    simple = {mi.StrType: "string", mi.IntType: "integer", mi.FloatType: "number", mi.BoolType: "boolean",
              mi.NoneType: "null"}
    if type(info) in simple:
        return simple[type(info)]
    if isinstance(info, mi.UnionType):
        return " or ".join(_type(member, anchors) for member in info.types)
    if isinstance(info, (mi.VarTupleType, mi.ListType)):
        return f"list of {_type(info.item_type, anchors)}"
    if isinstance(info, mi.DictType):
        return f"map of {_type(info.key_type, anchors)} to {_type(info.value_type, anchors)}"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(f"`{value}`" for value in info.values)
    if isinstance(info, mi.EnumType):
        return "one of " + ", ".join(f"`{member.value}`" for member in info.cls)
    if isinstance(info, mi.StructType):
        return f"[section](#{anchors[info.cls]})"
    raise TypeError(f"no words for {info!r}: teach sluice.config.reference._type")


def _default(f: mi.Field) -> str:
    if f.required:
        return "required"
    value = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
    if isinstance(value, msgspec.Struct):
        return "its defaults"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{msgspec.json.encode(value).decode()}`"


def _sentence(text: str) -> str:
    """A comment as a sentence of the page: capitalised, table bars escaped."""
    return (text[:1].upper() + text[1:]).replace("|", "\\|")


def render() -> str:
    """The whole of docs/configuration.md."""
    notes = comments()
    found = sections()
    anchors = {section.struct.cls: section.anchor for section in found}
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from src/sluice/config/model.py: do not edit by hand. To regenerate:",
        f"     {COMMAND}",
        "     tests/unit/test_config_reference.py fails when this file is out of date. -->",
        "",
        "sluice reads one YAML file (`sluice serve --config FILE`, `sluice check-config FILE`). Every section",
        "and every field below is optional unless it says *required*; a key the reference does not list is",
        "refused, with the closest known name (`rate_limit: unknown section (did you mean 'ratelimit'?)`).",
        "A config must serve something: `sluice serve` and `check-config` refuse one with no `models:`",
        "(and no `passthrough.provider`). [examples/quickstart.yaml](../examples/quickstart.yaml) is the",
        "smallest working one; the other files in [examples/](../examples/) show each feature.",
        "",
        "Any string may name environment variables: `${VAR}` (an error when unset or empty),",
        "`${VAR:-default}`, and `$$` for a literal `$`; a number or a boolean may come from one too:",
        "`port: ${SLUICE_PORT:-8080}`.",
        "",
        "These fields, when the file leaves them out (or sets them to null), take the value of an environment "
        "variable if it is set:",
        "",
        "| Field | Variable |",
        "|---|---|",
        *(f"| `{path}` | `{variable}` |" for path, variable in ENVIRONMENT_DEFAULTS.items()),
        "",
        "Types: *list of X* is a YAML sequence, *map of string to X* a mapping whose keys you choose (a",
        "provider's or a model's name, a header). Durations are in seconds (`_s`), sizes in bytes (`_bytes`).",
    ]
    for section in found:
        out += ["", f'<a id="{section.anchor}"></a>', "",
                f"## `{section.path}`" if section.path else "## Top-level sections", ""]
        if section.intro:
            out += [_sentence(section.intro), ""]
        out += ["| Field | Type | Default | Meaning |", "|---|---|---|---|"]
        own = notes[section.struct.cls.__name__]
        for f in section.struct.fields:
            default = _default(f)
            variable = ENVIRONMENT_DEFAULTS.get(_join(section.path, f.encode_name))
            if variable:
                default += f", or `${variable}`"
            meaning = _sentence(own.get(f.name, ""))
            out.append(f"| `{f.encode_name}` | {_type(f.type, anchors)} | {default} | {meaning} |")
        for enum_type in section.enums:
            members = notes[enum_type.__name__]
            out += ["", f"{enum_type.__name__} values:", ""]
            out += [f"- `{member.value}`: {_sentence(members.get(member.name, ''))}" for member in enum_type]
    return "\n".join(out) + "\n"


def undocumented() -> list[str]:
    """The fields and enum values with no comment: each needs one in model.py (the reference shows it as its
    meaning)."""
    notes = comments()
    found = sections()
    fields = [_join(section.path, f.encode_name) for section in found for f in section.struct.fields
              if not notes[section.struct.cls.__name__].get(f.name)]
    values = [f"{e.__name__}.{member.name}" for section in found for e in section.enums for member in e
              if not notes[e.__name__].get(member.name)]
    return fields + values


if __name__ == "__main__":
    sys.stdout.write(render())
