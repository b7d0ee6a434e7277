"""Mechanism of one LLM unit: per-model queues, prefill/decode jobs, SM parts and the shared KV-block pool.

Policies decide which job starts; these methods execute it. Decode is advanced a whole step at a time:
a sequence that joined at step s0 with context c0 needs a new block exactly at steps s with
s % B == (s0 - c0) % B (B = block tokens), so a per-phase counter gives the blocks a step needs in O(1),
and a heap of finish steps gives the sequences that end, with no per-token loop.
"""
from __future__ import annotations

import heapq

from planner.sim.layout import BLOCK_TOKENS, SlotSpec, UnitSpec
from planner.sim.slot import SlotCore

PREFILL_TOKEN_BUDGET = 2048  # the paper's prefill batching budget
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
        self.phase_count = [0] * BLOCK_TOKENS
        self.step = 0
        self.ctx_sum = 0
        self.decode_n = 0


class UnitState:
    """One unit at run time; ``push(time, kind, unit_pos, slot_idx)`` schedules its job completions."""

    def __init__(self, spec: UnitSpec, pos: int, book: Book, push, quotas: list[int], sm_cap_parts: int, log: list | None):
        self.spec = spec
        self.pos = pos
        self.book = book
        self.push = push
        self.slots = [SlotState(s, q) for s, q in zip(spec.slots, quotas)]
        self.pool_bytes = spec.pool_bytes
        self.used_bytes = 0
        self.sm_cap = sm_cap_parts
        self.sm_used = 0
        self.sm_area = 0.0
        self.sm_t = 0.0
        self.num_prefills = 0
        self.num_jobs = 0
        self.rr_prefill = -1
        self.rr_decode = -1
        self.log = log
        self.num_decode_steps = 0
        self.num_prefill_batches = 0

    # ------------------------------------------------------------ admission
    def blocks_for(self, slot: SlotState, req: int) -> int:
        return -(-(self.book.prompt[req] + self.book.generated[req]) // BLOCK_TOKENS)

    def head_fits(self, slot: SlotState) -> bool:
        """True when the queue head can be admitted; drops heads that can never fit the model's quota."""
        while slot.queue:
            req = slot.queue[0]
            need = self.blocks_for(slot, req) * slot.bb
            if need > slot.quota_bytes or need > self.pool_bytes:
                slot.queue.popleft()
                self.book.drop(req, "kv: request larger than the model's KV quota")
                continue
            return (slot.seats < slot.spec.max_num_seqs and slot.blocks * slot.bb + need <= slot.quota_bytes
                    and self.used_bytes + need <= self.pool_bytes)
        return False

    def touch_kv(self, slot: SlotState, now: float) -> None:
        slot.touch_kv(now)

    def _set_sm(self, now: float, delta: int) -> None:
        self.sm_area += self.sm_used * (now - self.sm_t)
        self.sm_t = now
        self.sm_used += delta

    # ------------------------------------------------------------ prefill
    def start_prefill(self, slot: SlotState, now: float, sm_pct: int, parts: int) -> None:
        """Batch queued prompts (up to the token budget, the seat cap and the KV quota) into one pass."""
        book, batch, tokens = self.book, [], 0
        self.touch_kv(slot, now)
        while slot.queue and self.head_fits(slot):
            req = slot.queue[0]
            ctx = book.prompt[req] + book.generated[req]
            if batch and tokens + ctx > PREFILL_TOKEN_BUDGET:
                break
            slot.queue.popleft()
            blocks = -(-ctx // BLOCK_TOKENS)
            slot.blocks += blocks
            self.used_bytes += blocks * slot.bb
            batch.append(req)
            slot.in_prefill.append(req)
            tokens += ctx
        if not batch:
            return
        latency = slot.spec.prefill_s(sm_pct, len(batch), round(tokens / len(batch)))
        slot.prefill_busy = True
        self.num_prefills += 1
        self.num_jobs += 1
        self.num_prefill_batches += 1
        self._set_sm(now, parts)
        slot.prefill_parts_used = parts
        if self.log is not None:
            self.log.append((now, self.spec.id, slot.spec.name, "prefill", len(batch)))
        self.push(now + latency, PREFILL_DONE, self.pos, slot.spec.index)

    def finish_prefill(self, slot: SlotState, now: float) -> None:
        book = self.book
        self.touch_kv(slot, now)
        for req in slot.in_prefill:
            book.generated[req] += 1
            if book.first_token_s[req] != book.first_token_s[req]:  # NaN: first time
                book.first_token_s[req] = now
            if book.generated[req] >= book.output[req]:
                self._release(slot, -(-(book.prompt[req] + book.generated[req] - 1) // BLOCK_TOKENS))
                book.finish_s[req] = now
                book.num_open -= 1
            else:
                slot.pending.append(req)
        slot.in_prefill = []
        slot.prefill_busy = False
        self.num_prefills -= 1
        self.num_jobs -= 1
        self._set_sm(now, -slot.prefill_parts_used)

    def _release(self, slot: SlotState, blocks: int) -> None:
        slot.blocks -= blocks
        self.used_bytes -= blocks * slot.bb

    # ------------------------------------------------------------ decode
    def start_decode(self, slot: SlotState, now: float, sm_pct: int, parts: int) -> bool:
        """Run one step of every running sequence; preempt the newest while the step's new blocks do not fit."""
        book, step, bt = self.book, slot.step, BLOCK_TOKENS
        self.touch_kv(slot, now)
        for req in slot.pending:
            ctx0 = book.prompt[req] + book.generated[req] - 1
            slot.running[req] = (step, ctx0)
            slot.ctx_sum += ctx0
            slot.phase_count[(step - ctx0) % bt] += 1
            heapq.heappush(slot.finish_heap, (step + book.output[req] - book.generated[req], req))
        slot.pending = []
        need = slot.phase_count[step % bt]
        while slot.running and ((slot.blocks + need) * slot.bb > slot.quota_bytes or self.used_bytes + need * slot.bb > self.pool_bytes):
            need -= self._preempt_newest(slot)
        if not slot.running:
            return False
        slot.blocks += need
        self.used_bytes += need * slot.bb
        n = len(slot.running)
        latency = slot.spec.decode_s(sm_pct, n, round(slot.ctx_sum / n))
        slot.decode_busy = True
        slot.decode_n = n
        slot.decode_parts_used = parts
        self.num_jobs += 1
        self.num_decode_steps += 1
        self._set_sm(now, parts)
        if self.log is not None:
            self.log.append((now, self.spec.id, slot.spec.name, "decode", n))
        self.push(now + latency, DECODE_DONE, self.pos, slot.spec.index)
        return True

    def _preempt_newest(self, slot: SlotState) -> int:
        """Free the newest running sequence for later recomputation; returns 1 if it needed a block this step."""
        book, bt = self.book, BLOCK_TOKENS
        req = next(reversed(slot.running))
        s0, ctx0 = slot.running.pop(req)
        ctx = ctx0 + slot.step - s0
        phase = (s0 - ctx0) % bt
        slot.phase_count[phase] -= 1
        slot.ctx_sum -= ctx
        self._release(slot, -(-ctx // bt))
        book.generated[req] += slot.step - s0
        book.preemptions[req] += 1
        if (-(-(ctx + 1) // bt)) * slot.bb > min(slot.quota_bytes, self.pool_bytes):
            book.drop(req, "kv: sequence outgrew the model's KV quota")  # could never take its next step
        else:
            slot.queue.appendleft(req)
        return 1 if phase == slot.step % bt else 0

    def finish_decode(self, slot: SlotState, now: float) -> None:
        book, bt = self.book, BLOCK_TOKENS
        self.touch_kv(slot, now)
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
            self._release(slot, -(-ctx // bt))
            book.generated[req] += step - s0
            book.finish_s[req] = now
            book.num_open -= 1
        slot.decode_busy = False
        self.num_jobs -= 1
        self._set_sm(now, -slot.decode_parts_used)
