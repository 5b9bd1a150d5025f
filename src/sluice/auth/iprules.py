"""The caller's address, and allow/deny lists of networks over it.

``ClientIp`` is the one function that says who is calling, shared by the rate
limits (scope ip) and the auth stage (IP rules): the peer address, or, when the
peer is a trusted proxy (``ratelimit.trusted_proxies``), the right-most hop of
``X-Forwarded-For`` that is not itself trusted.  All X-Forwarded-For lines are
read, joined in order: a proxy that appends a line of its own (HAProxy's
``option forwardfor``) rather than extending the caller's puts the address it
vouches for last, and the caller's own (forgeable) line first.

``IpRules`` holds allow and deny networks (IPv4 and IPv6, CIDR): an address in a
deny network is refused, whatever the allow list says; with an allow list, an
address outside all of its networks is refused too.  IPv4-mapped IPv6
addresses (``::ffff:10.0.0.1``) are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import Exchange

__all__ = ["ClientIp", "IpRules", "Network", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs as networks (host bits allowed: "10.1.2.3/8" is 10.0.0.0/8); ValueError on a bad one."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientIp:
    """``client_ip(ex)``: the caller's address as text (see the module docstring)."""

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._trusted = parse_networks(trusted_proxies)

    def __call__(self, ex: Exchange) -> str:
        peer = ex.client.rsplit(":", 1)[0].strip("[]")  # "1.2.3.4:5678" or "[::1]:5678"
        if not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = ",".join(ex.header_all("x-forwarded-for"))
        if not forwarded:
            return peer
        for hop in reversed([h.strip() for h in forwarded.split(",")]):
            if not self._is_trusted(hop):
                return hop
        return peer

    def _is_trusted(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in network for network in self._trusted)


class IpRules:
    """Allow and deny networks; ``allows(ip)`` says whether an address may call (an unparsable one may not)."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: Sequence[Network] = (), deny: Sequence[Network] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def allows(self, ip: str) -> bool:
        address = _address(ip)
        if address is None:
            return False
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)
