"""A Llama-family decoder (Llama 1/2/3, Mistral, Qwen2) whose attention reads and writes the paged KV pool.

Parameter names follow Hugging Face (``model.layers.N.self_attn.q_proj.weight`` ...), so a local
safetensors checkpoint loads as it is. RMSNorm runs in fp32 like the reference implementation; RoPE is
the half-rotation form with optional ``linear`` or ``llama3`` frequency scaling.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from executor.engine.attention import Batch, attend
from muxplan.files import InputError
from muxplan.schema import ModelSpec


class RmsNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(spec: ModelSpec) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with the model's scaling applied."""
    dim = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise InputError(f"{spec.name}: rope_scaling.rope_type: '{kind}' is not supported (default, linear, llama3)")


class Rotary(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(spec), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(q.dtype)[:, None, :], emb.sin().to(q.dtype)[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        h, hd = spec.hidden_size, spec.head_dim
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, hd
        self.q_proj = nn.Linear(h, spec.num_heads * hd, bias=spec.attention_bias)
        self.k_proj = nn.Linear(h, spec.num_kv_heads * hd, bias=spec.attention_bias)
        self.v_proj = nn.Linear(h, spec.num_kv_heads * hd, bias=spec.attention_bias)
        self.o_proj = nn.Linear(spec.num_heads * hd, h, bias=False)

    def forward(self, x: torch.Tensor, rotary: Rotary, batch: Batch, cache: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        q, k = rotary(q, k, batch.positions)
        return self.o_proj(attend(self.layer, q, k, v, batch, cache).reshape(t, -1))


class Mlp(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        self.self_attn = SelfAttention(spec, layer)
        self.mlp = Mlp(spec)
        self.input_layernorm = RmsNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RmsNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, h: torch.Tensor, rotary: Rotary, batch: Batch, cache: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), rotary, batch, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_layers))
        self.norm = RmsNorm(spec.hidden_size, spec.rms_norm_eps)
        self.rotary = Rotary(spec)


class CausalLm(nn.Module):
    """``forward(batch, cache)`` returns fp32 logits of the rows in ``batch.logit_rows``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.num_experts:
            raise InputError(f"{spec.name}: num_experts: mixture-of-experts models are not supported by the engine")
        self.spec = spec
        self.model = Decoder(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, batch: Batch, cache: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(batch.token_ids)
        for layer in self.model.layers:
            h = layer(h, self.model.rotary, batch, cache)
        h = self.model.norm(h[batch.logit_rows])
        return self.lm_head(h).float()


def _empty_model(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> CausalLm:
    """Parameters allocated once, directly in ``dtype`` on ``device`` (no fp32 copy of a 14B model, no wasted init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = CausalLm(spec)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    model.model.rotary.inv_freq = rope_inv_freq(spec).to(device)
    if spec.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def load_model(spec: ModelSpec, path: str | Path | None, dtype: torch.dtype, device: torch.device, seed: int = 0) -> CausalLm:
    """The model with weights from a local safetensors folder, or random weights at the real shapes."""
    model = _empty_model(spec, dtype, device)
    if path is None:
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=gen)
        return model.eval()
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise InputError(f"{path}: no *.safetensors weights in the model folder")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=str(device)))
    if spec.tie_embeddings:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (spec.tie_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        what = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise InputError(f"{path}: weights do not match the config ({what})")
    return model.eval()
