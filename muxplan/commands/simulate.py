"""`muxplan simulate`."""
from __future__ import annotations


def simulate() -> None:
    """Replay a plan on a trace and report SLO attainment and throughput."""
    raise NotImplementedError("muxplan simulate is being built (issue 5)")
