"""Whether an address can be listened on, asked before Granian starts.

Granian binds in its Rust code, where a taken port ends in a Python traceback and a Rust backtrace; asking
first turns that into one line naming the address.  Another process may still take the port between the
question and Granian's bind: that rare race keeps Granian's own error.
"""

from __future__ import annotations

import errno
import os
import socket

__all__ = ["listen_problem"]

_REASONS = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied (a port below 1024?)",
            errno.EADDRNOTAVAIL: "no such address on this host"}


def listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (one line: "cannot listen on 127.0.0.1:8080: address already in
    use"), or None when it can.  Port 0 (any free port) is always fine."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot listen on {shown}: {getattr(exc, 'strerror', None) or exc}"
    if port == 0:
        return None
    with socket.socket(family, kind, proto) as probe:
        # As a server binds (Granian too): a port whose last connections linger in TIME_WAIT is free.  A port
        # some socket listens on is not, SO_REUSEADDR or not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = _REASONS.get(exc.errno or 0) or os.strerror(exc.errno or 0).lower()
            return f"cannot listen on {shown}: {reason}"
    return None
