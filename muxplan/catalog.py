"""Model and GPU catalogs, and the sizes derived from architecture numbers (never from names)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from muxplan.files import InputError, load_contract, parse_contract, read_mapping
from muxplan.schema import DTYPE_BYTES, GpuCatalogFile, GpuSpec, ModelCatalogFile, ModelSpec

DATA_DIR = Path(__file__).parent / "data"


@cache
def model_catalog() -> dict[str, ModelSpec]:
    return {m.name: m for m in load_contract(DATA_DIR / "models.yaml", ModelCatalogFile).models}


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    return {g.name: g for g in load_contract(DATA_DIR / "gpus.yaml", GpuCatalogFile).gpus}


def get_gpu(name: str, overrides: list[GpuSpec] | tuple[GpuSpec, ...] = ()) -> GpuSpec:
    """A GPU by catalog name; a spec in ``overrides`` (e.g. measured numbers) wins."""
    for gpu in overrides:
        if gpu.name == name:
            return gpu
    try:
        return gpu_catalog()[name]
    except KeyError:
        raise InputError(f"unknown GPU '{name}'; known: {', '.join(gpu_catalog())}") from None


def get_model(ref: str) -> ModelSpec:
    """A model by catalog name, or from a local Hugging Face ``config.json`` (file or its folder)."""
    if ref in model_catalog():
        return model_catalog()[ref]
    path = Path(ref)
    try:
        if path.is_dir():
            path = path / "config.json"
        found = path.name.endswith(".json") and path.is_file()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte, is no folder
        found = False
    if found:
        return model_from_hf_config(path)
    raise InputError(f"unknown model '{ref}'; known: {', '.join(model_catalog())} (or a path to a config.json)")


_HF_FAMILIES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "mixtral": "mixtral"}
_HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json of a Llama-family model."""
    cfg = read_mapping(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: (root): expected a JSON object")
    family = _HF_FAMILIES.get(str(cfg.get("model_type", "")))
    if family is None:
        raise InputError(f"{path}: model_type: '{cfg.get('model_type')}' is not one of {', '.join(_HF_FAMILIES)}")
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise InputError(f"{path}: {key}: missing or not an integer")
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}  # transformers >= 5 keeps theta and scaling together
    scaling = cfg.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} if rope.get("rope_type", "default") != "default" else None)
    data = {
        "name": Path(path).parent.name or Path(path).stem,
        "family": family,
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "intermediate_size": cfg["intermediate_size"],
        "vocab_size": cfg["vocab_size"],
        "dtype": _HF_DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bfloat16"),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(cfg.get("attention_bias", family == "qwen2")),
        "num_experts": cfg.get("num_local_experts", 0) or 0,
        "num_experts_per_token": cfg.get("num_experts_per_tok", 0) or 0,
        "max_position_embeddings": cfg.get("max_position_embeddings", 4096),
        "rope_theta": cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
        "rope_scaling": scaling,
        "rms_norm_eps": cfg.get("rms_norm_eps", 1e-5),
    }
    return parse_contract(path, {"schema_version": 1, "models": [data]}, ModelCatalogFile).models[0]


# ---------------------------------------------------------------- derived numbers
def attention_params_per_layer(m: ModelSpec) -> int:
    q_dim, kv_dim = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    bias = (q_dim + 2 * kv_dim) if m.attention_bias else 0
    return m.hidden_size * (q_dim + 2 * kv_dim) + q_dim * m.hidden_size + bias


def mlp_params_per_layer(m: ModelSpec, active_only: bool = False) -> int:
    """SwiGLU MLP (gate, up, down); for MoE all experts, or only the routed ones, plus the router."""
    one = 3 * m.hidden_size * m.intermediate_size
    if not m.num_experts:
        return one
    experts = m.num_experts_per_token if active_only else m.num_experts
    return experts * one + m.hidden_size * m.num_experts


def embedding_params(m: ModelSpec) -> int:
    """Input embedding plus the LM head when it is not tied."""
    return m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)


def num_params(m: ModelSpec, active_only: bool = False) -> int:
    norms = 2 * m.hidden_size
    per_layer = attention_params_per_layer(m) + mlp_params_per_layer(m, active_only) + norms
    return m.num_layers * per_layer + embedding_params(m) + m.hidden_size


def weight_bytes(m: ModelSpec, dtype: str | None = None) -> int:
    return num_params(m) * DTYPE_BYTES[dtype or m.dtype]


def kv_bytes_per_token(m: ModelSpec, dtype: str | None = None) -> int:
    """K and V for every layer and KV head (GQA-aware)."""
    return 2 * m.num_layers * m.num_kv_heads * m.head_dim * DTYPE_BYTES[dtype or m.dtype]


def flops_per_token(m: ModelSpec, context_tokens: int = 0) -> float:
    """Forward FLOPs for one token: 2 x active weights (LM head included) + attention over the context."""
    lm_head = m.vocab_size * m.hidden_size
    matmul_params = m.num_layers * (attention_params_per_layer(m) + mlp_params_per_layer(m, True)) + lm_head
    attention = 4 * m.num_layers * m.num_heads * m.head_dim * context_tokens
    return 2.0 * matmul_params + attention
