"""Configs of other gateways, turned into sluice configs (``sluice import <kind> FILE``).

An importer answers the sluice config as plain data (what ``yaml.safe_dump`` writes) and the list of what it
could not map, each with the source path and why; bad input raises ``ImportProblem`` with one line to show.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImportProblem", "Unmapped"]


class ImportProblem(Exception):
    """The source config cannot be read as what it claims to be (not YAML, wrong shape): one line."""


@dataclass(frozen=True)
class Unmapped:
    """A part of the source config that has no sluice equivalent (or not one the importer dares to guess)."""

    path: str  # where in the source config, e.g. "model_list[3].litellm_params.model"
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"
