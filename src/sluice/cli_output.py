"""What the admin commands print: JSON (the default, for scripts) or ``--format table`` (for people).

JSON stays the default whatever stdout is, as ``kubectl -o`` does: a script piping to ``jq`` and a person at a
terminal see the same thing unless they ask.  A table has a row per record of a list (``data``), or a FIELD /
VALUE row per field of one object.  A list's table leaves out the columns empty in every row (and a few
no one reads by eye, such as the audit chain's hashes).  Times (fields ending in ``_at``) are shown in UTC,
lists comma-joined, nested objects as compact JSON, a list's long cells cut (never one object's: a new key, shown
once, must be whole).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["FORMATS", "render", "table"]

FORMATS = ("json", "table")
MAX_CELL = 48  # characters of one cell in a list's table; the JSON output has the whole value
# Columns a list table leaves out (the JSON has them): the same in every row, or hashes no one reads by eye.
_HIDDEN = frozenset({"object", "updated_at", "prev_hash", "hash"})


def render(answer: dict[str, Any], fmt: str) -> str:
    """``answer`` (an admin API answer) as ``fmt``."""
    if fmt == "json":
        return json.dumps(answer, indent=2, ensure_ascii=False)
    records = answer.get("data")
    if isinstance(records, list) and answer.get("object") == "list":
        if not records:
            return "(none)"
        columns = _columns(records)
        return table(columns, [[_cut(_cell(name, record.get(name))) for name in columns]
                               for record in records]) + _next_page(answer)
    return table(["FIELD", "VALUE"], [[name, _cell(name, value)] for name, value in answer.items()])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, two spaces apart, a header in capitals; the last column unpadded."""
    lines = [[name.upper() for name in header], *[list(row) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
                     + ("  " if len(line) > 1 else "") + line[-1] for line in lines)


def _columns(records: list[dict[str, Any]]) -> list[str]:
    """The fields of the records in the order first seen, less those empty in every row and the _HIDDEN ones."""
    names = dict.fromkeys(name for record in records for name in record if name not in _HIDDEN)
    return [name for name in names if any(_cell(name, record.get(name)) != "-" for record in records)]


def _next_page(answer: dict[str, Any]) -> str:
    cursor = next((name for name in answer if name.startswith("next_")), None)
    if cursor is None or answer[cursor] is None:
        return ""
    return f"\n(more: --{cursor.removeprefix('next_').replace('_', '-')} {answer[cursor]})"


def _cell(name: str, value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int | float) and (name.endswith("_at") or name == "at"):
        text = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(value, list | tuple):
        text = ",".join(_cell(name, item) if not isinstance(item, str) else item for item in value) or "-"
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) if value else "-"
    else:
        text = str(value)
    return " ".join(text.split())  # one line per row


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
