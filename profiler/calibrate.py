"""Fit roofline parameters to measured profiles and report errors.

Least squares on log latency (scipy.optimize.least_squares, bounded, soft_l1 loss) over the
measured points with batch <= ``max_batch``; the reported error is MAPE = mean |pred - meas| / meas.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from muxplan.catalog import get_gpu, get_model
from muxplan.files import InputError
from muxplan.schema import Profile
from profiler.roofline import RooflineCostModel, RooflineParams

FIT_FIELDS = ("compute_eff", "bw_eff", "bw_saturation", "prefill_overhead_ms", "decode_overhead_ms",
              "allreduce_latency_ms", "multi_gpu_overhead_ms", "link_eff", "overlap_k")
LOWER = (0.05, 0.05, 0.1, 0.0, 0.0, 0.0, 0.0, 0.01, 1.0)
UPPER = (1.2, 1.2, 1.0, 30.0, 30.0, 1.0, 30.0, 1.2, 20.0)


@dataclass(frozen=True)
class ErrorRow:
    group: str  # e.g. "decode tp=1" or "prefill sm=50"
    num_points: int
    mape_pct: float
    max_ape_pct: float


def _points(profiles: list[Profile], max_batch: int):
    rows = []
    for prof in profiles:
        try:
            model, gpu = get_model(prof.model), get_gpu(prof.gpu)
        except InputError as exc:
            raise InputError(f"profile {prof.model}/{prof.gpu}: {exc}") from None
        rows += [(model, gpu, p) for p in prof.points if p.batch <= max_batch]
    if not rows:
        raise InputError(f"no profile points with batch <= {max_batch}")
    return rows


def predict(params: RooflineParams, rows) -> np.ndarray:
    cm = RooflineCostModel(params)
    fn = {"prefill": cm.prefill_ms, "decode": cm.decode_ms}
    return np.array([fn[p.phase](m, g, p.tp, p.sm_pct, p.batch, p.tokens) for m, g, p in rows])


def fit(profiles: list[Profile], gpu: str, max_batch: int = 256) -> RooflineParams:
    from scipy.optimize import least_squares

    rows = _points(profiles, max_batch)
    measured = np.log([p.latency_ms for _, _, p in rows])
    start = RooflineParams(gpu=gpu)

    def residuals(x: np.ndarray) -> np.ndarray:
        params = start.model_copy(update=dict(zip(FIT_FIELDS, map(float, x))))
        return np.log(predict(params, rows)) - measured

    x0 = [getattr(start, f) for f in FIT_FIELDS]
    result = least_squares(residuals, x0, bounds=(LOWER, UPPER), loss="soft_l1", f_scale=0.1, max_nfev=400)
    models = sorted({p.model for p in profiles})
    return start.model_copy(update={**dict(zip(FIT_FIELDS, map(float, result.x))), "fitted_on": ", ".join(models)})


def error_table(params: RooflineParams, profiles: list[Profile], max_batch: int = 256) -> list[ErrorRow]:
    """MAPE per phase, per phase x TP, per phase x SM%, and per model x phase."""
    rows = _points(profiles, max_batch)
    ape = np.abs(predict(params, rows) / np.array([p.latency_ms for _, _, p in rows]) - 1) * 100
    groups: dict[str, list[float]] = defaultdict(list)
    for (m, _, p), e in zip(rows, ape):
        for key in (p.phase, f"{p.phase} tp={p.tp}", f"{p.phase} sm={p.sm_pct}", f"{p.phase} {m.name}"):
            groups[key].append(float(e))
    order = lambda k: (k.split()[0], len(k.split()), k.split()[-1].split("=")[0], int(k.split("=")[-1]) if "=" in k else 0, k)
    return [ErrorRow(k, len(v), float(np.mean(v)), float(np.max(v))) for k, v in sorted(groups.items(), key=lambda kv: order(kv[0]))]
