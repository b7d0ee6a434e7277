"""File contracts: every file muxplan reads or writes is one of these pydantic models.

Each top-level file carries ``schema_version``; nested records do not. Files are loaded and
saved only through :mod:`muxplan.files`, which turns validation errors into one line per
problem naming the file and the field path.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
MAX_TOKENS = 1 << 20
"""Largest prompt/output length any file may carry (far beyond any model's context; bounds the work a file can ask for)."""
MAX_TIME_S = 1e8
"""Latest arrival and longest duration in seconds (~3 years): later ones are typos or unit mistakes."""
MAX_RATE_RPS = 1e6
"""Highest request rate per model a workload may declare."""

Dtype = Literal["float32", "bfloat16", "float16", "fp8"]
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}


class Record(BaseModel):
    """A frozen record with unknown fields rejected (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Contract(Record):
    schema_version: Literal[1] = SCHEMA_VERSION


# ---------------------------------------------------------------- models and GPUs
class ModelSpec(Record):
    """Architecture numbers of a decoder-only transformer; derived sizes live in muxplan.catalog."""

    name: str = Field(min_length=1)
    family: Literal["llama", "mistral", "qwen2", "mixtral"] = "llama"
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    dtype: Dtype = "bfloat16"
    tie_embeddings: bool = False
    attention_bias: bool = False
    num_experts: int = Field(default=0, ge=0, description="0 for a dense MLP")
    num_experts_per_token: int = Field(default=0, ge=0)
    max_position_embeddings: int = Field(default=4096, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: dict[str, float | str] | None = None
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    published_params: int | None = Field(default=None, gt=0, description="vendor's parameter count")

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.num_experts and not 0 < self.num_experts_per_token <= self.num_experts:
            raise ValueError("num_experts_per_token must be in 1..num_experts for an MoE model")
        return self


class ModelCatalogFile(Contract):
    """Model catalog: architecture numbers of decoder-only models."""

    models: list[ModelSpec]


class GpuSpec(Record):
    """Datasheet numbers of one GPU; measured values override them."""

    name: str = Field(min_length=1)
    memory_bytes: int = Field(gt=0)
    num_sms: int = Field(gt=0)
    peak_bf16_flops: float = Field(gt=0, description="dense bf16 tensor FLOP/s")
    hbm_bytes_per_s: float = Field(gt=0)
    link_bytes_per_s: float = Field(gt=0, description="intra-node GPU-GPU bandwidth, datasheet total")


class GpuCatalogFile(Contract):
    """GPU catalog: datasheet numbers per GPU type."""

    gpus: list[GpuSpec]


# ---------------------------------------------------------------- cluster
class NodeSpec(Record):
    name: str = ""
    gpu: str = Field(min_length=1, description="GPU catalog name")
    num_gpus: int = Field(gt=0, le=64)


class Cluster(Contract):
    """Cluster: nodes, each with a GPU type and count (or the shorthand 4x8xA100-80GB)."""

    nodes: list[NodeSpec] = Field(min_length=1)
    gpus: list[GpuSpec] = Field(default_factory=list, description="GPU specs overriding the catalog")

    @property
    def num_gpus(self) -> int:
        return sum(node.num_gpus for node in self.nodes)


# ---------------------------------------------------------------- workload and traces
class LengthDist(Record):
    """Token-length distribution: fixed, lognormal by mean and sigma, uniform, or resampled values."""

    kind: Literal["fixed", "lognormal", "uniform", "empirical"] = "lognormal"
    mean: float = Field(default=256.0, gt=0)
    sigma: float = Field(default=0.8, ge=0, description="lognormal shape")
    low: int = Field(default=1, ge=1)
    high: int = Field(default=4096, ge=1)
    values: list[int] = Field(default_factory=list, description="samples for kind=empirical")

    @model_validator(mode="after")
    def _check(self) -> "LengthDist":
        if self.low > self.high:
            raise ValueError("low must be <= high")
        if self.kind == "empirical" and not self.values:
            raise ValueError("kind=empirical needs values")
        return self


class Slo(Record):
    """Latency targets: absolute TTFT/TPOT, or a scale over the isolated (batch 1) latency."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    scale: float = Field(default=5.0, gt=0)


class WorkloadModel(Record):
    name: str = Field(min_length=1, description="served model name (unique in the workload)")
    model: str = Field(min_length=1, description="catalog name or path to a Hugging Face config.json")
    rate_rps: float = Field(ge=0)
    prompt_tokens: LengthDist = LengthDist(mean=161)
    output_tokens: LengthDist = LengthDist(mean=338)
    slo: Slo = Slo()


class TraceRow(Record):
    arrival_s: float = Field(ge=0, le=MAX_TIME_S, allow_inf_nan=False)
    model: str = Field(min_length=1)
    prompt_tokens: int = Field(ge=1, le=MAX_TOKENS)
    output_tokens: int = Field(ge=1, le=MAX_TOKENS)


class Arrivals(Record):
    process: Literal["poisson", "gamma"] = "poisson"
    cv: float = Field(default=1.0, gt=0, description="coefficient of variation of inter-arrival times")


class Workload(Contract):
    """Workload: per served model a rate, length distributions and an SLO; optionally the materialised requests."""

    name: str = "workload"
    duration_s: float = Field(default=240.0, gt=0)
    seed: int = Field(default=0, ge=0)
    arrivals: Arrivals = Arrivals()
    models: list[WorkloadModel] = Field(min_length=1)
    requests: list[TraceRow] | None = Field(default=None, description="materialised trace, if any")
    source: str = Field(default="", description="how it was made (generator, trace file, attribution)")

    @model_validator(mode="after")
    def _check_names(self) -> "Workload":
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate model names: {', '.join(dup)}")
        if self.requests is not None:
            unknown = sorted({r.model for r in self.requests} - set(names))
            if unknown:
                raise ValueError(f"requests name models not in models: {', '.join(unknown[:5])}")
        return self


