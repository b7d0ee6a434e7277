"""Memory model of one serving process on one GPU of a tensor-parallel mesh.

GPU memory = weights/tp + KV cache + reserve. The reserve covers the CUDA context and allocator
slack (fixed) plus peak activations of one prefill pass of ``max_batched_tokens`` tokens and the
logits of the largest decode batch; both shrink with tp except the vocab-parallel logits gather.
"""
from __future__ import annotations

from muxplan.catalog import kv_bytes_per_token, weight_bytes
from muxplan.schema import DTYPE_BYTES, GpuSpec, ModelSpec

CONTEXT_BYTES = 768 * 2**20  # CUDA context + cuBLAS workspaces + allocator slack per process
from unitsched.config import PREFILL_TOKEN_BUDGET as MAX_BATCHED_TOKENS  # noqa: E402
USABLE_FRACTION = 0.95  # headroom the driver and fragmentation need


def weight_bytes_per_gpu(model: ModelSpec, tp: int) -> int:
    """Weights are sharded evenly across the mesh (vocab-parallel embeddings included)."""
    return -(-weight_bytes(model) // tp)


def kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int) -> int:
    """KV heads split across the mesh; when tp exceeds the KV heads, each GPU keeps one replica."""
    heads_per_gpu = max(1, model.num_kv_heads // tp)
    return kv_bytes_per_token(model) * heads_per_gpu // model.num_kv_heads


def reserve_bytes(model: ModelSpec, tp: int, max_batched_tokens: int = MAX_BATCHED_TOKENS, max_num_seqs: int = 256) -> int:
    """Per-process memory that is neither weights nor KV cache."""
    elem = DTYPE_BYTES[model.dtype]
    width = max(model.hidden_size * 4, (2 * model.intermediate_size) // tp + model.hidden_size)
    activations = max_batched_tokens * width * elem
    logits = max_num_seqs * model.vocab_size * 4  # fp32 logits for sampling, gathered on every rank
    return CONTEXT_BYTES + activations + logits


def usable_bytes(gpu: GpuSpec) -> int:
    return int(gpu.memory_bytes * USABLE_FRACTION)


def kv_capacity_bytes(models: list[ModelSpec], gpu: GpuSpec, tp: int) -> int:
    """KV bytes per GPU left for a unit that hosts ``models`` on a mesh of ``tp`` GPUs (negative: does not fit)."""
    used = sum(weight_bytes_per_gpu(m, tp) + reserve_bytes(m, tp) for m in models)
    return usable_bytes(gpu) - used


def fits(models: list[ModelSpec], gpu: GpuSpec, tp: int, min_kv_tokens: int = 2048) -> bool:
    """True when weights and reserves fit with room for at least ``min_kv_tokens`` tokens of KV per model."""
    need = sum(kv_bytes_per_token_per_gpu(m, tp) * min_kv_tokens for m in models)
    return kv_capacity_bytes(models, gpu, tp) >= need


def isolated_tp(spec: ModelSpec, gpu: GpuSpec) -> int:
    """The smallest power-of-two mesh a model's weights fit: where its isolated (SLO yardstick) latency is measured."""
    tp = 1
    while tp < 64 and not fits([spec], gpu, tp):
        tp *= 2
    return tp
