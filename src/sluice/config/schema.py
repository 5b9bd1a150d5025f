"""What the config's types say about themselves: the section a path names, and the names it takes.

The loader uses it to suggest a known name for a mistyped one ("did you mean"); the generator of
docs/configuration.md (``.reference``) walks the same types.  Both read msgspec's own description of the
Structs (``msgspec.inspect``), so they follow model.py without a list of their own.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from msgspec import inspect as mi

__all__ = ["did_you_mean", "field_names", "struct_at", "type_at", "unwrap"]

# A msgspec error path after its "$": ".targets[0].match", ".headers['x']"
_SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[]+")


def unwrap(info: mi.Type) -> mi.Type:
    """The type a value of ``info`` holds when it is optional: ``X | None`` -> ``X``."""
    if isinstance(info, mi.UnionType):
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(kinds) == 1:
            return kinds[0]
    return info


def _items(info: mi.Type) -> mi.Type | None:
    """The type of one element of a list or of a mapping's values; None for anything else."""
    info = unwrap(info)
    if isinstance(info, (mi.VarTupleType, mi.ListType)):
        return info.item_type
    if isinstance(info, mi.DictType):
        return info.value_type
    return None


def type_at(typ: type, path: str) -> mi.Type | None:
    """The type at ``path`` under ``typ`` (msgspec's form "targets[0].match", or the config's "models.m.targets[0]":
    a name under a mapping steps into its values); None where the types do not go."""
    info: mi.Type | None = mi.type_info(typ)
    for segment in _SEGMENT.findall(path):
        if info is None:
            return None
        if segment.startswith("["):
            info = _items(info)
            continue
        info = unwrap(info)
        if isinstance(info, mi.DictType):  # a model's or provider's name
            info = info.value_type
        elif isinstance(info, mi.StructType):
            info = next((f.type for f in info.fields if f.encode_name == segment), None)
        else:
            return None
    return info


def struct_at(typ: type, path: str) -> mi.StructType | None:
    """The Struct that ``path`` (relative to ``typ``) points into."""
    info = type_at(typ, path)
    info = unwrap(info) if info is not None else None
    return info if isinstance(info, mi.StructType) else None


def field_names(struct: mi.StructType) -> tuple[str, ...]:
    """The names a config file writes for the Struct's fields (``hash_on``, not the attribute ``on``)."""
    return tuple(f.encode_name for f in struct.fields)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest known name, or " (known: a, b, ...)" when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known: {', '.join(known)})"
