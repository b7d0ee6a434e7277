"""ADBS-style admission for stock vLLM backends: per-model in-flight quotas that follow utilisation.

Quotas start at the plan's sequence quota (sum of max_num_seqs over a model's replicas). Every
``period_s`` the policy looks at each model's peak in-flight requests over the period: models at >= 90%
of their quota take 10% more, paid by models with slack in proportion to their slack, so the total
stays constant (DESIGN §3, step 4). The router (mechanism) only asks ``admit``/``release``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from unitsched.config import ADBS_GROW as STEP
from unitsched.config import ADBS_HOT_UTIL as HOT_UTILISATION
from unitsched.config import ADBS_PERIOD_S


@dataclass
class Admission:
    quotas: dict[str, int]
    period_s: float = ADBS_PERIOD_S
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    last_adapt: float = field(default_factory=time.monotonic)

    def admit(self, model: str) -> bool:
        self._maybe_adapt()
        if self.in_flight.get(model, 0) >= self.quotas[model]:
            return False
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.peak[model] = max(self.peak.get(model, 0), self.in_flight[model])
        return True

    def release(self, model: str) -> None:
        self.in_flight[model] -= 1

    def _maybe_adapt(self) -> None:
        now = time.monotonic()
        if now - self.last_adapt >= self.period_s:
            self.adapt()
            self.last_adapt = now

    def adapt(self) -> None:
        """Move quota from models with slack to models at >= 90% utilisation."""
        util = {m: self.peak.get(m, 0) / q for m, q in self.quotas.items() if q > 0}
        hot = [m for m, u in util.items() if u >= HOT_UTILISATION]
        slack = {m: self.quotas[m] - self.peak.get(m, 0) for m, u in util.items() if u < HOT_UTILISATION and self.quotas[m] > 1}
        want = sum(max(1, round(self.quotas[m] * STEP)) for m in hot)
        total_slack = sum(slack.values())
        if hot and total_slack > 0:
            give = min(want, total_slack)
            taken = 0
            for m, s in sorted(slack.items()):
                take = min(s, self.quotas[m] - 1, round(give * s / total_slack))
                self.quotas[m] -= take
                taken += take
            for k, m in enumerate(sorted(hot)):
                self.quotas[m] += taken // len(hot) + (1 if k < taken % len(hot) else 0)
        self.peak = dict(self.in_flight)
