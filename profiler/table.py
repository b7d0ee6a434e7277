"""CostModel backed by measured profiles: interpolation linear in log(batch) and log(tokens).

Exact at measured points and monotone between neighbours (piecewise linear). Between measured SM
percentages latency is interpolated linearly in SM%. Outside the measured range the model either
extrapolates (``extrapolate=True``: the last segment's log-log slope, never negative, continued) or
raises InputError naming the point; it never silently clamps. ``tp`` must have been measured.
A profile from a device without SM partitioning (``sm_mechanism == "none"``, a CPU, measured at 100%
only) answers for a share s with latency(100%) x 100 / s: the job gets that share of the device's time.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from pathlib import Path

from pydantic import ValidationError

from muxplan.files import InputError, field_path, parse_contract, parse_text, read_text
from muxplan.schema import GpuSpec, ModelSpec, Profile, ProfilePoint

Key = tuple[str, str, int]  # (model, phase, tp)


def _suggest(x: float, measured: list[float]) -> str:
    """A point to measure so that x becomes interpolable: the power of two at or beyond x, away from the measured ones."""
    at = 2 ** math.floor(math.log2(x)) if x < min(measured) else 2 ** math.ceil(math.log2(x))
    return f"{at:g}" if at not in measured else f"{x:g}"


def _interp_1d(xs: list[float], ys: list[float], x: float, extrapolate: bool, what: str) -> float:
    """Piecewise-linear in log x and log y through the points; log-log slope continued outside."""
    if len(xs) == 1:
        if math.isclose(x, xs[0]):
            return ys[0]
        raise InputError(f"{what}: only one measured value ({xs[0]:g}), cannot interpolate to {x:g}; "
                         f"add a point at {what.rsplit(' ', 1)[-1]}={_suggest(x, xs)} to the profile")
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    t = math.log(x)
    if (t < lx[0] - 1e-12 or t > lx[-1] + 1e-12) and not extrapolate:
        raise InputError(f"{what}: {x:g} is outside the measured range {xs[0]:g}..{xs[-1]:g}; "
                         f"add a point at {what.rsplit(' ', 1)[-1]}={_suggest(x, xs)} to the profile")
    i = min(max(bisect.bisect_right(lx, t) - 1, 0), len(lx) - 2)
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    if t < lx[0] or t > lx[-1]:
        slope = max(slope, 0.0)
    return math.exp(ly[i] + slope * (t - lx[i]))


class ProfileTable:
    """One (model, phase, tp) surface: latency_ms over (sm_pct, batch, tokens)."""

    def __init__(self, points: list[ProfilePoint], extrapolate: bool, label: str, time_sliced: bool = False):
        self.extrapolate, self.label, self.time_sliced = extrapolate, label, time_sliced
        grid: dict[int, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for p in points:
            grid[p.sm_pct][p.batch][p.tokens] = p.latency_ms
        self.grid = {sm: {b: dict(sorted(row.items())) for b, row in sorted(rows.items())} for sm, rows in sorted(grid.items())}
        self.sms = sorted(self.grid)

    def _at_sm(self, sm: int, batch: float, tokens: float) -> float:
        rows = self.grid[sm]
        # a batch measured at one token count only (the largest batches, capped by prefill tokens) answers for
        # that count alone; the other batches carry the surface there
        usable = [b for b in rows if len(rows[b]) > 1 or math.isclose(next(iter(rows[b])), tokens)] or list(rows)[:1]
        ys = [_interp_1d(list(rows[b]), list(rows[b].values()), tokens, self.extrapolate, f"{self.label} sm={sm} batch={b} tokens") for b in usable]
        return _interp_1d(usable, ys, batch, self.extrapolate, f"{self.label} sm={sm} batch")

    def latency_ms(self, sm_pct: float, batch: float, tokens: float) -> float:
        sms = self.sms
        if self.time_sliced and sms == [100]:
            # no SM partitioning on this device (a CPU): a share of it is a share of its time
            return self._at_sm(100, batch, tokens) * 100.0 / sm_pct
        if sm_pct in self.grid:
            return self._at_sm(int(sm_pct), batch, tokens)
        if not sms[0] <= sm_pct <= sms[-1]:
            if not self.extrapolate or len(sms) < 2:
                raise InputError(f"{self.label}: sm_pct {sm_pct:g} is outside the measured range {sms[0]}..{sms[-1]}; "
                                 f"add points at sm_pct={sm_pct:g} (profile --sm)")
            lo, hi = (sms[0], sms[1]) if sm_pct < sms[0] else (sms[-2], sms[-1])
        else:
            hi = sms[bisect.bisect_right(sms, sm_pct)]
            lo = sms[sms.index(hi) - 1]
        a, b = self._at_sm(lo, batch, tokens), self._at_sm(hi, batch, tokens)
        return max(a + (b - a) * (sm_pct - lo) / (hi - lo), 1e-6)


def _spec_name(ref: str) -> str:
    """Profiles made from a model folder name the folder; cost queries carry the spec's name."""
    from muxplan.catalog import get_model

    try:
        return get_model(ref).name
    except InputError:
        return ref


