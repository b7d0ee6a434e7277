"""The unit's KV memory: one arena per device carved into fixed-size head-wise blocks, and its free list.

A block holds K and V of one KV head of one layer for ``block_elems / (2 * head_dim)`` tokens, so models
with different shapes draw from one free list. A model reserves ``num_layers x num_kv_heads`` physical
blocks per logical block (one per layer and head). The block manager is mechanism only: it says whether
blocks are free, hands them out and takes them back; the scheduler decides who gets or loses them.
"""
from __future__ import annotations

from collections import deque

import torch

from muxplan.files import InputError


class KvPool:
    def __init__(self, num_blocks: int, block_elems: int, dtype: torch.dtype, device: torch.device):
        if num_blocks < 1:
            raise InputError(f"kv_bytes: the unit's KV memory holds no block of {block_elems} elements")
        self.num_blocks = num_blocks
        self.block_elems = block_elems
        self.block_bytes = block_elems * torch.empty((), dtype=dtype).element_size()
        self.arena = torch.zeros(num_blocks, block_elems, dtype=dtype, device=device)

    def block_tokens(self, head_dim: int) -> int:
        if self.block_elems % (2 * head_dim):
            raise InputError(f"head_dim: {head_dim} does not divide a KV block of {self.block_elems} elements into K and V halves")
        return self.block_elems // (2 * head_dim)

    def view(self, head_dim: int) -> torch.Tensor:
        """The arena seen by a model with this head size: ``[num_blocks, 2, block_tokens, head_dim]``."""
        return self.arena.view(self.num_blocks, 2, self.block_tokens(head_dim), head_dim)


class BlockManager:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._per_logical: dict[str, int] = {}
        self.tables: dict[int, list[list[int]]] = {}
        self._owner: dict[int, str] = {}
        self._epoch: dict[int, int] = {}  # changes whenever a sequence's table starts afresh
        self._epochs = 0
        self.used_blocks: dict[str, int] = {}

    def add_model(self, model: str, blocks_per_logical: int) -> None:
        self._per_logical[model] = blocks_per_logical
        self.used_blocks.setdefault(model, 0)

    def blocks_per_logical(self, model: str) -> int:
        return self._per_logical[model]

    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_allocate(self, model: str, num_logical: int) -> bool:
        return num_logical * self._per_logical[model] <= len(self._free)

    def allocate(self, seq_id: int, model: str, num_logical: int) -> None:
        """Append ``num_logical`` logical blocks to the sequence's table (creating it when new)."""
        per = self._per_logical[model]
        if num_logical * per > len(self._free):
            raise RuntimeError(f"KV pool exhausted: {num_logical * per} blocks asked, {len(self._free)} free")
        if seq_id not in self.tables:
            self._epochs += 1
            self._epoch[seq_id] = self._epochs
        table = self.tables.setdefault(seq_id, [])
        self._owner[seq_id] = model
        for _ in range(num_logical):
            table.append([self._free.popleft() for _ in range(per)])
        self.used_blocks[model] += num_logical * per

    def num_logical(self, seq_id: int) -> int:
        return len(self.tables.get(seq_id, ()))

    def epoch(self, seq_id: int) -> int:
        """Identifies the sequence's current table: a table freed and allocated again gets a new epoch."""
        return self._epoch[seq_id]

    def free(self, seq_id: int) -> int:
        """Return every block of the sequence to the free list; returns how many logical blocks it held."""
        table = self.tables.pop(seq_id, [])
        model = self._owner.pop(seq_id, None)
        self._epoch.pop(seq_id, None)
        for blocks in table:
            self._free.extend(blocks)
        if model is not None:
            self.used_blocks[model] -= len(table) * self._per_logical[model]
        return len(table)
