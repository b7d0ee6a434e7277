"""The one latency interface every planner, simulator and report uses.

Implementations (issue 3): a measured-profile table with log-log interpolation, and an analytic
roofline calibrated per GPU type. Latencies are for one forward pass of a model running with tensor
parallelism ``tp`` on ``sm_pct`` percent of each GPU's SMs.
"""
from __future__ import annotations

from typing import Protocol

from muxplan.schema import GpuSpec, ModelSpec


class CostModel(Protocol):
    def prefill_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, prompt_tokens: int) -> float:
        """Latency of one prefill pass over ``batch`` prompts of ``prompt_tokens`` tokens each."""
        ...

    def decode_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, context_tokens: int) -> float:
        """Latency of one decode step for ``batch`` sequences holding ``context_tokens`` tokens of KV each."""
        ...
