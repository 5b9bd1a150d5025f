"""Whether one model glob covers another: the test behind "an actor grants only the models it holds".

Globs are fnmatch's (``*``, ``?``, ``[..]`` sets with ``!``; an unclosed ``[`` is a
character), matched case-sensitively as the gateway matches model names
(sluice.auth.principal).  ``covers(held, wanted)`` answers whether every name
``wanted`` matches is matched by ``held`` too; it may answer no where the true
answer is yes (it reasons on the text of the globs), never yes where it is no.
"""

from __future__ import annotations

import fnmatch

__all__ = ["covers", "units"]


def units(pattern: str) -> list[str]:
    """A glob as fnmatch reads it: ``*``, ``?``, a ``[..]`` set (an unclosed ``[`` is a character), characters."""
    found: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            j += pattern[j:j + 1] == "!"
            j += pattern[j:j + 1] == "]"
            end = pattern.find("]", j)
            if end >= 0:
                found.append(pattern[i:end + 1])
                i = end + 1
                continue
        found.append(pattern[i])
        i += 1
    return found


def _unit_covers(held: str, wanted: str) -> bool:
    """Whether one single-character unit of a held glob matches every character a unit of ``wanted`` can be."""
    if wanted == "*":
        return False
    if held == "?":
        return True  # any one character: a literal, ``?`` or a set of ``wanted``
    single = len(wanted) == 1 and wanted != "?"  # a literal character of ``wanted``
    if len(held) > 1:  # a set: only a literal character is surely in it
        return single and fnmatch.fnmatchcase(wanted, held)
    return single and held == wanted


def covers(held: str, wanted: str) -> bool:
    """Whether every model name the glob ``wanted`` matches is matched by the glob ``held`` (never a wrong yes).

    ``wanted`` is read as units (a character, ``?``, ``[..]``, ``*``) and ``held`` must match that sequence
    the way fnmatch matches a name, except that only a ``*`` of ``held`` takes the wildcards of ``wanted``:
    ``gpt-4*`` covers ``gpt-4o*`` and ``gpt-4o-mini``; ``claude-3-?`` covers ``claude-3-[57]`` but not
    ``claude-3-*`` (although fnmatch matches the text "claude-3-*" against it); a set covers only the
    characters in it.
    """
    if held == wanted or held == "*":
        return True
    h, w = units(held), units(wanted)
    i = j = 0
    star, resume = -1, 0  # the last ``*`` of held, and where in wanted its run would end next
    while j < len(w):
        if i < len(h) and h[i] == "*":
            star, resume = i, j
            i += 1
        elif i < len(h) and _unit_covers(h[i], w[j]):
            i += 1
            j += 1
        elif star >= 0:  # the last star takes one unit more
            resume += 1
            i, j = star + 1, resume
        else:
            return False
    return all(unit == "*" for unit in h[i:])
