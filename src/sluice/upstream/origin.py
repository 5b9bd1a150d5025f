"""An upstream origin (scheme, host, port) with its TLS context, parsed once from a base URL."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Origin", "parse_base_url"]


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    ssl: ssl.SSLContext | None
    key: str  # "https://host:port": the pool's name
    host_header: str  # what goes in the Host header


def parse_base_url(url: str, *, verify_tls: bool = True, ca_file: str | None = None) -> tuple[Origin, str]:
    """Splits a base URL into its origin and its path prefix (without a trailing slash)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    context = None
    if scheme == "https":
        context = ssl.create_default_context(cafile=ca_file)
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    origin = Origin(scheme, host, port, context, f"{scheme}://{shown_host}:{port}", host_header)
    return origin, parts.path.rstrip("/")
