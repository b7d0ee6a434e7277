"""ADBS-style admission for stock vLLM backends: per-model in-flight quotas that follow utilisation.

Quotas start at the plan's sequence quota (sum of max_num_seqs over a model's replicas). Every
``period_s`` the policy looks at each model's peak in-flight requests over the period: models at >= 90%
of their quota take 10% more, paid by models with slack in proportion to their slack, so the total
stays constant (DESIGN §3, step 4). The router (mechanism) only asks ``admit``/``release``, or waits
for a slot in a bounded per-model queue with ``slot`` (one context that always gives the slot back).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from unitsched.config import ADBS_GROW as STEP
from unitsched.config import ADBS_HOT_UTIL as HOT_UTILISATION
from unitsched.config import ADBS_PERIOD_S


class QueueFull(Exception):
    """The model's queue of waiting requests is at its bound (-> 429)."""


class QueueTimeout(Exception):
    """A queued request waited longer than the queue timeout (-> 504)."""


@dataclass
class Admission:
    quotas: dict[str, int]
    period_s: float = ADBS_PERIOD_S
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    last_adapt: float = field(default_factory=time.monotonic)
    waiters: dict[str, deque] = field(default_factory=dict)

    def admit(self, model: str) -> bool:
        self._maybe_adapt()
        if self.in_flight.get(model, 0) >= self.quotas[model]:
            return False
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.peak[model] = max(self.peak.get(model, 0), self.in_flight[model])
        return True

    def release(self, model: str) -> None:
        """Hand the slot to the oldest waiter if there is one (in flight stays), else free it."""
        q = self.waiters.get(model)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.in_flight[model] -= 1

    async def wait(self, model: str, queue_depth: int, timeout_s: float) -> None:
        """A slot after waiting in the model's queue (at most ``queue_depth`` waiting, ``timeout_s`` each)."""
        q = self.waiters.setdefault(model, deque())
        if sum(not f.done() for f in q) >= queue_depth:
            raise QueueFull
        fut = asyncio.get_running_loop().create_future()
        q.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(fut)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.release(model)  # granted while we gave up: pass it on
            else:
                fut.cancel()
            if isinstance(exc, TimeoutError):
                raise QueueTimeout from None
            raise
        finally:
            if fut in q:
                q.remove(fut)

    def slot(self, model: str, queue_depth: int = 0, timeout_s: float = 0.0) -> "Slot":
        """``async with`` holds one admission slot for its body; released on every exit path."""
        return Slot(self, model, queue_depth, timeout_s)

    def queued(self, model: str) -> int:
        return sum(not f.done() for f in self.waiters.get(model, ()))

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


class Slot:
    """Admission as an async context (a class, not a generator: it runs on every request)."""

    __slots__ = ("adm", "model", "queue_depth", "timeout_s")

    def __init__(self, adm: Admission, model: str, queue_depth: int, timeout_s: float):
        self.adm, self.model, self.queue_depth, self.timeout_s = adm, model, queue_depth, timeout_s

    async def __aenter__(self) -> None:
        if not self.adm.admit(self.model):
            await self.adm.wait(self.model, self.queue_depth, self.timeout_s)

    async def __aexit__(self, *exc) -> None:
        self.adm.release(self.model)
