"""The one place that picks the compiled helpers or their pure-Python twins.

The pure twin is bound first; the compiled module replaces it unless it is not
built or ``SLUICE_NO_EXTENSIONS=1`` is set.  ``IMPLEMENTATION`` says which won.
"""

from __future__ import annotations

import os

from ._pure import RequestIds, valid_request_id

__all__ = ["IMPLEMENTATION", "RequestIds", "valid_request_id"]

IMPLEMENTATION = "pure"

if os.environ.get("SLUICE_NO_EXTENSIONS") != "1":
    try:
        from ._speedups import RequestIds, valid_request_id  # type: ignore[assignment]
    except ImportError:  # not built: the pure twins serve
        pass
    else:
        IMPLEMENTATION = "compiled"
