"""Analytic roofline latency model from architecture numbers and GPU datasheet values.

For one pass on one GPU of a tensor-parallel mesh of ``tp`` GPUs at SM share s = sm_pct/100:

    compute_s = FLOPs / tp / (peak_flops * compute_eff * s)                (compute scales with SMs)
    memory_s  = bytes / tp / (hbm_bw * bw_eff * min(1, s / bw_saturation)) (bandwidth saturates early)
    comm_s    = 2 * layers * (allreduce_latency + 2 (tp-1)/tp * tokens * hidden * elem / (link_bw * link_eff))  if tp > 1
    latency   = overhead + (compute_s^k + memory_s^k)^(1/k) + comm_s

with k = ``overlap_k`` (a soft maximum: k -> inf is the hard roofline max). Prefill FLOPs count every
prompt token with causal attention over half its prompt; decode counts one token per sequence with
attention over the whole context, and reads the KV cache of every sequence besides the weights.
The parameters (efficiencies, saturation, overheads) are fitted per GPU type by
:mod:`profiler.calibrate`; defaults are sane for GPUs never measured.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from muxplan.catalog import flops_per_token, kv_bytes_per_token, weight_bytes
from muxplan.schema import DTYPE_BYTES, GpuSpec, ModelSpec

PARAMS_DIR = Path(__file__).parent / "params"


class RooflineParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    gpu: str = ""
    compute_eff: float = Field(default=0.6, gt=0, le=1.5)
    bw_eff: float = Field(default=0.75, gt=0, le=1.5)
    bw_saturation: float = Field(default=0.45, gt=0.05, le=1.0, description="SM fraction at which HBM bandwidth saturates")
    prefill_overhead_ms: float = Field(default=4.0, ge=0)
    decode_overhead_ms: float = Field(default=3.0, ge=0)
    allreduce_latency_ms: float = Field(default=0.03, ge=0)
    multi_gpu_overhead_ms: float = Field(default=1.0, ge=0, description="fixed per-step cost of a mesh (tp > 1)")
    link_eff: float = Field(default=0.5, gt=0, le=1.5)
    overlap_k: float = Field(default=4.0, ge=1, le=50)
    fitted_on: str = ""


@lru_cache(maxsize=None)
def shipped_params(gpu_name: str) -> RooflineParams:
    """Fitted parameters shipped for a GPU type, or the defaults when it was never calibrated."""
    path = PARAMS_DIR / f"{gpu_name}.json"
    if path.is_file():
        from muxplan.files import load_contract

        return load_contract(path, RooflineParams)
    return RooflineParams(gpu=gpu_name)


def _combine(p: RooflineParams, compute_s: float, memory_s: float) -> float:
    k = p.overlap_k
    return (compute_s**k + memory_s**k) ** (1.0 / k)


def _comm_s(p: RooflineParams, m: ModelSpec, gpu: GpuSpec, tp: int, tokens: int) -> float:
    if tp == 1:
        return 0.0
    msg_bytes = tokens * m.hidden_size * DTYPE_BYTES[m.dtype]
    ring_s = 2 * (tp - 1) / tp * msg_bytes / (gpu.link_bytes_per_s * p.link_eff)
    return p.multi_gpu_overhead_ms / 1e3 + 2 * m.num_layers * (p.allreduce_latency_ms / 1e3 + ring_s)


def _bw_fraction(p: RooflineParams, sm_pct: float) -> float:
    return min(1.0, sm_pct / 100.0 / p.bw_saturation)


class RooflineCostModel:
    """CostModel from the roofline above, with parameters per GPU type (shipped, or given)."""

    def __init__(self, params: RooflineParams | None = None):
        self.params = params

    def params_for(self, gpu: GpuSpec) -> RooflineParams:
        return self.params if self.params is not None else shipped_params(gpu.name)

    def prefill_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, prompt_tokens: int) -> float:
        p = self.params_for(gpu)
        tokens = batch * prompt_tokens
        flops = tokens * flops_per_token(model, context_tokens=prompt_tokens // 2)
        compute_s = flops / tp / (gpu.peak_bf16_flops * p.compute_eff * sm_pct / 100.0)
        memory_s = weight_bytes(model) / tp / (gpu.hbm_bytes_per_s * p.bw_eff * _bw_fraction(p, sm_pct))
        total_s = _combine(p, compute_s, memory_s) + _comm_s(p, model, gpu, tp, tokens)
        return p.prefill_overhead_ms + 1e3 * total_s

    def decode_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, context_tokens: int) -> float:
        p = self.params_for(gpu)
        flops = batch * flops_per_token(model, context_tokens=context_tokens)
        kv_read = batch * context_tokens * kv_bytes_per_token(model)
        compute_s = flops / tp / (gpu.peak_bf16_flops * p.compute_eff * sm_pct / 100.0)
        memory_s = (weight_bytes(model) + kv_read) / tp / (gpu.hbm_bytes_per_s * p.bw_eff * _bw_fraction(p, sm_pct))
        total_s = _combine(p, compute_s, memory_s) + _comm_s(p, model, gpu, tp, batch)
        return p.decode_overhead_ms + 1e3 * total_s
