"""`muxplan solve`."""
from __future__ import annotations


def solve() -> None:
    """Compute a placement plan for a workload on a cluster."""
    raise NotImplementedError("muxplan solve is being built (issue 4)")
