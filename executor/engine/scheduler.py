"""The engine's unit: the shared mechanism (``unitsched.unit``) with jobs that run on the model runner.

Policies are ``unitsched``'s (adbs, fcfs, round-robin, temporal, spatial): they decide which job starts next
through ``unitsched.policy.UnitView``, exactly as in ``muxplan simulate``, so the engine and the simulator run
the very same decisions. Here a started job is queued in ``started`` for the engine to execute on the model
runner; ``finish`` applies its sampled tokens. Preemption (newest first, recomputed later) is the
scheduler's choice; the block manager only hands out and takes back blocks.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from executor.engine.kv_pool import BlockManager
from executor.engine.sequence import Sequence
from unitsched.slot import SlotCore, SmShares
from unitsched.unit import UnitCore



@dataclass(frozen=True)
class SlotSpec(SmShares):
    index: int
    name: str
    prefill_sm_pct: int
    decode_sm_pct: int
    max_num_seqs: int
    rate_rps: float
    block_tokens: int
    block_bytes: int  # bytes of one logical block (every layer and KV head)

    @property
    def kv_bytes_per_token(self) -> float:
        return self.block_bytes / self.block_tokens


@dataclass(frozen=True)
class UnitSpec:
    slots: tuple[SlotSpec, ...]
    pool_bytes: int


@dataclass(frozen=True)
class Job:
    kind: str  # "prefill" or "decode"
    slot: "Slot"
    seqs: list[Sequence]
    sm_pct: int
    parts: int
    start_s: float


class Slot(SlotCore):
    """One model on the unit: its queue, sequences in each phase and KV quota; ``blocks`` counts logical blocks."""


class Book:
    """Arrival times by sequence id (what FCFS-style policies read)."""

    def __init__(self):
        self.arrival_s: dict[int, float] = {}


class Scheduler(UnitCore):
    def __init__(self, spec: UnitSpec, blocks: BlockManager, quotas: list[int], sm_cap_parts: int,
                 finish_seq: Callable[[Sequence, str], None], log: list | None = None):
        super().__init__([Slot(s, q) for s, q in zip(spec.slots, quotas)], spec.pool_bytes, sm_cap_parts, log)
        self.spec = spec
        self.by_name = {s.spec.name: s for s in self.slots}
        self.blocks = blocks
        self.book = Book()
        self.seqs: dict[int, Sequence] = {}
        self.started: deque[Job] = deque()
        self._finish_seq = finish_seq

    # ------------------------------------------------------------ requests
    def add(self, seq: Sequence) -> None:
        self.seqs[seq.id] = seq
        self.book.arrival_s[seq.id] = seq.arrival_s
        self.by_name[seq.model].queue.append(seq.id)

    def num_unfinished(self) -> int:
        return len(self.seqs)

    def _forget(self, seq: Sequence, reason: str) -> None:
        self.seqs.pop(seq.id, None)
        self.book.arrival_s.pop(seq.id, None)
        self._finish_seq(seq, reason)

    # ------------------------------------------------------------ the mechanism's hooks
    def context_tokens(self, req: int) -> int:
        return self.seqs[req].num_tokens

    def drop(self, slot: Slot, req: int, reason: str) -> None:
        self._forget(self.seqs[req], "length")  # the KV quota can never hold its next token

    def grant(self, slot: Slot, req: int, blocks: int) -> None:
        self.blocks.allocate(req, slot.spec.name, blocks)
        super().grant(slot, req, blocks)

    def _free(self, slot: Slot, seq_id: int) -> None:
        """Every block of the sequence goes back to the pool."""
        self.release(slot, self.blocks.free(seq_id))

    def run_job(self, slot: Slot, kind: str, batch: list[int], tokens: int, now: float, sm_pct: int) -> None:
        parts = slot.prefill_parts_used if kind == "prefill" else slot.decode_parts_used
        self.started.append(Job(kind, slot, [self.seqs[sid] for sid in batch], sm_pct, parts, now))

    def start_decode(self, slot: Slot, now: float, sm_pct: int, parts: int) -> bool:
        """One step of every running sequence; preempt the newest while the step's new blocks do not fit."""
        self.touch_kv(slot, now)
        for sid in slot.pending:
            slot.running[sid] = None
        slot.pending = []
        need = {sid: -(-self.seqs[sid].num_tokens // slot.bt) - self.blocks.num_logical(sid) for sid in slot.running}
        total = sum(need.values())
        while slot.running and not self.fits(slot, total):
            victim = next(reversed(slot.running))
            total -= need.pop(victim)
            seq = self.seqs[victim]
            del slot.running[victim]
            self._free(slot, victim)
            seq.num_preemptions += 1
            self.requeue_or_drop(slot, victim, seq.num_tokens, now)
        if not slot.running:
            return False
        for sid, n in need.items():
            if n > 0:
                self.grant(slot, sid, n)
        context = sum(self.seqs[sid].num_tokens - 1 for sid in slot.running)
        self.launch_decode(slot, list(slot.running), context, now, sm_pct, parts)
        return True

    # ------------------------------------------------------------ completion
    def finish(self, job: Job, tokens: list[int], now: float, accept: Callable[[Sequence, int, float], str | None]) -> None:
        """Apply one sampled token per sequence; ``accept`` returns a finish reason or None."""
        slot = job.slot
        self.touch_kv(slot, now)
        for seq, token in zip(job.seqs, tokens):
            reason = accept(seq, token, now)
            if job.kind == "prefill":
                slot.in_prefill.remove(seq.id)
            if reason is not None:
                slot.running.pop(seq.id, None)
                self._free(slot, seq.id)
                self._forget(seq, reason)
            elif job.kind == "prefill":
                slot.pending.append(seq.id)
        if job.kind == "prefill":
            self.end_prefill(slot, now)
        else:
            self.end_decode(slot, now)

    def abort(self, seq_id: int) -> bool:
        """Forget a waiting or running sequence (its client went away); its blocks return to the pool.
        False when it is inside a job now: the caller ends it when that job's token arrives."""
        seq = self.seqs.get(seq_id)
        if seq is None:
            return True
        slot = self.by_name[seq.model]
        if seq_id in slot.queue:
            slot.queue.remove(seq_id)
        elif seq_id in slot.running and not slot.decode_busy:
            del slot.running[seq_id]
        elif seq_id in slot.pending:
            slot.pending.remove(seq_id)
        else:
            return False
        self._free(slot, seq_id)
        self._forget(seq, "abort")
        return True
