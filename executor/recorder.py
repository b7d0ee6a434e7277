"""Served traffic as a muxplan trace (`muxplan deploy --record DIR`), and the observed rate per model for /metrics.

Each finished request (status 200, usage known) becomes a row (arrival_s, model, prompt_tokens, output_tokens); no
prompt text is kept. Rows go to segments DIR/trace-NNNN.json, each a complete workload file (the plan's model refs,
rates and empirical lengths measured from the rows, and the rows with arrivals in seconds from the segment's start),
so `muxplan workload show`, `solve --workload`, `simulate --workload` and `replan --workload` read a segment as it is,
local model folders included (a plain CSV trace could only name catalog models). A segment is rewritten every
``flush_s`` on a thread of its own (temp file, then rename: a reader never sees half a file) and closed once it holds
``max_rows`` rows or is ``max_age_s`` old; the next one starts then. Off by default.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

OBSERVED_WINDOW_S = 60.0  # the observed rate is the requests finished in the last minute (or since the start)


@dataclass(frozen=True)
class Row:
    arrival_s: float  # perf_counter at arrival
    model: str
    prompt_tokens: int
    output_tokens: int


def usage_tokens(data: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from a JSON response body, or from the last SSE event of a stream that carries
    ``usage`` (the client asked for stream_options.include_usage), or None."""
    text = data.decode("utf-8", "replace")
    candidates = [text] if not text.lstrip().startswith("data:") else \
        [line[5:] for line in reversed(text.splitlines()) if line.startswith("data:") and '"usage"' in line]
    for candidate in candidates:
        try:
            usage = json.loads(candidate).get("usage") or {}
        except (ValueError, AttributeError):
            continue
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and isinstance(c, int):
            return p, c
    return None


class ObservedRates:
    """Finished requests per model over the last OBSERVED_WINDOW_S seconds."""

    def __init__(self, models, clock=time.perf_counter):
        self.clock, self.start = clock, clock()
        self.times = {m: deque() for m in models}

    def note(self, model: str) -> None:
        if model in self.times:
            self.times[model].append(self.clock())

    def rates(self) -> dict[str, float]:
        now = self.clock()
        window = max(1e-9, min(OBSERVED_WINDOW_S, now - self.start))
        out = {}
        for model, q in self.times.items():
            while q and q[0] < now - OBSERVED_WINDOW_S:
                q.popleft()
            out[model] = len(q) / window
        return out


class TraceRecorder:
    def __init__(self, folder: Path, model_refs: dict[str, str], max_rows: int = 100_000, max_age_s: float = 3600.0,
                 flush_s: float = 2.0, clock=time.perf_counter):
        self.folder, self.refs = Path(folder), dict(model_refs)
        self.max_rows, self.max_age_s, self.flush_s, self.clock = max_rows, max_age_s, flush_s, clock
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = len(list(self.folder.glob("trace-*.json")))  # resume numbering after a restart, never overwrite
        self.rows: list[Row] = []
        self.started = clock()
        self.lock = threading.Lock()
        self.dirty = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="trace-recorder", daemon=True)
        self.thread.start()

    def record(self, model: str, arrival: float, prompt_tokens: int, output_tokens: int) -> None:
        if prompt_tokens < 1 or output_tokens < 1 or model not in self.refs:
            return
        with self.lock:
            self.rows.append(Row(arrival, model, prompt_tokens, output_tokens))
            self.dirty = True
            full = len(self.rows) >= self.max_rows
        if full:
            self.rotate()

    def rotate(self) -> None:
        with self.lock:
            rows, self.rows, started = self.rows, [], self.started
            self.started, self.dirty = self.clock(), False
            index = self.index
            if rows:
                self.index += 1
        if rows:
            self._write(index, rows, started)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.rotate()

    def _loop(self) -> None:
        while not self.stopped.wait(self.flush_s):
            if self.clock() - self.started >= self.max_age_s:
                self.rotate()
                continue
            with self.lock:
                rows, started, index, dirty = list(self.rows), self.started, self.index, self.dirty
                self.dirty = False
            if dirty and rows:
                self._write(index, rows, started)

    def _write(self, index: int, rows: list[Row], started: float) -> None:
        from muxplan.files import save_contract

        save_contract(self.folder / f"trace-{index:04d}.json", segment_workload(rows, started, self.refs, index))


def segment_workload(rows: list[Row], started: float, refs: dict[str, str], index: int = 0):
    """The rows as a Workload: arrivals from the segment's start (first row at >= 0), rates and lengths measured."""
    import numpy as np

    from muxplan.measured import empirical
    from muxplan.schema import TraceRow, Workload, WorkloadModel

    rows = sorted(rows, key=lambda r: r.arrival_s)
    first = min(started, rows[0].arrival_s)
    span = max(1e-3, rows[-1].arrival_s - first)
    models = []
    for name, ref in refs.items():
        mine = [r for r in rows if r.model == name]
        extra = {}
        if mine:
            extra = {"prompt_tokens": empirical(np.array([r.prompt_tokens for r in mine])),
                     "output_tokens": empirical(np.array([r.output_tokens for r in mine]))}
        models.append(WorkloadModel(name=name, model=ref, rate_rps=len(mine) / span, **extra))
    requests = [TraceRow(arrival_s=round(r.arrival_s - first, 6), model=r.model, prompt_tokens=r.prompt_tokens,
                         output_tokens=r.output_tokens) for r in rows]
    return Workload(name=f"recorded-{index:04d}", duration_s=span, models=models, requests=requests,
                    source=f"muxplan deploy --record: segment {index}, {len(rows)} requests served")


def finished(state, model: str, arrival: float, data: bytes, status: int) -> None:
    """The router's hook, once per relayed response: the observed rate, and a trace row when recording."""
    if status != 200:
        return
    observed = getattr(state, "observed", None)
    if observed is not None:
        observed.note(model)
    recorder = getattr(state, "recorder", None)
    if recorder is not None:
        tokens = usage_tokens(data)
        if tokens is not None:
            recorder.record(model, arrival, *tokens)


_GAUGES: dict[int, object] = {}


def export_rates(state, registry) -> None:
    """Set muxplan_router_observed_rps per model (beside muxplan_plan_predicted_rps, the plan's rate) before a scrape."""
    observed = getattr(state, "observed", None)
    if observed is None:
        return
    gauge = _GAUGES.get(id(registry))
    if gauge is None:
        from prometheus_client import Gauge

        gauge = _GAUGES[id(registry)] = Gauge("muxplan_router_observed_rps", "Requests per second served over the last minute",
                                              ["model"], registry=registry)
    for model, rps in observed.rates().items():
        gauge.labels(model).set(rps)
