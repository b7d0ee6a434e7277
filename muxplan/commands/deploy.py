"""`muxplan deploy` and `muxplan status`."""
from __future__ import annotations


def deploy() -> None:
    """Start the serving processes of a plan behind one OpenAI-compatible endpoint."""
    raise NotImplementedError("muxplan deploy is being built (issue 7)")


def status() -> None:
    """Show the processes of a running deployment."""
    raise NotImplementedError("muxplan status is being built (issue 7)")
