"""Scheduling policies of a unit, through a small registry; a policy decides, ``UnitState`` executes.

A policy sets the initial per-model KV quotas, the SM budget in 10% parts, which job starts next
(``schedule``, called after every event on the unit) and optionally adapts quotas every ``adapt_period_s``.
"""
from __future__ import annotations

from typing import Callable

from muxplan.files import InputError
from planner.sim.layout import Layout, UnitSpec
from planner.sim.unit import UnitState

OVERBOOK_PARTS = 12  # the paper's runtime lets a unit's jobs overbook SMs to ~120%
FULL_PARTS = 10


class Policy:
    name = "base"
    sm_cap_parts = OVERBOOK_PARTS
    adapt_period_s: float | None = None

    def check(self, layout: Layout) -> None:
        """Reject plans this policy cannot run (raise InputError naming the field)."""

    def initial_quotas(self, unit: UnitSpec) -> list[int]:
        """Every model may use the whole pool (first come, first served)."""
        return [unit.pool_bytes] * len(unit.slots)

    def schedule(self, unit: UnitState, now: float) -> None:
        raise NotImplementedError

    def adapt(self, unit: UnitState, now: float) -> None:
        """Periodic quota change; none by default."""


def proportional_quotas(unit: UnitSpec) -> list[int]:
    """KV quota bytes proportional to rate x KV bytes per token (equal shares when no rates are known)."""
    weights = [s.rate_rps * s.kv_bytes_per_token for s in unit.slots]
    if sum(weights) <= 0:
        weights = [1.0] * len(unit.slots)
    total = sum(weights)
    quotas = [int(unit.pool_bytes * w / total) for w in weights]
    quotas[-1] += unit.pool_bytes - sum(quotas)  # integer rounding: the pool is fully shared out
    return quotas


POLICIES: dict[str, Callable[[], Policy]] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls
    return wrap


def get_policy(name: str) -> Policy:
    from planner.sim import adbs, baselines  # noqa: F401  (registers the policies)

    if name not in POLICIES:
        raise InputError(f"policy: unknown '{name}'; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()
