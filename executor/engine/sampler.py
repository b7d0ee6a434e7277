"""Next-token choice: greedy, temperature, top-k, top-p, with an optional per-request seed."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of ``logits [B, V]`` (fp32). Seeded rows draw from their own generator."""
    greedy = logits.argmax(-1)
    out = greedy.tolist()
    for i, p in enumerate(params):
        if p.temperature <= 0.0:
            continue
        row = logits[i] / p.temperature
        if p.top_k and p.top_k < row.shape[0]:
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = row.softmax(-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            before = sorted_probs.cumsum(0) - sorted_probs  # mass of strictly better tokens
            sorted_probs = sorted_probs.masked_fill(before >= p.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        # exponential race: argmax p / E with E ~ Exp(1) samples from p; on the CPU, where the generators live
        probs = probs.cpu()
        noise = torch.empty_like(probs).exponential_(1.0, generator=generators[i])
        out[i] = int((probs / noise).argmax())
    return out
