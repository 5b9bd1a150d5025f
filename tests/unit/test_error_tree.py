"""The error tree stays one: every GatewayError is defined in sluice.errors, the tree drawn in its docstring is
the classes' own (each named there, each under its real base), and no two exception classes of sluice share a
name."""

from __future__ import annotations

import collections
import importlib
import pkgutil
import re

import sluice
from sluice import errors

_TREE_LINE = re.compile(r"^(?P<indent>[\s│├└─]*?)(?:[├└]── )?(?P<name>[A-Z]\w+)(?:\s|$)")


def _all_modules() -> None:
    for module in pkgutil.walk_packages(sluice.__path__, "sluice."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def _sluice_exceptions() -> set[type]:
    _all_modules()
    return {cls for cls in _subclasses(BaseException) if cls.__module__.split(".")[0] == "sluice"}


def _drawn_tree() -> list[tuple[int, str]]:
    """(column, class name) of each line of the tree in sluice.errors' docstring, top down."""
    assert errors.__doc__ is not None
    lines = errors.__doc__.split("\n\n")[1].splitlines()
    drawn = []
    for line in lines:
        found = _TREE_LINE.match(line)
        if found is not None:
            drawn.append((found.start("name"), found.group("name")))
    return drawn


def test_every_gateway_error_is_defined_in_sluice_errors() -> None:
    elsewhere = sorted(f"{cls.__module__}.{cls.__name__}" for cls in _sluice_exceptions()
                       if issubclass(cls, errors.GatewayError) and cls.__module__ != "sluice.errors")
    assert elsewhere == []


def test_the_docstring_tree_names_each_error_under_its_real_base() -> None:
    classes = {cls.__name__: cls for cls in _sluice_exceptions()}
    drawn = _drawn_tree()
    assert drawn[0] == (4, "SluiceError")
    parents: list[tuple[int, str]] = []
    for column, name in drawn:
        while parents and parents[-1][0] >= column:
            parents.pop()
        assert name in classes, f"{name} is drawn but no class of sluice has that name"
        if parents:
            base = classes[parents[-1][1]]
            assert issubclass(classes[name], base), f"{name} is drawn under {base.__name__}, which it is not"
        parents.append((column, name))
    must_be_drawn = {cls.__name__ for cls in classes.values()
                     if issubclass(cls, (errors.GatewayError, errors.DependencyUnavailable))}
    assert must_be_drawn - {name for _, name in drawn} == set()


def test_no_two_exception_classes_of_sluice_share_a_name() -> None:
    homes = collections.defaultdict(list)
    for cls in _sluice_exceptions():
        homes[cls.__name__].append(cls.__module__)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}


def test_each_dependency_error_names_its_dependency() -> None:
    unnamed = [cls.__name__ for cls in _sluice_exceptions()
               if issubclass(cls, errors.DependencyUnavailable) and "dependency" not in vars(cls)]
    assert unnamed == [], "each DependencyUnavailable says what could not be reached"
