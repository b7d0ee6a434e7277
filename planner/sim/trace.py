"""Requests of one simulation run as flat columns (Python lists are faster than numpy for scalar access)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from muxplan.files import InputError
from muxplan.schema import TraceRow, Workload


@dataclass(frozen=True)
class RequestTable:
    """Requests sorted by arrival; ``model`` indexes ``model_names`` (the workload's order)."""

    model_names: tuple[str, ...]
    arrival_s: np.ndarray
    model: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    @property
    def num_requests(self) -> int:
        return int(self.arrival_s.size)

    def rescaled(self, rate_scale: float) -> "RequestTable":
        """The same requests arriving ``rate_scale`` times faster (arrival times divided by the scale)."""
        if rate_scale <= 0:
            raise InputError(f"rate_scale: must be > 0, got {rate_scale}")
        return RequestTable(self.model_names, self.arrival_s / rate_scale, self.model, self.prompt_tokens, self.output_tokens)


def workload_rows(workload: Workload) -> list[TraceRow]:
    """The workload's materialised requests, or requests drawn from its specs (deterministic in its seed)."""
    if workload.requests is not None:
        return list(workload.requests)
    from muxplan.workload import materialise_requests

    return materialise_requests(workload)


def build_request_table(workload: Workload, rows: list[TraceRow] | None = None) -> RequestTable:
    """Columns of the requests, stably sorted by arrival time; every row must name a workload model."""
    rows = workload_rows(workload) if rows is None else rows
    names = tuple(m.name for m in workload.models)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({r.model for r in rows} - set(index))
    if unknown:
        raise InputError(f"requests[].model: '{unknown[0]}' is not a model of workload '{workload.name}'")
    arrival = np.fromiter((r.arrival_s for r in rows), dtype=np.float64, count=len(rows))
    order = np.argsort(arrival, kind="stable")
    model = np.fromiter((index[r.model] for r in rows), dtype=np.int64, count=len(rows))[order]
    prompt = np.fromiter((r.prompt_tokens for r in rows), dtype=np.int64, count=len(rows))[order]
    output = np.fromiter((r.output_tokens for r in rows), dtype=np.int64, count=len(rows))[order]
    return RequestTable(names, arrival[order], model, prompt, output)
