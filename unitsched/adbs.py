"""ADBS, adaptive batch scheduling (the MuxServe paper's unit scheduler), for the simulator and the engine alike.

1. Prefill first, round-robin over models starting after the last one served; a prefill starts only if
   its job is idle, its SM parts fit and the model's KV quota admits the queue head.
2. While a prefill waits for SM parts and none is running, no new decode starts (the SMs drain for it).
3. Otherwise decodes start round-robin; each takes every running sequence (admission kept them within
   the model's quota and sequence cap).
4. Quotas start proportional to rate x KV bytes per token. Every ``adapt_period_s`` each model's
   utilisation u = (time-average KV bytes held over the period) / quota is measured; models with
   u >= ``hot_util`` take ``grow`` x their quota in total from models with slack (u < hot_util),
   each donor giving in proportion to its slack (1 - u) x quota, never below what it holds now nor
   below ``floor`` x its initial quota (a cold model must keep room for a long request).
"""
from __future__ import annotations

from unitsched.config import ADBS_FLOOR, ADBS_GROW, ADBS_HOT_UTIL, ADBS_PERIOD_S
from unitsched.policy import Policy, UnitSpecView, UnitView, proportional_quotas, register


@register("adbs")
class Adbs(Policy):
    adapt_period_s = ADBS_PERIOD_S
    hot_util = ADBS_HOT_UTIL
    grow = ADBS_GROW
    floor = ADBS_FLOOR

    def initial_quotas(self, unit: UnitSpecView) -> list[int]:
        return proportional_quotas(unit)

    def schedule(self, unit: UnitView, now: float) -> None:
        slots, k = unit.slots, len(unit.slots)
        waiting = False
        first = unit.rr_prefill + 1
        for i in range(k):
            slot = slots[(first + i) % k]
            if slot.prefill_busy or not slot.queue:
                continue
            parts = slot.spec.prefill_parts
            if unit.sm_used + parts > unit.sm_cap:
                waiting = True
                continue
            if unit.head_fits(slot):
                unit.start_prefill(slot, now, slot.prefill_sm, parts)
                unit.rr_prefill = slot.spec.index
        if waiting and unit.num_prefills == 0:
            return
        first = unit.rr_decode + 1
        for i in range(k):
            slot = slots[(first + i) % k]
            if slot.decode_busy or not (slot.running or slot.pending):
                continue
            parts = slot.spec.decode_parts
            if unit.sm_used + parts <= unit.sm_cap and unit.start_decode(slot, now, slot.decode_sm, parts):
                unit.rr_decode = slot.spec.index

    def adapt(self, unit: UnitView, now: float) -> None:
        period = self.adapt_period_s
        for s in unit.slots:
            unit.touch_kv(s, now)
        utils = [s.kv_area * s.bb / (s.quota_bytes * period) if s.quota_bytes else 1.0 for s in unit.slots]
        for s in unit.slots:
            s.kv_area = 0.0
        hot = [s for s, u in zip(unit.slots, utils) if u >= self.hot_util]
        donors = [(s, (1.0 - u) * s.quota_bytes) for s, u in zip(unit.slots, utils) if u < self.hot_util]
        slack = sum(w for _, w in donors)
        if not hot or slack <= 0:
            return
        want = self.grow * sum(s.quota_bytes for s in hot)
        given = 0
        for donor, weight in donors:
            keep = max(donor.blocks * donor.bb, int(self.floor * donor.initial_quota_bytes))
            give = min(int(want * weight / slack), donor.quota_bytes - keep)
            if give > 0:
                donor.quota_bytes -= give
                given += give
        hot_total = sum(s.quota_bytes for s in hot)
        # in proportion to their quotas; equally when every hot quota is 0 (a model routed no rate)
        shares = [int(given * s.quota_bytes / hot_total) if hot_total else given // len(hot) for s in hot]
        shares[-1] += given - sum(shares)
        for s, share in zip(hot, shares):
            s.quota_bytes += share
