"""The mechanism of one LLM unit that the simulator and the engine share; policies drive it (``UnitView``).

Admission against each model's KV quota and the unit's pool, prefill batching under the token budget, SM
parts (a unit may overbook them), newest-first preemption with its requeue-or-drop rule, and job counters.
A subclass says how a started job runs (``run_job``: an event on the simulator's heap, a job for the
engine's model runner) and keeps its own per-request state behind ``context_tokens``/``grant``/``drop``.
"""
from __future__ import annotations

from unitsched.config import PREFILL_TOKEN_BUDGET

DROP_TOO_LARGE = "kv: request larger than the model's KV quota"
DROP_OUTGREW = "kv: sequence outgrew the model's KV quota"


class UnitCore:
    def __init__(self, slots: list, pool_bytes: int, sm_cap_parts: int, log: list | None, unit_id: int = 0):
        self.slots = slots
        self.unit_id = unit_id
        self.pool_bytes = pool_bytes
        self.used_bytes = 0
        self.sm_cap = sm_cap_parts
        self.sm_used = 0
        self.sm_area = 0.0  # part-seconds of SMs held (for utilisation samples)
        self.sm_t = 0.0
        self.num_prefills = 0
        self.num_jobs = 0
        self.rr_prefill = -1
        self.rr_decode = -1
        self.log = log  # (time, unit id, model, "prefill"/"decode", batch) and (..., "preempt", request)
        self.num_decode_steps = 0
        self.num_prefill_batches = 0

    # ------------------------------------------------------------ what a subclass provides
    def context_tokens(self, req: int) -> int:
        """Tokens a (re)started request needs in its KV blocks: prompt plus output so far."""
        raise NotImplementedError

    def drop(self, slot, req: int, reason: str) -> None:
        raise NotImplementedError

    def run_job(self, slot, kind: str, batch: list[int], tokens: int, now: float, sm_pct: int) -> None:
        """Execute a started job; ``tokens`` = prompt tokens (prefill) or cached context (decode) of the batch."""
        raise NotImplementedError

    def grant(self, slot, req: int, blocks: int) -> None:
        slot.blocks += blocks
        self.used_bytes += blocks * slot.bb

    def release(self, slot, blocks: int) -> None:
        slot.blocks -= blocks
        self.used_bytes -= blocks * slot.bb

    # ------------------------------------------------------------ admission
    def fits(self, slot, blocks: int) -> bool:
        """True when ``blocks`` more blocks fit the model's quota and the unit's pool."""
        need = blocks * slot.bb
        return slot.blocks * slot.bb + need <= slot.quota_bytes and self.used_bytes + need <= self.pool_bytes

    def head_fits(self, slot) -> bool:
        """True when the queue head can be admitted; drops heads that can never fit the model's quota."""
        while slot.queue:
            req = slot.queue[0]
            need = -(-self.context_tokens(req) // slot.bt) * slot.bb
            if need > slot.quota_bytes or need > self.pool_bytes:
                slot.queue.popleft()
                self.drop(slot, req, DROP_TOO_LARGE)
                continue
            return (slot.seats < slot.spec.max_num_seqs and slot.blocks * slot.bb + need <= slot.quota_bytes
                    and self.used_bytes + need <= self.pool_bytes)
        return False

    def touch_kv(self, slot, now: float) -> None:
        slot.touch_kv(now)

    def _set_sm(self, now: float, delta: int) -> None:
        self.sm_area += self.sm_used * (now - self.sm_t)
        self.sm_t = now
        self.sm_used += delta

    # ------------------------------------------------------------ jobs
    def start_prefill(self, slot, now: float, sm_pct: int, parts: int) -> None:
        """Batch queued prompts (up to the token budget, the seat cap and the KV quota) into one pass."""
        batch, tokens = [], 0
        slot.touch_kv(now)
        while slot.queue and self.head_fits(slot):
            req = slot.queue[0]
            ctx = self.context_tokens(req)
            if batch and tokens + ctx > PREFILL_TOKEN_BUDGET:
                break
            slot.queue.popleft()
            self.grant(slot, req, -(-ctx // slot.bt))
            batch.append(req)
            slot.in_prefill.append(req)
            tokens += ctx
        if not batch:
            return
        slot.prefill_busy = True
        slot.prefill_parts_used = parts
        self.num_prefills += 1
        self.num_prefill_batches += 1
        self._begin(slot, "prefill", len(batch), now, parts)
        self.run_job(slot, "prefill", batch, tokens, now, sm_pct)

    def launch_decode(self, slot, batch: list[int], context_tokens: int, now: float, sm_pct: int, parts: int) -> None:
        # ``_begin`` inlined: once per decode step, the simulator's hot path
        slot.decode_busy = True
        slot.decode_parts_used = parts
        self.num_decode_steps += 1
        self.num_jobs += 1
        self.sm_area += self.sm_used * (now - self.sm_t)
        self.sm_t = now
        self.sm_used += parts
        if self.log is not None:
            self.log.append((now, self.unit_id, slot.spec.name, "decode", len(batch)))
        self.run_job(slot, "decode", batch, context_tokens, now, sm_pct)

    def _begin(self, slot, kind: str, n: int, now: float, parts: int) -> None:
        self.num_jobs += 1
        self._set_sm(now, parts)
        if self.log is not None:
            self.log.append((now, self.unit_id, slot.spec.name, kind, n))

    def end_prefill(self, slot, now: float) -> None:
        slot.in_prefill = []
        slot.prefill_busy = False
        self.num_prefills -= 1
        self.num_jobs -= 1
        self._set_sm(now, -slot.prefill_parts_used)

    def end_decode(self, slot, now: float) -> None:
        slot.decode_busy = False
        self.num_jobs -= 1
        self.sm_area += self.sm_used * (now - self.sm_t)  # ``_set_sm`` inlined (once per decode step)
        self.sm_t = now
        self.sm_used -= slot.decode_parts_used

    # ------------------------------------------------------------ preemption
    def requeue_or_drop(self, slot, req: int, num_tokens: int, now: float) -> None:
        """A preempted request with ``num_tokens`` (its blocks already released) is recomputed later, first in
        its queue, unless its next step could never fit the model's quota or the pool."""
        if self.log is not None:
            self.log.append((now, self.unit_id, slot.spec.name, "preempt", req))
        if -(-(num_tokens + 1) // slot.bt) * slot.bb > min(slot.quota_bytes, self.pool_bytes):
            self.drop(slot, req, DROP_OUTGREW)
        else:
            slot.queue.appendleft(req)
