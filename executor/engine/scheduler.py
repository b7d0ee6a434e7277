"""The unit's scheduling mechanism: per-model queues, jobs, SM parts and KV quotas over the block manager.

Policies are the simulator's (``planner.sim.policy``: adbs, fcfs, round-robin, temporal): they decide which
job starts next through the same interface as the simulated unit (``head_fits``, ``start_prefill``,
``start_decode``, ``sm_used``/``sm_cap``, per-model quotas in bytes), so the engine and ``muxplan simulate``
run the very same decisions. Here a started job is queued in ``started`` for the engine to execute on the
model runner; ``finish`` applies its sampled tokens. Preemption (newest first, recomputed later) is the
scheduler's choice; the block manager only hands out and takes back blocks.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from executor.engine.kv_pool import BlockManager
from executor.engine.sequence import Sequence
from planner.sim.slot import SlotCore, SmShares
from planner.sim.unit import PREFILL_TOKEN_BUDGET



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


@dataclass
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


class Scheduler:
    def __init__(self, spec: UnitSpec, blocks: BlockManager, quotas: list[int], sm_cap_parts: int,
                 finish_seq: Callable[[Sequence, str], None]):
        self.spec = spec
        self.slots = [Slot(s, q) for s, q in zip(spec.slots, quotas)]
        self.by_name = {s.spec.name: s for s in self.slots}
        self.blocks = blocks
        self.book = Book()
        self.seqs: dict[int, Sequence] = {}
        self.pool_bytes = spec.pool_bytes
        self.used_bytes = 0
        self.sm_cap = sm_cap_parts
        self.sm_used = 0
        self.num_prefills = 0
        self.num_jobs = 0
        self.rr_prefill = -1
        self.rr_decode = -1
        self.started: deque[Job] = deque()
        self._finish_seq = finish_seq

    # ------------------------------------------------------------ requests
    def add(self, seq: Sequence) -> None:
        self.seqs[seq.id] = seq
        self.book.arrival_s[seq.id] = seq.arrival_s
        self.by_name[seq.model].queue.append(seq.id)

    def num_unfinished(self) -> int:
        return len(self.seqs)

    def _logical_for(self, slot: Slot, seq: Sequence) -> int:
        return -(-seq.num_tokens // slot.spec.block_tokens)

    def _drop(self, slot: Slot, seq: Sequence, now: float) -> None:
        self.seqs.pop(seq.id, None)
        self.book.arrival_s.pop(seq.id, None)
        self._finish_seq(seq, "length")  # the KV quota can never hold its next token

    # ------------------------------------------------------------ the interface policies drive
    def head_fits(self, slot: Slot) -> bool:
        while slot.queue:
            seq = self.seqs[slot.queue[0]]
            need = self._logical_for(slot, seq) * slot.bb
            if need > slot.quota_bytes or need > self.pool_bytes:
                slot.queue.popleft()
                self._drop(slot, seq, 0.0)
                continue
            return (slot.seats < slot.spec.max_num_seqs and slot.blocks * slot.bb + need <= slot.quota_bytes
                    and self.used_bytes + need <= self.pool_bytes)
        return False

    def touch_kv(self, slot: Slot, now: float) -> None:
        slot.touch_kv(now)

    def _grant(self, slot: Slot, seq: Sequence, num_logical: int) -> None:
        self.blocks.allocate(seq.id, slot.spec.name, num_logical)
        slot.blocks += num_logical
        self.used_bytes += num_logical * slot.bb

    def _release(self, slot: Slot, seq: Sequence) -> None:
        freed = self.blocks.free(seq.id)
        slot.blocks -= freed
        self.used_bytes -= freed * slot.bb

    def start_prefill(self, slot: Slot, now: float, sm_pct: int, parts: int) -> None:
        """Batch queued prompts (up to the token budget, the seat cap and the KV quota) into one job."""
        self.touch_kv(slot, now)
        batch, tokens = [], 0
        while slot.queue and self.head_fits(slot):
            seq = self.seqs[slot.queue[0]]
            if batch and tokens + seq.num_tokens > PREFILL_TOKEN_BUDGET:
                break
            slot.queue.popleft()
            self._grant(slot, seq, self._logical_for(slot, seq))
            slot.in_prefill.append(seq.id)
            batch.append(seq)
            tokens += seq.num_tokens
        if batch:
            slot.prefill_busy = True
            self.num_prefills += 1
            self._launch(Job("prefill", slot, batch, sm_pct, parts, now))

    def start_decode(self, slot: Slot, now: float, sm_pct: int, parts: int) -> bool:
        """One step of every running sequence; preempt the newest while the step's new blocks do not fit."""
        self.touch_kv(slot, now)
        for sid in slot.pending:
            slot.running[sid] = None
        slot.pending = []
        need = {sid: self._logical_for(slot, self.seqs[sid]) - self.blocks.num_logical(sid) for sid in slot.running}
        while slot.running:
            total = sum(need.values())
            if (slot.blocks + total) * slot.bb <= slot.quota_bytes and self.used_bytes + total * slot.bb <= self.pool_bytes:
                break
            victim = next(reversed(slot.running))
            need.pop(victim)
            self._preempt(slot, self.seqs[victim], now)
        if not slot.running:
            return False
        for sid, n in need.items():
            if n > 0:
                self._grant(slot, self.seqs[sid], n)
        slot.decode_busy = True
        self._launch(Job("decode", slot, [self.seqs[sid] for sid in slot.running], sm_pct, parts, now))
        return True

    def _preempt(self, slot: Slot, seq: Sequence, now: float) -> None:
        del slot.running[seq.id]
        self._release(slot, seq)
        seq.num_preemptions += 1
        if -(-(seq.num_tokens + 1) // slot.spec.block_tokens) * slot.bb > min(slot.quota_bytes, self.pool_bytes):
            self._drop(slot, seq, now)
        else:
            slot.queue.appendleft(seq.id)  # recomputed from its prompt and output so far

    def _launch(self, job: Job) -> None:
        self.num_jobs += 1
        self.sm_used += job.parts
        self.started.append(job)

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
                self._release(slot, seq)
                self.seqs.pop(seq.id, None)
                self.book.arrival_s.pop(seq.id, None)
                self._finish_seq(seq, reason)
            elif job.kind == "prefill":
                slot.pending.append(seq.id)
        if job.kind == "prefill":
            slot.prefill_busy = False
            self.num_prefills -= 1
        else:
            slot.decode_busy = False
        self.num_jobs -= 1
        self.sm_used -= job.parts

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
        self._release(slot, seq)
        self.seqs.pop(seq_id, None)
        self.book.arrival_s.pop(seq_id, None)
        self._finish_seq(seq, "abort")
        return True
