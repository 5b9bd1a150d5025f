"""Every option and argument of every `sluice` subcommand says what it is for (`sluice X --help`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from sluice.cli import _parser


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help() -> None:
    walked = list(_parsers(_parser(), "sluice"))
    missing = [f"{name} {action.option_strings or action.dest}" for name, parser in walked
               for action in parser._actions
               if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help]
    assert missing == []
    names = {name for name, _ in walked}
    assert {"sluice mock-upstream", "sluice keys list", "sluice dlq replay", "sluice import litellm"} <= names


def test_every_subcommand_has_help() -> None:
    for name, parser in _parsers(_parser(), "sluice"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                assert set(helps) == set(action.choices), name
                assert all(helps.values()), (name, helps)