class TableCostModel:
    """CostModel over profiles of one GPU type; (model, gpu) pairs not profiled go to ``fallback``."""

    def __init__(self, profiles: list[Profile], extrapolate: bool = True, fallback=None):
        by_key: dict[tuple[str, str], dict[Key, list[ProfilePoint]]] = defaultdict(lambda: defaultdict(list))
        sliced: set[tuple[str, str]] = set()
        for prof in profiles:
            name = _spec_name(prof.model)
            if prof.sm_mechanism == "none":
                sliced.add((prof.gpu, name))
            for p in prof.points:
                by_key[(prof.gpu, name)][(name, p.phase, p.tp)].append(p)
        self.tables = {
            pair: {key: ProfileTable(pts, extrapolate, f"profile {pair[1]} on {pair[0]} {key[1]} tp={key[2]}", pair in sliced)
                   for key, pts in keys.items()}
            for pair, keys in by_key.items()
        }
        self.fallback = fallback

    def covers(self, model: ModelSpec, gpu: GpuSpec) -> bool:
        return (gpu.name, model.name) in self.tables

    def _table(self, model: ModelSpec, gpu: GpuSpec, phase: str, tp: int) -> ProfileTable | None:
        tables = self.tables.get((gpu.name, model.name))
        if tables is None:
            if self.fallback is None:
                raise InputError(f"no profile for model '{model.name}' on GPU '{gpu.name}'")
            return None
        table = tables.get((model.name, phase, tp))
        if table is None:
            measured = sorted({k[2] for k in tables})
            raise InputError(f"profile {model.name} on {gpu.name}: tp={tp} not measured (measured: {measured})")
        return table

    def prefill_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, prompt_tokens: int) -> float:
        table = self._table(model, gpu, "prefill", tp)
        if table is None:
            return self.fallback.prefill_ms(model, gpu, tp, sm_pct, batch, prompt_tokens)
        return table.latency_ms(sm_pct, batch, prompt_tokens)

    def decode_ms(self, model: ModelSpec, gpu: GpuSpec, tp: int, sm_pct: float, batch: int, context_tokens: int) -> float:
        table = self._table(model, gpu, "decode", tp)
        if table is None:
            return self.fallback.decode_ms(model, gpu, tp, sm_pct, batch, context_tokens)
        return table.latency_ms(sm_pct, batch, context_tokens)


def reference_to_profiles(path: str | Path, gpu: str = "A100-80GB") -> list[Profile]:
    """Convert the MuxServe reference layout (model -> tp -> sm -> batch -> seq -> {prefill, decoding} ms; -1 = not measured)."""
    p = Path(path)
    data = parse_text(p, read_text(p), p.suffix.lower() in (".yaml", ".yml"))
    if not isinstance(data, dict):
        raise InputError(f"{p}: (root): expected model -> tp -> sm -> batch -> seq_len mapping")
    profiles = []
    for model, by_tp in data.items():
        points, where = [], str(model)
        try:
            for tp, by_sm in by_tp.items():
                for sm, by_batch in by_sm.items():
                    for batch, by_seq in by_batch.items():
                        for seq, values in by_seq.items():
                            where = f"{model}.{tp}.{sm}.{batch}.{seq}"
                            for phase, name in (("prefill", "prefill"), ("decode", "decoding")):
                                ms = values.get(name, -1)
                                if ms is not None and ms > 0:
                                    points.append(ProfilePoint(phase=phase, tp=int(tp), sm_pct=int(sm), batch=int(batch), tokens=int(seq), latency_ms=float(ms)))
            if points:
                profiles.append(Profile(gpu=gpu, model=str(model), dtype="float16", engine="muxserve-vllm-0.2 (reference)", points=points))
        except ValidationError as err:
            e = err.errors()[0]
            raise InputError(f"{p}: {where}: {field_path(e['loc'])}: {e['msg']}") from None
        except (AttributeError, ValueError, TypeError, OverflowError) as exc:
            raise InputError(f"{p}: {where}: malformed entry ({str(exc).splitlines()[0][:200]})") from None
    return profiles


def load_profiles(path: str | Path, gpu: str | None = None) -> list[Profile]:
    """Profiles from a profile file, a directory of them, or a reference-format file."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".yaml", ".yml"))
        if not files:
            raise InputError(f"{p}: no profile files (*.json, *.yaml)")
        return [prof for f in files for prof in load_profiles(f, gpu)]
    if not p.is_file():
        raise InputError(f"{p}: no such profile file or directory")
    data = parse_text(p, read_text(p), p.suffix.lower() in (".yaml", ".yml"))
    if isinstance(data, dict) and "schema_version" in data:
        return [parse_contract(p, data, Profile)]
    return reference_to_profiles(p, gpu or "A100-80GB")
