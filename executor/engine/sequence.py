"""One request inside the engine: its tokens, sampling parameters, progress and timings."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from executor.engine.sampler import SamplingParams


@dataclass(eq=False)
class Sequence:
    id: int
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival_s: float
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    num_preemptions: int = 0
    generator: torch.Generator | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
