"""Runs one model's prefill or decode step over the paged pool and samples the next tokens.

Block tables are head-wise (``[num_logical, layers, kv_heads]`` block ids per sequence, 8k ids per 16
tokens for an 8B model), so each sequence's table is kept on the device and only its new rows are copied
when the block manager grows it; a table freed and allocated again (preemption) is rebuilt.
"""
from __future__ import annotations

import torch

from executor.engine.attention import Batch
from executor.engine.kv_pool import BlockManager
from executor.engine.model import CausalLm
from executor.engine.sampler import sample
from executor.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, name: str, model: CausalLm, cache: torch.Tensor, blocks: BlockManager, device: torch.device):
        self.name = name
        self.model = model
        self.spec = model.spec
        self.cache = cache
        self.block_tokens = cache.shape[2]
        self.blocks = blocks
        self.device = device
        self._tables: dict[int, tuple[int, torch.Tensor, int]] = {}  # seq id -> (epoch, device table, rows filled)

    def _table(self, seq: Sequence, capacity: int = 0) -> torch.Tensor:
        """The sequence's block table on the device, ``[max(num_logical, capacity), L, Hkv]``; rows past its
        blocks hold block 0 (read only under a mask)."""
        rows = self.blocks.tables[seq.id]
        epoch = self.blocks.epoch(seq.id)
        shape = (self.spec.num_layers, self.spec.num_kv_heads)
        cached = self._tables.get(seq.id)
        if cached is None or cached[0] != epoch:
            cached = (epoch, torch.zeros(0, *shape, dtype=torch.long, device=self.device), 0)
        _, table, filled = cached
        need = max(len(rows), capacity)
        if table.shape[0] < need:
            grown = torch.zeros(max(need, 2 * table.shape[0]), *shape, dtype=torch.long, device=self.device)
            grown[:filled] = table[:filled]
            table = grown
        if filled < len(rows):
            table[filled:len(rows)] = torch.tensor(rows[filled:], dtype=torch.long).view(-1, *shape).to(self.device)
            filled = len(rows)
        self._tables[seq.id] = (epoch, table, filled)
        return table

    def forget(self, seq_id: int) -> None:
        self._tables.pop(seq_id, None)

    def prefill_batch(self, seqs: list[Sequence]) -> Batch:
        """Every token of every sequence (a preempted one is recomputed whole, including its output)."""
        bt = self.block_tokens
        ids, tables, lens = [], [], []
        for s in seqs:
            ids += s.all_ids
            lens.append(s.num_tokens)
            tables.append(self._table(s)[torch.arange(s.num_tokens, device=self.device) // bt])
        positions = torch.cat([torch.arange(n) for n in lens])
        longest = max(lens)
        starts = torch.tensor([0] + lens[:-1]).cumsum(0)
        pad_valid = torch.arange(longest)[None, :] < torch.tensor(lens)[:, None]
        pad_index = torch.where(pad_valid, starts[:, None] + torch.arange(longest)[None, :], 0)
        dev = self.device
        return Batch("prefill", torch.tensor(ids, device=dev), positions.to(dev), torch.cat(tables), (positions % bt).to(dev),
                     (starts + torch.tensor(lens) - 1).to(dev), pad_index=pad_index.to(dev), pad_valid=pad_valid.to(dev))

    def decode_batch(self, seqs: list[Sequence], reference: bool = False) -> Batch:
        """The newest token of every sequence, at position ``num_tokens - 1``, attending over its blocks."""
        bt = self.block_tokens
        width = max(self.blocks.num_logical(s.id) for s in seqs)
        padded = torch.stack([self._table(s, width)[:width] for s in seqs])
        dev = self.device
        positions = torch.tensor([s.num_tokens - 1 for s in seqs], device=dev)
        write = padded[torch.arange(len(seqs), device=dev), positions // bt]
        return Batch("decode", torch.tensor([s.all_ids[-1] for s in seqs], device=dev), positions, write,
                     positions % bt, torch.arange(len(seqs), device=dev), tables=padded, context_lens=positions + 1, reference=reference)

    def logits(self, kind: str, seqs: list[Sequence]) -> torch.Tensor:
        batch = self.prefill_batch(seqs) if kind == "prefill" else self.decode_batch(seqs)
        return self.model(batch, self.cache)

    def step(self, kind: str, seqs: list[Sequence]) -> list[int]:
        """Run the step and return one sampled token per sequence."""
        logits = self.logits(kind, seqs)
        return sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
