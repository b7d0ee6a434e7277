"""Resumable profiling loop: the mechanism shared by every measuring backend (engine, vLLM).

A backend supplies a :class:`LatencyProbe`; this module walks the grid, skips points already in a
partial output file, and saves the profile atomically after every point so an interrupted run resumes.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from muxplan.files import load_contract, save_contract
from muxplan.schema import Profile, ProfilePoint


@dataclass(frozen=True)
class ProfileRequest:
    model: str
    gpu: str
    tp: int = 1
    sm_pcts: tuple[int, ...] = (100,)
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    prefill_tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    context_tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    max_prefill_tokens: int = 16384  # skip prefill points whose batch x tokens exceeds this
    repeats: int = 5
    warmup: int = 2


@dataclass
class ProbeInfo:
    engine: str
    engine_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    driver: str = ""
    dtype: str = "bfloat16"
    sm_mechanism: str = "none"
    extra: dict = field(default_factory=dict)


class LatencyProbe(Protocol):
    """Measures one point; returns the median latency in milliseconds over ``repeats`` after ``warmup``,
    or None where the point does not fit the backend (it is then left out of the profile)."""

    info: ProbeInfo

    def prefill_ms(self, sm_pct: int, batch: int, prompt_tokens: int, repeats: int, warmup: int) -> float | None: ...

    def decode_ms(self, sm_pct: int, batch: int, context_tokens: int, repeats: int, warmup: int) -> float | None: ...


def grid(req: ProfileRequest) -> list[tuple[str, int, int, int]]:
    """Every (phase, sm_pct, batch, tokens) point of the request, in measuring order."""
    points = []
    for sm in req.sm_pcts:
        for b in req.batches:
            points += [("prefill", sm, b, t) for t in req.prefill_tokens if b * t <= req.max_prefill_tokens]
            points += [("decode", sm, b, t) for t in req.context_tokens]
    return points


def run_profile(
    req: ProfileRequest,
    probe: LatencyProbe,
    out: str | Path,
    on_point: Callable[[int, int], None] | None = None,
) -> Profile:
    """Measure every grid point not yet in ``out`` and save after each; returns the full profile."""
    out = Path(out)
    done: dict[tuple, ProfilePoint] = {}
    if out.exists():
        previous = load_contract(out, Profile)
        done = {(p.phase, p.sm_pct, p.batch, p.tokens): p for p in previous.points if p.tp == req.tp}
    todo = grid(req)
    points = [done[k] for k in todo if k in done]
    for i, key in enumerate(todo):
        if key not in done:
            phase, sm, batch, tokens = key
            measure = probe.prefill_ms if phase == "prefill" else probe.decode_ms
            ms = measure(sm, batch, tokens, req.repeats, req.warmup)
            if ms is None:  # the backend cannot hold this point (e.g. its KV memory); not recorded
                continue
            points.append(ProfilePoint(phase=phase, tp=req.tp, sm_pct=sm, batch=batch, tokens=tokens, latency_ms=ms))
            save_contract(out, _profile(req, probe.info, points))
        if on_point:
            on_point(i + 1, len(todo))
    profile = _profile(req, probe.info, points)
    save_contract(out, profile)
    return profile


def _profile(req: ProfileRequest, info: ProbeInfo, points: list[ProfilePoint]) -> Profile:
    return Profile(
        gpu=req.gpu, model=req.model, dtype=info.dtype, engine=info.engine, engine_version=info.engine_version,
        torch_version=info.torch_version, cuda_version=info.cuda_version, driver=info.driver,
        sm_mechanism=info.sm_mechanism, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        points=sorted(points, key=lambda p: (p.phase, p.sm_pct, p.batch, p.tokens)),
    )
