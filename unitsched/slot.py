"""What scheduling policies read of one model on a unit, shared by the simulated unit and the engine's scheduler.

``SmShares`` turns a slot spec's SM percentages into the 10% parts the runtime counts; ``SlotCore`` holds the
per-model state a policy decides on (queue, sequences in each phase, busy jobs, KV quota and its
time-integrated use). Each mechanism subclasses it with what only it needs.
"""
from __future__ import annotations

import math
from collections import deque

from unitsched.config import SM_PART_PCT


class SmShares:
    """Mixin for slot specs with ``prefill_sm_pct`` and ``decode_sm_pct``."""

    prefill_sm_pct: int
    decode_sm_pct: int

    @property
    def prefill_parts(self) -> int:
        return math.ceil(self.prefill_sm_pct / SM_PART_PCT)

    @property
    def decode_parts(self) -> int:
        return math.ceil(self.decode_sm_pct / SM_PART_PCT)


class SlotCore:
    def __init__(self, spec, quota_bytes: int):
        self.spec = spec
        self.bb = spec.block_bytes  # bytes of one KV block of this model
        self.bt = spec.block_tokens  # tokens of one KV block of this model
        self.queue: deque[int] = deque()
        self.in_prefill: list[int] = []
        self.pending: list[int] = []  # prefilled, join the next decode step
        self.running: dict = {}  # insertion order: newest last
        self.blocks = 0  # KV blocks held
        self.quota_bytes = quota_bytes
        self.initial_quota_bytes = quota_bytes
        self.prefill_busy = False
        self.decode_busy = False
        self.prefill_parts_used = 0
        self.decode_parts_used = 0
        self.kv_area = 0.0  # block-seconds held since the last quota adaptation
        self.kv_t = 0.0
        self.prefill_sm = spec.prefill_sm_pct
        self.decode_sm = spec.decode_sm_pct

    @property
    def seats(self) -> int:
        return len(self.in_prefill) + len(self.pending) + len(self.running)

    def oldest_arrival(self, book) -> float:
        """Arrival of the oldest request the model holds (``book.arrival_s`` indexed by request id)."""
        ids = [q[0] for q in (self.queue, self.in_prefill, self.pending) if q] + ([next(iter(self.running))] if self.running else [])
        return min((book.arrival_s[i] for i in ids), default=float("inf"))

    def touch_kv(self, now: float) -> None:
        """Accumulate the KV holding over time (called before every change of ``blocks``)."""
        self.kv_area += self.blocks * (now - self.kv_t)
        self.kv_t = now
