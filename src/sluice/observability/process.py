"""What this worker process uses: resident memory and file descriptors, read from /proc.

Read once a second for the metrics snapshot and on /health/details, never per
request.  Where /proc is missing (not Linux) the fields are left out.
"""

from __future__ import annotations

import os
import resource

__all__ = ["process_usage"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_usage() -> dict[str, float]:
    """{"rss_bytes", "open_fds", "max_fds"}, as far as this platform tells."""
    usage: dict[str, float] = {}
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit != resource.RLIM_INFINITY:
        usage["max_fds"] = float(soft_limit)
    try:
        with open("/proc/self/statm", "rb") as statm:
            usage["rss_bytes"] = float(int(statm.read().split()[1]) * _PAGE_SIZE)
        usage["open_fds"] = float(len(os.listdir("/proc/self/fd")))
    except (OSError, ValueError, IndexError):
        pass
    return usage
