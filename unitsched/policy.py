"""Scheduling policies of a unit, through a small registry; a policy decides, the unit (``UnitView``) executes.

A policy sets the initial per-model KV quotas, the SM budget in 10% parts, which job starts next
(``schedule``, called after every event on the unit) and optionally adapts quotas every ``adapt_period_s``.
The simulator's ``UnitState`` and the engine's ``Scheduler`` both implement ``UnitView`` (``unitsched.unit``).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from muxplan.files import InputError
from unitsched.config import OVERBOOK_PARTS
from unitsched.slot import SlotCore


class SlotSpecView(Protocol):
    """What a policy reads of one model's static placement (``initial_quotas``, ``check``)."""

    index: int
    name: str
    rate_rps: float
    prefill_parts: int
    decode_parts: int

    @property
    def kv_bytes_per_token(self) -> float: ...


class UnitSpecView(Protocol):
    slots: Sequence[SlotSpecView]
    pool_bytes: int


@runtime_checkable
class UnitView(Protocol):
    """What a policy reads of a unit at run time and the calls it makes; the unit executes them."""

    slots: list[SlotCore]
    book: object  # ``arrival_s[req]``: arrival time of a request the unit holds
    sm_used: int
    sm_cap: int
    num_prefills: int
    num_jobs: int
    rr_prefill: int
    rr_decode: int

    def head_fits(self, slot: SlotCore) -> bool: ...

    def start_prefill(self, slot: SlotCore, now: float, sm_pct: int, parts: int) -> None: ...

    def start_decode(self, slot: SlotCore, now: float, sm_pct: int, parts: int) -> bool: ...

    def touch_kv(self, slot: SlotCore, now: float) -> None: ...


class Policy:
    name = "base"
    sm_cap_parts = OVERBOOK_PARTS
    adapt_period_s: float | None = None

    def check(self, layout) -> None:
        """Reject plans (``layout.units[i].slots``) this policy cannot run (raise InputError naming the field)."""

    def initial_quotas(self, unit: UnitSpecView) -> list[int]:
        """Every model may use the whole pool (first come, first served)."""
        return [unit.pool_bytes] * len(unit.slots)

    def schedule(self, unit: UnitView, now: float) -> None:
        raise NotImplementedError

    def adapt(self, unit: UnitView, now: float) -> None:
        """Periodic quota change; none by default."""


ZERO_RATE_SHARE = 0.1


def proportional_quotas(unit: UnitSpecView) -> list[int]:
    """KV quota bytes proportional to rate x KV bytes per token (equal shares when no rates are known). A model
    planned at rate 0 still gets ZERO_RATE_SHARE of the smallest positive weight: with no quota at all every one
    of its requests would be dropped, and ADBS could never grow it (it grows quotas in proportion to them)."""
    weights = [s.rate_rps * s.kv_bytes_per_token for s in unit.slots]
    if sum(weights) <= 0:
        weights = [1.0] * len(unit.slots)
    smallest = min(w for w in weights if w > 0)
    weights = [w if w > 0 else ZERO_RATE_SHARE * smallest for w in weights]
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
    from unitsched import adbs, baselines  # noqa: F401  (registers the policies)

    if name not in POLICIES:
        raise InputError(f"policy: unknown '{name}'; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()
