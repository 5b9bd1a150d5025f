"""Prints the requirements of sluice's runtime plus the extras named, one a line, from pyproject.toml.

    python3 scripts/requirements.py runtime          the runtime dependencies alone
    python3 scripts/requirements.py dev,bench        the runtime's and those extras' (an extra naming
                                                     sluice[...] brings in those extras' requirements)
    python3 scripts/requirements.py --names runtime  the distribution names only, for a progress line

scripts/bootstrap.sh installs these before it builds sluice itself, so that "installing the dependencies"
and "building the compiled extensions" are two steps, each with its own line and its own failure.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = re.compile(r"^sluice\[([^\]]*)\]\s*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found = list(project["dependencies"])
    pending = [extra for extra in extras if extra and extra != "runtime"]
    seen: set[str] = set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: no extra {extra!r} in pyproject.toml (known: {', '.join(optional)})")
        seen.add(extra)
        for requirement in optional[extra]:
            own = SELF.match(requirement)
            if own:  # sluice[postgres,otel]: those extras' requirements, not sluice from an index
                pending.extend(name.strip() for name in own.group(1).split(","))
            elif requirement not in found:
                found.append(requirement)
    return found


def main(argv: list[str]) -> int:
    names_only = "--names" in argv
    args = [arg for arg in argv if arg != "--names"]
    found = requirements((args[0] if args else "runtime").split(","))
    if names_only:
        print(", ".join(match.group(0) for requirement in found if (match := NAME.match(requirement))))
    else:
        print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
