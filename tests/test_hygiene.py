"""The suite's own hygiene: no sleep as synchronisation, no wall-clock pass/fail assertions.

A test that sleeps "long enough" for something to happen, or asserts that something took less than N seconds,
passes on an idle machine and fails on a loaded one.  Every ``sleep(`` under tests/ must therefore be a deliberate
pace (a poll's interval, a slow client, a window that has to pass) and say so on its own line with a
``# pacing: <why>`` comment; synchronisation polls for the observable result against a deadline instead.  An
``assert`` that orders a measured duration (``time.monotonic() - start < 0.5``, ``took <= limit``) is refused
outright: assert the behaviour (ordering, a count, the error type) instead.  Each file is one case, and its failure
names every offending file:line.
"""

from __future__ import annotations

import ast
import io
import itertools
import tokenize
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACING = "# pacing:"
CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns", "time_ns"}
# Names that hold a measured duration by convention, whatever they were computed from.
DURATION_NAMES = {"elapsed", "took", "waited", "duration"}
ORDERINGS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def unpaced_sleeps(source: str) -> list[int]:
    """Lines that call ``sleep(`` (time.sleep, asyncio.sleep, a bare sleep) without a ``# pacing:`` comment."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    paced = {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT and tok.string.startswith(PACING)}
    return [tok.start[0] for tok, following in itertools.pairwise(tokens)
            if tok.type == tokenize.NAME and tok.string == "sleep" and following.string == "("
            and tok.start[0] not in paced]


def _is_clock_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in CLOCKS


def _is_clock_difference(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _is_clock_call(node.left)


def wall_clock_assertions(source: str) -> list[int]:
    """Lines of asserts that order a measured duration: a clock difference, or a name holding one."""
    tree = ast.parse(source)
    measured = set(DURATION_NAMES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_clock_difference(node.value):
            measured.update(target.id for target in node.targets if isinstance(target, ast.Name))

    def is_duration(node: ast.AST) -> bool:
        return _is_clock_difference(node) or (isinstance(node, ast.Name) and node.id in measured)

    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for compare in ast.walk(node.test):
            if (isinstance(compare, ast.Compare) and any(isinstance(op, ORDERINGS) for op in compare.ops)
                    and any(is_duration(operand) for operand in [compare.left, *compare.comparators])):
                lines.append(node.lineno)
                break
    return lines


def problems(path: Path, source: str) -> list[str]:
    where = path.relative_to(TESTS.parent) if path.is_absolute() else path
    found = [f"{where}:{line}: sleep( without '{PACING} <why>' (poll for the result instead)"
             for line in unpaced_sleeps(source)]
    found += [f"{where}:{line}: assertion on a measured duration (assert the behaviour instead)"
              for line in wall_clock_assertions(source)]
    return sorted(found, key=lambda text: int(text.split(":")[1]))


def suite_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("path", suite_files(), ids=lambda path: str(path.relative_to(TESTS)))
def test_no_sleep_as_synchronisation_and_no_timing_assertions(path: Path) -> None:
    found = problems(path, path.read_text())
    assert not found, "\n".join(found)


BAD = '''
import asyncio, time

def test_slow():
    started = time.monotonic()
    time.sleep(0.5)  # the worker has caught up
    took = time.perf_counter() - started
    assert time.monotonic() - started < 2.0
    assert took <= 1.5

async def test_async():
    await asyncio.sleep(0.1)
'''

GOOD = '''
import asyncio, time

def test_polls():
    deadline = time.monotonic() + 10
    while not ready():
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)  # pacing: poll interval
    elapsed = 3.0
    assert 30 <= count() <= 30 + int(elapsed / 2)  # a count, bounded by what the clock allowed
    text = "time.sleep(1) in a string is not a call"
'''


def test_the_guard_catches_a_bad_snippet() -> None:
    assert unpaced_sleeps(BAD) == [6, 12]
    assert wall_clock_assertions(BAD) == [8, 9]
    assert [line.split(":")[1] for line in problems(Path("bad.py"), BAD)] == ["6", "8", "9", "12"]


def test_the_guard_passes_a_good_snippet() -> None:
    assert problems(Path("good.py"), GOOD) == []
