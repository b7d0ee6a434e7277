"""The one latency interface every planner, simulator and report uses.

Implementations: a measured-profile table with log-log interpolation, and an analytic
roofline calibrated per GPU type. Latencies are for one forward pass of a model running with tensor
parallelism ``tp`` on ``sm_pct`` percent of each GPU's SMs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from muxplan.schema import GpuSpec, ModelSpec


class CostModel(Protocol):
    def prefill_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, prompt_tokens: int) -> float:
        """Latency of one prefill pass over ``batch`` prompts of ``prompt_tokens`` tokens each."""
        ...

    def decode_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, context_tokens: int) -> float:
        """Latency of one decode step for ``batch`` sequences holding ``context_tokens`` tokens of KV each."""
        ...


def load_cost_model(profile: str | Path | None = None, params: str | Path | None = None, extrapolate: bool = True) -> CostModel:
    """The cost model every command uses.

    - ``profile`` (a profile file, a directory of them, or a reference-format file): measured tables,
      interpolated; (model, GPU) pairs that were not profiled fall back to the analytic roofline.
    - otherwise the analytic roofline with ``params`` (a fitted params JSON) or, per GPU type, the
      parameters shipped in ``profiler/params/<GPU>.json`` (defaults for GPUs never calibrated).
    """
    from muxplan.files import load_contract
    from profiler.roofline import RooflineCostModel, RooflineParams

    roofline = RooflineCostModel(load_contract(params, RooflineParams) if params else None)
    if profile is None:
        return roofline
    from profiler.table import TableCostModel, load_profiles

    return TableCostModel(load_profiles(profile), extrapolate=extrapolate, fallback=roofline)
