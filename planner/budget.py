"""Deterministic solver budgets: the same inputs and seed give the same plan on a quiet machine and a busy one.

Every stop decision of the planners (column generation rounds, the integer master's node limit, the closed loop's
rounds, greedy's candidates) reads counted work, never the clock. A unit of work is about a millisecond of one core
of the reference machine (the 2-core CPU sandbox bench/RESULTS.md measures on, quiet), so ``--time-limit`` seconds
are ``WORK_PER_S`` x that many units, LIMIT_SHARE of which are spent (for_limit), and a solve on that machine ends
within its limit. Each part charges by what it
can count (planner.pricing: rows bounded and rated; LPs and the integer master: their size and nodes; the simulator:
requests replayed; greedy: units evaluated), with coefficients fitted by ``python -m bench.fit_work``.

The wall clock is only a safety stop, at SAFETY x the limit: a machine that much slower (or that busy) than the
reference. Such a stop is not reproducible, so the budget records it and the plan's status says so.
"""
from __future__ import annotations

import time

WORK_PER_S = 1000.0
SAFETY = 3.0
LIMIT_SHARE = 0.9  # of a --time-limit spent as counted work: the rest absorbs what the counts miss (per-call fit
# errors, run-to-run speed of a shared host: +-15% between quiet runs of bench.fit_work), so a solve ends within it


class Budget:
    """Work units to spend, what was charged, and the wall-clock safety stop shared with every sub-budget."""

    def __init__(self, seconds: float, parent: "Budget | None" = None):
        self.total_units = max(0.0, seconds) * WORK_PER_S
        self.used_units = 0.0
        self.parent = parent
        self.wall_deadline = parent.wall_deadline if parent else time.perf_counter() + SAFETY * max(0.0, seconds)
        self._wall_stopped = False

    def charge(self, units: float) -> None:
        self.used_units += units
        if self.parent:
            self.parent.charge(units)

    @property
    def left_s(self) -> float:
        return max(0.0, self.total_units - self.used_units) / WORK_PER_S

    def exhausted(self) -> bool:
        if self.used_units >= self.total_units:
            return True
        if time.perf_counter() > self.wall_deadline:
            self._mark_wall()
            return True
        return False

    def _mark_wall(self) -> None:
        self._wall_stopped = True
        if self.parent:
            self.parent._mark_wall()

    @property
    def wall_stopped(self) -> bool:
        """Whether the wall-clock safety stop cut work short (anywhere under this budget): not reproducible."""
        return self._wall_stopped

    @property
    def wall_left_s(self) -> float:
        return max(0.0, self.wall_deadline - time.perf_counter())

    def share(self, fraction: float) -> "Budget":
        """A sub-budget of ``fraction`` of what is left; its charges count here too."""
        return Budget(fraction * self.left_s, parent=self)

    def at_most(self, seconds: float) -> "Budget":
        """A sub-budget of ``seconds`` (no more than what is left)."""
        return Budget(min(seconds, self.left_s), parent=self)


def for_limit(seconds: float) -> Budget:
    """The budget of a time limit: LIMIT_SHARE of it as counted work, the safety stop at SAFETY x the whole limit."""
    budget = Budget(seconds)
    budget.total_units *= LIMIT_SHARE
    return budget


def as_budget(limit: "Budget | float") -> Budget:
    """A Budget from a Budget or a number of seconds."""
    return limit if isinstance(limit, Budget) else Budget(float(limit))
