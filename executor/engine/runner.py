"""Runs one model's prefill or decode step over the paged pool and samples the next tokens."""
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

    def _table(self, seq: Sequence) -> torch.Tensor:
        """The sequence's block table as ``[num_logical, L, Hkv]``."""
        rows = self.blocks.tables[seq.id]
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.spec.num_layers, self.spec.num_kv_heads)

    def prefill_batch(self, seqs: list[Sequence]) -> Batch:
        """Every token of every sequence (a preempted one is recomputed whole, including its output)."""
        bt = self.block_tokens
        ids, tables, lens = [], [], []
        for s in seqs:
            ids += s.all_ids
            lens.append(s.num_tokens)
            tables.append(self._table(s)[torch.arange(s.num_tokens) // bt])
        positions = torch.cat([torch.arange(n) for n in lens])
        longest = max(lens)
        starts = torch.tensor([0] + lens[:-1]).cumsum(0)
        pad_valid = torch.arange(longest)[None, :] < torch.tensor(lens)[:, None]
        pad_index = torch.where(pad_valid, starts[:, None] + torch.arange(longest)[None, :], 0)
        dev = self.device
        return Batch("prefill", torch.tensor(ids, device=dev), positions.to(dev), torch.cat(tables).to(dev), (positions % bt).to(dev),
                     (starts + torch.tensor(lens) - 1).to(dev), pad_index=pad_index.to(dev), pad_valid=pad_valid.to(dev))

    def decode_batch(self, seqs: list[Sequence], reference: bool = False) -> Batch:
        """The newest token of every sequence, at position ``num_tokens - 1``, attending over its blocks."""
        bt = self.block_tokens
        tables = [self._table(s) for s in seqs]
        width = max(t.shape[0] for t in tables)
        padded = torch.stack([torch.cat([t, t[:1].expand(width - t.shape[0], -1, -1)]) for t in tables])
        positions = torch.tensor([s.num_tokens - 1 for s in seqs])
        write = padded[torch.arange(len(seqs)), positions // bt]
        dev = self.device
        return Batch("decode", torch.tensor([s.all_ids[-1] for s in seqs], device=dev), positions.to(dev), write.to(dev),
                     (positions % bt).to(dev), torch.arange(len(seqs), device=dev), tables=padded.to(dev),
                     context_lens=(positions + 1).to(dev), reference=reference)

    def logits(self, kind: str, seqs: list[Sequence]) -> torch.Tensor:
        batch = self.prefill_batch(seqs) if kind == "prefill" else self.decode_batch(seqs)
        return self.model(batch, self.cache)

    def step(self, kind: str, seqs: list[Sequence]) -> list[int]:
        """Run the step and return one sampled token per sequence."""
        logits = self.logits(kind, seqs)
        return sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
