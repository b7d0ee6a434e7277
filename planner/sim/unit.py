"""The simulated unit: the shared mechanism (``unitsched.unit``) with jobs that run as events on the heap.

Decode is advanced a whole step at a time: a sequence that joined at step s0 with context c0 needs a new
block exactly at steps s with s % B == (s0 - c0) % B (B = the model's block tokens), so a per-phase counter
gives the blocks a step needs in O(1), and a heap of finish steps gives the sequences that end, with no
per-token loop.
"""
from __future__ import annotations

import heapq

from planner.sim.layout import SlotSpec, UnitSpec
from unitsched.slot import SlotCore
from unitsched.unit import UnitCore

PREFILL_DONE, DECODE_DONE = 0, 1


class Book:
    """Per-request state shared by all units (plain lists: scalar access is the hot path)."""

    def __init__(self, arrival_s, prompt_tokens, output_tokens):
        n = len(arrival_s)
        self.arrival_s = list(arrival_s)
        self.prompt = list(prompt_tokens)
        self.output = list(output_tokens)
        self.generated = [0] * n
        self.first_token_s = [float("nan")] * n
        self.finish_s = [float("nan")] * n
        self.preemptions = [0] * n
        self.dropped = [""] * n
        self.num_open = n

    def drop(self, req: int, reason: str) -> None:
        self.dropped[req] = reason
        self.num_open -= 1


class SlotState(SlotCore):
    """Dynamic state of one model on a unit; ``running`` maps req -> (join step, context at join)."""

    def __init__(self, spec: SlotSpec, quota_bytes: int):
        super().__init__(spec, quota_bytes)
        self.finish_heap: list[tuple[int, int]] = []
        self.phase_count = [0] * spec.block_tokens
        self.step = 0
        self.ctx_sum = 0


class UnitState(UnitCore):
    """One unit at run time; ``push(time, kind, unit_pos, slot_idx)`` schedules its job completions."""

    def __init__(self, spec: UnitSpec, pos: int, book: Book, push, quotas: list[int], sm_cap_parts: int, log: list | None):
        super().__init__([SlotState(s, q) for s, q in zip(spec.slots, quotas)], spec.pool_bytes, sm_cap_parts, log, spec.id)
        self.spec = spec
        self.pos = pos
        self.book = book
        self.push = push

    def context_tokens(self, req: int) -> int:
        return self.book.prompt[req] + self.book.generated[req]

    def drop(self, slot: SlotState, req: int, reason: str) -> None:
        self.book.drop(req, reason)

    def run_job(self, slot: SlotState, kind: str, batch: list[int], tokens: int, now: float, sm_pct: int) -> None:
        n = len(batch)
        if kind == "prefill":
            self.push(now + slot.spec.prefill_s(sm_pct, n, round(tokens / n)), PREFILL_DONE, self.pos, slot.spec.index)
        else:
            self.push(now + slot.spec.decode_s(sm_pct, n, round(tokens / n)), DECODE_DONE, self.pos, slot.spec.index)

    def finish_prefill(self, slot: SlotState, now: float) -> None:
        book = self.book
        slot.touch_kv(now)
        for req in slot.in_prefill:
            book.generated[req] += 1
            if book.first_token_s[req] != book.first_token_s[req]:  # NaN: first time
                book.first_token_s[req] = now
            if book.generated[req] >= book.output[req]:
                self.release(slot, -(-(book.prompt[req] + book.generated[req] - 1) // slot.bt))
                book.finish_s[req] = now
                book.num_open -= 1
            else:
                slot.pending.append(req)
        self.end_prefill(slot, now)

    # ------------------------------------------------------------ decode
    def start_decode(self, slot: SlotState, now: float, sm_pct: int, parts: int) -> bool:
        """Run one step of every running sequence; preempt the newest while the step's new blocks do not fit."""
        book, step, bt = self.book, slot.step, slot.bt
        slot.touch_kv(now)
        for req in slot.pending:
            ctx0 = book.prompt[req] + book.generated[req] - 1
            slot.running[req] = (step, ctx0)
            slot.ctx_sum += ctx0
            slot.phase_count[(step - ctx0) % bt] += 1
            heapq.heappush(slot.finish_heap, (step + book.output[req] - book.generated[req], req))
        slot.pending = []
        need = slot.phase_count[step % bt]
        bb = slot.bb  # the quota and pool check of ``fits``, inlined: this is the simulator's hottest line
        while slot.running and ((slot.blocks + need) * bb > slot.quota_bytes or self.used_bytes + need * bb > self.pool_bytes):
            need -= self._preempt_newest(slot, now)
        if not slot.running:
            return False
        slot.blocks += need
        self.used_bytes += need * slot.bb
        self.launch_decode(slot, slot.running, slot.ctx_sum, now, sm_pct, parts)
        return True

    def _preempt_newest(self, slot: SlotState, now: float) -> int:
        """Free the newest running sequence for later recomputation; returns 1 if it needed a block this step."""
        book, bt = self.book, slot.bt
        req = next(reversed(slot.running))
        s0, ctx0 = slot.running.pop(req)
        ctx = ctx0 + slot.step - s0
        phase = (s0 - ctx0) % bt
        slot.phase_count[phase] -= 1
        slot.ctx_sum -= ctx
        self.release(slot, -(-ctx // bt))
        book.generated[req] += slot.step - s0
        book.preemptions[req] += 1
        self.requeue_or_drop(slot, req, ctx + 1, now)
        return 1 if phase == slot.step % bt else 0

    def finish_decode(self, slot: SlotState, now: float) -> None:
        book, bt = self.book, slot.bt
        slot.touch_kv(now)
        slot.ctx_sum += len(slot.running)
        slot.step += 1
        step = slot.step
        heap, running = slot.finish_heap, slot.running
        while heap and heap[0][0] <= step:
            end, req = heapq.heappop(heap)
            entry = running.get(req)
            if entry is None or entry[0] + book.output[req] - book.generated[req] != end:
                continue  # stale: preempted (and maybe rejoined with another finish step)
            s0, ctx0 = running.pop(req)
            ctx = ctx0 + step - s0
            slot.ctx_sum -= ctx
            slot.phase_count[(s0 - ctx0) % bt] -= 1
            self.release(slot, -(-ctx // bt))
            book.generated[req] += step - s0
            book.finish_s[req] = now
            book.num_open -= 1
        self.end_decode(slot, now)
