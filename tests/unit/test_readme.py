"""The README's command table and layout match the code: every `sluice` subcommand has its row, every package
under src/sluice/ its line, and nothing else is named."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sluice.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def subcommands() -> set[str]:
    """The live parser's subcommands (what `sluice --help` lists)."""
    (commands,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(commands.choices)


def table_commands() -> list[str]:
    return re.findall(r"^\| `sluice ([a-z][a-z-]*)", section("The command"), re.M)


def test_the_command_table_lists_every_subcommand_once() -> None:
    rows = table_commands()
    assert len(rows) == len(set(rows)), f"a subcommand has two rows: {rows}"
    assert set(rows) == subcommands(), (f"missing from the README's table: {sorted(subcommands() - set(rows))}; "
                                        f"not a subcommand: {sorted(set(rows) - subcommands())}")


def test_the_layout_names_every_package_and_only_those() -> None:
    listed = set(re.findall(r"^- `([a-z_]+)/`:", section("Layout"), re.M))
    packages = {path.name for path in (ROOT / "src" / "sluice").iterdir()
                if path.is_dir() and path.name != "__pycache__" and any(path.glob("*.py"))}
    assert listed == packages, (f"packages missing from the README's layout: {sorted(packages - listed)}; "
                                f"listed but absent: {sorted(listed - packages)}")


def test_the_readme_links_only_files_in_the_repository() -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if re.match(r"[a-z]+://", target):
            continue
        assert (ROOT / target).resolve().is_relative_to(ROOT), f"README.md links outside the repository: {target}"
        assert (ROOT / target).exists(), f"README.md links a missing file: {target}"
