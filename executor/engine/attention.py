"""Paged attention over head-wise KV blocks.

A model's cache is a view ``[num_blocks, 2, block_tokens, head_dim]`` of the unit's arena (K at 0,
V at 1). A sequence's logical block ``j`` of layer ``l`` and KV head ``h`` lives in physical block
``table[j, l, h]``; token ``t`` sits at offset ``t % block_tokens`` of logical block ``t // block_tokens``.

Prefill always starts at position 0 (a preempted sequence is recomputed whole), so it attends densely
and causally over its own tokens while writing them into the pool. Decode gathers each sequence's
blocks and runs SDPA with the query heads grouped under their KV head (no K/V repetition for GQA);
``decode_reference`` is the plain per-sequence version the batched one is checked against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    kind: str  # "prefill" or "decode"
    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_blocks: torch.Tensor  # [T, L, Hkv] physical block receiving each token's K/V
    write_offsets: torch.Tensor  # [T]
    logit_rows: torch.Tensor  # rows of T whose logits are wanted
    pad_index: torch.Tensor | None = None  # prefill: [B, Tmax] rows of T (0 where padded)
    pad_valid: torch.Tensor | None = None  # prefill: [B, Tmax] bool
    tables: torch.Tensor | None = None  # decode: [B, num_logical, L, Hkv]
    context_lens: torch.Tensor | None = None  # decode: [B], including the new token
    reference: bool = False  # decode through the simple per-sequence path


def write_kv(layer: int, k: torch.Tensor, v: torch.Tensor, batch: Batch, cache: torch.Tensor) -> None:
    blocks = batch.write_blocks[:, layer, :]
    offsets = batch.write_offsets[:, None]
    cache[blocks, 0, offsets] = k
    cache[blocks, 1, offsets] = v


def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Batch, cache: torch.Tensor) -> torch.Tensor:
    """Write this step's K/V into the pool and return attention outputs ``[T, H, D]``."""
    write_kv(layer, k, v, batch, cache)
    if batch.kind == "prefill":
        return prefill_dense(q, k, v, batch.pad_index, batch.pad_valid)
    tables = batch.tables[:, :, layer, :]
    if batch.reference:
        return decode_reference(q, cache, tables, batch.context_lens)
    return decode_paged(q, cache, tables, batch.context_lens)


def prefill_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_index: torch.Tensor, pad_valid: torch.Tensor) -> torch.Tensor:
    """Causal attention of variable-length prompts packed in T, batched by padding to the longest."""
    n = pad_index.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    mask = causal[None, None] & pad_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q[pad_index].transpose(1, 2), k[pad_index].transpose(1, 2), v[pad_index].transpose(1, 2),
                                         attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)[pad_valid]


def gather_kv(cache: torch.Tensor, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of every sequence as ``[B, Hkv, num_logical * block_tokens, D]`` from its block table ``[B, num_logical, Hkv]``."""
    b, num_logical, hkv = tables.shape
    blocks = cache[tables]  # [B, num_logical, Hkv, 2, bt, D]
    blocks = blocks.permute(3, 0, 2, 1, 4, 5).reshape(2, b, hkv, num_logical * cache.shape[2], cache.shape[3])
    return blocks[0], blocks[1]


def decode_paged(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """One query token per sequence ``q [B, H, D]`` against its paged context."""
    b, h, d = q.shape
    hkv = tables.shape[2]
    k, v = gather_kv(cache, tables)
    valid = torch.arange(k.shape[2], device=q.device)[None, :] < context_lens[:, None]
    out = F.scaled_dot_product_attention(q.view(b, hkv, h // hkv, d), k, v, attn_mask=valid[:, None, None, :])
    return out.reshape(b, h, d)


def decode_reference(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """The same as ``decode_paged``, one sequence and one block at a time, with explicit softmax."""
    b, h, d = q.shape
    hkv, bt = tables.shape[2], cache.shape[2]
    out = torch.empty_like(q)
    for i in range(b):
        n = int(context_lens[i])
        num_logical = -(-n // bt)
        ks = torch.cat([cache[tables[i, j], 0] for j in range(num_logical)], dim=1)[:, :n]  # [Hkv, n, D]
        vs = torch.cat([cache[tables[i, j], 1] for j in range(num_logical)], dim=1)[:, :n]
        ks, vs = ks.repeat_interleave(h // hkv, dim=0), vs.repeat_interleave(h // hkv, dim=0)
        scores = torch.einsum("hd,hnd->hn", q[i].float(), ks.float()) / math.sqrt(d)
        out[i] = torch.einsum("hn,hnd->hd", scores.softmax(-1), vs.float()).to(q.dtype)
    return out
