"""Where the gateway's own outbound URLs may point (SSRF at config load; docs/security.md).

Every URL the gateway calls on its own (providers' base URLs, OIDC issuers and JWKS, introspection endpoints,
the OTLP trace exporter) is checked when the config loads: a host that is, or resolves to, an address that
is not public (private, loopback, link-local with the cloud metadata address 169.254.169.254, unique-local,
carrier-grade NAT, unspecified, multicast, reserved) is refused unless ``security.allow_private_networks``
names a network holding it.  The default allows loopback only, so the quickstart's mock upstream on
127.0.0.1 works while a config (or a template filled from the environment) cannot aim the gateway at the
metadata service or an internal host by mistake.

A host name is resolved once, when a config file is loaded (load_config; parse_config checks literal
addresses only), all names together, bounded by RESOLVE_TIMEOUT_S: a name that does not
resolve then (no DNS at start) is let through and fails at connect like any unreachable upstream.  A name
resolved again later may answer otherwise (DNS rebinding): the check is at load, not on each connection.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["RESOLVE_TIMEOUT_S", "check_outbound_urls", "parse_networks", "refused_address"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT_S = 2.0  # all the config's host names together; a slow resolver must not hold the start

# Names that mean this host whatever the resolver says (RFC 6761), checked without asking it.
_LOCAL_NAMES = ("localhost", "localhost.")


def parse_networks(path: str, cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    networks = []
    for i, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"{path}[{i}]", f"not an IP network (CIDR): {cidr!r}") from None
    return tuple(networks)


def _kind(address: IPAddress) -> str | None:
    """Why an address is not public (None: it is), in words for the error."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _kind(address.ipv4_mapped)  # ::ffff:169.254.169.254 is the metadata service too
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives at 169.254.169.254)"
    if address.is_multicast:
        return "multicast"
    if address.is_private or not address.is_global:  # RFC 1918, unique-local, CGNAT, documentation, reserved
        return "private"
    return None


def refused_address(address: IPAddress, allowed: Iterable[IPNetwork]) -> str | None:
    """Why the gateway may not call ``address`` (None: it may): not public and in no allowed network."""
    kind = _kind(address)
    if kind is None:
        return None
    plain = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
    if any(plain in network or address in network for network in allowed):
        return None
    return kind


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # a zone id (fe80::1%eth0) names the same address
    except ValueError:
        return None


def _resolve(host: str) -> list[IPAddress]:
    addresses = []
    for *_, sockaddr in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
        address = _literal(str(sockaddr[0]))
        if address is not None:
            addresses.append(address)
    return addresses


def check_outbound_urls(urls: Sequence[tuple[str, str]], allowed: Sequence[IPNetwork], *, resolve: bool) -> None:
    """Refuse the first (config path, URL) whose host is (or, with ``resolve``, resolves to) a non-public
    address outside ``allowed``.  The URLs are already known well-formed (loader._check_base_url)."""
    names: dict[str, list[str]] = {}
    for path, url in urls:
        host = urlsplit(url).hostname or ""
        address = _literal(host)
        if address is None and host.lower() in _LOCAL_NAMES:
            address = ipaddress.ip_address("127.0.0.1")
        if address is not None:
            _refuse(path, url, address, allowed)
        else:
            names.setdefault(host, []).append(path)
    if not names or not resolve:
        return
    urls_by_path = dict(urls)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="sluice-dns")
    try:
        futures = {pool.submit(_resolve, host): host for host in names}
        done, _ = concurrent.futures.wait(futures, timeout=RESOLVE_TIMEOUT_S)
        for future in done:
            if future.exception() is not None:
                continue  # does not resolve now: it fails at connect like any unreachable upstream
            for address in future.result():
                for path in names[futures[future]]:
                    _refuse(path, urls_by_path[path], address, allowed)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a resolver still stuck is not waited for


def _refuse(path: str, url: str, address: IPAddress, allowed: Sequence[IPNetwork]) -> None:
    kind = refused_address(address, allowed)
    if kind is not None:
        raise ConfigError(path, f"{url!r} points at {address}, a {kind} address; the gateway calls such "
                                f"addresses only inside security.allow_private_networks (now: "
                                f"{', '.join(map(str, allowed)) or 'none'})")