class Trace(Contract):
    """Trace: request rows (arrival_s, model, prompt_tokens, output_tokens); also CSV or JSONL."""

    requests: list[TraceRow]
    source: str = ""


# ---------------------------------------------------------------- profile
class ProfilePoint(Record):
    """One measurement: prefill of batch x tokens prompt tokens, or one decode step at context tokens."""

    phase: Literal["prefill", "decode"]
    tp: int = Field(ge=1)
    sm_pct: int = Field(gt=0, le=100)
    batch: int = Field(ge=1)
    tokens: int = Field(ge=1, description="prompt tokens per sequence (prefill) or context tokens (decode)")
    latency_ms: float = Field(gt=0)


class Profile(Contract):
    """Profile: measured prefill and decode latencies of one model on one GPU type."""

    gpu: str = Field(min_length=1)
    model: str = Field(min_length=1)
    dtype: Dtype = "bfloat16"
    engine: str = ""
    engine_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    driver: str = ""
    sm_mechanism: str = Field(default="", description="green-context, mps, or none (CPU)")
    created: str = ""
    points: list[ProfilePoint] = Field(min_length=1)


# ---------------------------------------------------------------- plan
class SolverRecord(Record):
    method: str
    objective: str
    value: float
    bound: float | None = None
    gap: float | None = Field(default=None, ge=0, description="(bound - value) / bound")
    status: str = ""
    seconds: float = Field(default=0.0, ge=0)
    seed: int = 0
    time_limit_s: float | None = None
    inputs_digest: str = ""
    headroom: float | None = Field(default=None, ge=0, description="largest common rate scale the plan serves within SLO")


class PlacedModel(Record):
    name: str = Field(description="workload model name")
    model: str = Field(description="catalog name or config path")
    tp: int = Field(ge=1)
    prefill_sm_pct: int = Field(gt=0, le=100)
    decode_sm_pct: int = Field(gt=0, le=100)
    kv_bytes: int = Field(ge=0, description="KV cache bytes per GPU of the unit")
    max_num_seqs: int = Field(ge=1, description="sequence quota (decode batch)")
    routing_share: float = Field(gt=0, le=1, description="fraction of the model's requests sent here")
    rate_rps: float = Field(ge=0, description="requests per second routed to this replica")
    predicted_rps: float = Field(ge=0)
    predicted_ttft_ms: list[float] | None = Field(default=None, description="predicted TTFT p50, p99")
    predicted_tpot_ms: list[float] | None = Field(default=None, description="predicted TPOT p50, p99")
    predicted_slo_attainment: float | None = Field(default=None, ge=0, le=1)


class Unit(Record):
    id: int = Field(ge=0)
    node: int = Field(ge=0)
    gpu: str
    gpu_ids: list[int] = Field(min_length=1)
    models: list[PlacedModel] = Field(min_length=1)
    predicted_rps: float = Field(ge=0)
    stall_share: float | None = Field(default=None, ge=0, description="share of time prefills and drains stall decodes")


class Unserved(Record):
    name: str
    demand_rps: float = Field(ge=0)
    served_rps: float = Field(ge=0)
    reason: str


class ModelCheck(Record):
    name: str
    predicted_rps: float
    simulated_rps: float
    predicted_slo_attainment: float | None = None
    simulated_slo_attainment: float


class SimCheck(Record):
    """The plan replayed by the simulator on its own workload, next to what the plan predicted."""

    policy: str
    slo_scale: float
    rounds: int = Field(default=1, ge=1, description="solve-simulate-correct rounds run")
    predicted_rps: float
    simulated_rps: float
    predicted_slo_attainment: float | None = None
    simulated_slo_attainment: float
    simulated_goodput_rps: float
    models: list[ModelCheck] = Field(default_factory=list)


class Considered(Record):
    method: str
    value: float
    served_rps: float
    num_gpus_used: int
    seconds: float
    gap: float | None = None
    chosen: bool = False
    simulated_slo_attainment: float | None = None
    simulated_goodput_rps: float | None = None
    predicted_max_rate_scale: float | None = None
    simulated_max_rate_scale: float | None = Field(default=None, description="highest rate scale simulated at 99% within SLO "
                                                   "(a coarse search: MAX_RATE_STEPS bisections)")
    max_rate_scale: float | None = Field(default=None, description="simulated highest rate scale with 99% within SLO")


class Plan(Contract):
    """Plan: the solver record, units (node, GPUs, models with SM shares and KV bytes) and unserved demand."""

    workload: str = ""
    cluster: Cluster
    cost_model: str = Field(default="", description="profile directory or analytic params used")
    solver: SolverRecord
    units: list[Unit]
    unserved: list[Unserved] = Field(default_factory=list)
    demand_rps: float = Field(ge=0)
    served_rps: float = Field(ge=0)
    num_gpus_used: int = Field(ge=0)
    considered: list[Considered] = Field(default_factory=list)
    predicted_slo_attainment: float | None = Field(default=None, ge=0, le=1)
    predicted_goodput_rps: float | None = Field(default=None, ge=0, description="req/s predicted to meet the SLO")
    predicted_max_rate_scale: float | None = Field(default=None, ge=0, description="largest rate scale (the workload's requests "
                                                   "replayed faster) the latency model predicts 99% within SLO at")
    check: SimCheck | None = None


CONTRACTS: dict[str, type[Contract]] = {
    "model-catalog": ModelCatalogFile,
    "gpu-catalog": GpuCatalogFile,
    "cluster": Cluster,
    "workload": Workload,
    "trace": Trace,
    "profile": Profile,
    "plan": Plan,
}
