"""Baseline policies: FCFS and round-robin (the paper's ablation), temporal and spatial multiplexing.

- ``fcfs``: prefills start in arrival order of the models' queue heads, then decodes in order of each
  model's oldest running request; one shared KV pool (first come, first served); SMs overbooked like
  ADBS; no round-robin, no holding decodes back for a waiting prefill, no quota adaptation.
- ``round-robin``: one round-robin over models, each taking its prefill then its decode if they fit;
  static quotas proportional to rate x KV bytes per token.
- ``temporal``: one job per unit at a time on all SMs; prefills first, in arrival order of the models'
  queue heads; otherwise one decode step of the next model round-robin (granting whole decodes FCFS
  would starve every other model for a full generation); one shared KV pool.
- ``spatial``: ``temporal`` on a plan that gives every model its own GPUs (vLLM-like: prefill first).
"""
from __future__ import annotations

from muxplan.files import InputError
from unitsched.config import FULL_PARTS
from unitsched.policy import Policy, UnitSpecView, UnitView, proportional_quotas, register


@register("fcfs")
class Fcfs(Policy):
    def schedule(self, unit: UnitView, now: float) -> None:
        book = unit.book
        jobs = []
        for slot in unit.slots:
            if not slot.prefill_busy and slot.queue:
                jobs.append((book.arrival_s[slot.queue[0]], 0, slot))
            if not slot.decode_busy and (slot.running or slot.pending):
                jobs.append((slot.oldest_arrival(book), 1, slot))
        jobs.sort(key=lambda job: (job[1], job[0], job[2].spec.index))
        for _, kind, slot in jobs:
            if kind == 0:
                parts = slot.spec.prefill_parts
                if unit.sm_used + parts <= unit.sm_cap and unit.head_fits(slot):
                    unit.start_prefill(slot, now, slot.prefill_sm, parts)
            else:
                parts = slot.spec.decode_parts
                if unit.sm_used + parts <= unit.sm_cap:
                    unit.start_decode(slot, now, slot.decode_sm, parts)


@register("round-robin")
class RoundRobin(Policy):
    def initial_quotas(self, unit: UnitSpecView) -> list[int]:
        return proportional_quotas(unit)

    def schedule(self, unit: UnitView, now: float) -> None:
        slots, k = unit.slots, len(unit.slots)
        first = unit.rr_prefill + 1
        for i in range(k):
            slot = slots[(first + i) % k]
            served = False
            if not slot.prefill_busy and slot.queue and unit.sm_used + slot.spec.prefill_parts <= unit.sm_cap and unit.head_fits(slot):
                unit.start_prefill(slot, now, slot.prefill_sm, slot.spec.prefill_parts)
                served = True
            if not slot.decode_busy and (slot.running or slot.pending) and unit.sm_used + slot.spec.decode_parts <= unit.sm_cap:
                served = unit.start_decode(slot, now, slot.decode_sm, slot.spec.decode_parts) or served
            if served:
                unit.rr_prefill = slot.spec.index


@register("temporal")
class Temporal(Policy):
    sm_cap_parts = FULL_PARTS

    def schedule(self, unit: UnitView, now: float) -> None:
        if unit.num_jobs:
            return
        book = unit.book
        waiting = sorted((book.arrival_s[s.queue[0]], s.spec.index, s) for s in unit.slots if s.queue)
        for _, _, slot in waiting:
            if unit.head_fits(slot):
                unit.start_prefill(slot, now, 100, FULL_PARTS)
                return
        slots, k = unit.slots, len(unit.slots)
        for i in range(k):
            slot = slots[(unit.rr_decode + 1 + i) % k]
            if (slot.running or slot.pending) and unit.start_decode(slot, now, 100, FULL_PARTS):
                unit.rr_decode = slot.spec.index
                return


@register("spatial")
class Spatial(Temporal):
    def check(self, layout) -> None:
        for u, unit in enumerate(layout.units):
            if len(unit.slots) != 1:
                names = ", ".join(s.name for s in unit.slots)
                raise InputError(f"plan: units[{u}].models: spatial needs one model per unit, got {names}")
