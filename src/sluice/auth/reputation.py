"""IP reputation lists: addresses and networks read from files, looked up in O(log n), reloaded when changed.

A list file holds one address or CIDR a line (IPv4 or IPv6; host bits allowed), blank lines and ``#``
comments ignored: the format of the common blocklists (Spamhaus DROP, FireHOL, an operator's own).  The
networks of all files are merged into sorted, disjoint integer ranges, one table per IP version, so a lookup
is one ``inet_pton`` and one ``bisect`` whatever the list's size; IPv4-mapped IPv6 addresses are looked up
as the IPv4 address they carry (as the IP rules do, sluice.auth.iprules).

``Reputation.refresh()`` re-reads a file only when its modification time or size changed.  A file is taken
whole or not at all: one that cannot be read, or that has a line that is no address, keeps its last good
contents (none, at start), and is logged once per bad version, not at every refresh.  The new table is
built aside and swapped in by one assignment: a lookup never sees half a reload.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence

__all__ = ["Ranges", "Reputation", "parse_list"]

log = logging.getLogger("sluice.gateway")

_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6 addresses


def _value(ip: str) -> tuple[int, int] | None:
    """(IP version, the address as an integer), or None: inet_pton, ten times cheaper than ipaddress here."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except (OSError, ValueError):  # not an address (a scoped IPv6 one, fe80::1%eth0, included)
        return None
    if packed[:12] == _MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def parse_list(text: str, source: str = "list") -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of a list file's text; ValueError naming the first bad line."""
    networks = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].split(";", 1)[0].strip()  # '#' comments; ';' too (Spamhaus DROP)
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{source}:{number}: not an address or CIDR: {entry[:80]!r}") from None
    return networks


class Ranges:
    """Disjoint sorted ranges per IP version; ``in`` is one bisect."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self.size = len(networks)
        for version in (4, 6):
            spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks
                           if n.version == version)
            merged: list[list[int]] = []
            for first, last in spans:
                if merged and first <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], last)
                else:
                    merged.append([first, last])
            self._starts[version] = [first for first, _ in merged]
            self._ends[version] = [last for _, last in merged]

    def __contains__(self, ip: str) -> bool:
        parsed = _value(ip)
        if parsed is None:
            return False
        version, value = parsed
        i = bisect.bisect_right(self._starts[version], value) - 1
        return i >= 0 and value <= self._ends[version][i]


class Reputation:
    """The files' addresses (see the module docstring); ``listed(ip)``, ``refresh()``."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = tuple(files)
        self._versions: dict[str, tuple[int, int] | None] = {}  # file -> (mtime_ns, size) last read (or refused)
        self._contents: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}  # last good
        self.ranges = Ranges()
        self.reloads: dict[tuple[str, ...], int] = {("ok",): 0, ("failed",): 0}
        self.refresh()

    def listed(self, ip: str) -> bool:
        return ip in self.ranges

    def refresh(self) -> bool:
        """Reads the files that changed (blocking: call it off the event loop); True when the table changed."""
        changed = False
        for path in self.files:
            try:
                stat = os.stat(path)
                version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                version = None
            if path in self._versions and version == self._versions[path]:
                continue  # unchanged (or the same bad or missing version: logged already)
            self._versions[path] = version
            try:
                with open(path, encoding="utf-8") as file:
                    networks = parse_list(file.read(), path)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self.reloads[("failed",)] += 1
                kept = len(self._contents.get(path, ()))
                log.error("IP reputation list %s not loaded, keeping its last good contents (%d entries): %s",
                          path, kept, exc)
                continue
            self._contents[path] = networks
            self.reloads[("ok",)] += 1
            changed = True
        if changed:
            self.ranges = Ranges([network for networks in self._contents.values() for network in networks])
        return changed
