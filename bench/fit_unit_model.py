"""Fit the unit model's free constants against simulator runs; report the error on instances the fit never saw.

The unit model (planner.estimator, planner.tables, planner.latency) predicts, for a fixed plan at rate scale s,
the served rate, the SLO attainment and the headroom (the largest s at 99% attainment). Its constants:

    DRAIN_FACTOR  drain before a full-SM prefill, x the longest decode step          (planner.tables)
    TPOT_MARGIN   TPOT limit = TPOT_MARGIN x SLO scale x isolated TPOT               (planner.tables)
    UTIL_CAP      largest busy share of a decode job or of the prefill path          (planner.estimator)
    CS2           squared CV of the stall service time in the Kingman wait           (planner.latency)
    BURST         weight of the arrival CV^2 in the Kingman wait                     (planner.latency)

Instances: training = the size-ordered half of the paper sweep (bench.paper_plans grid), two of its instances with
gamma arrivals of CV 3 and 4 (the sweep is all Poisson, and a burst term cannot be fitted without bursts) and the
demo (examples/paper19's plan, simulated on the demo's 60 s trace); held out = the shuffled half and the three
held-out instances of bench.slo_sweep (other mixes, GPUs, gamma CV 2 arrivals, the Azure code trace), on the
sweep's 60 s traces. Each instance's plan is solved once (exact, objective goodput, no closed loop) under the
constants in the code and then fixed; the simulator replays it at the rate scales of planner.sim.capacity's
max-rate search (those probes and the plan are cached under bench/results/fit_cache/). For each candidate value
of the constants the unit model re-predicts every fixed plan (its options rebuilt under the candidate) at every
probed scale, and

    loss = mean_i |served_pred_i(1) - served_sim_i(1)| / served_sim_i(1)                (served-rate error at x1)
         + mean_i mean_s |SLO_pred_i(s) - SLO_sim_i(s)|                                 (attainment over the probes)
         + HEADROOM_WEIGHT x mean_i |ln(h_pred_i / h_sim_i)|     (h clipped to [1/16, 16], the search's range)

over the training instances is minimised by coordinate search over each constant's grid (passes until no move).
h_pred is the SLO headroom: the same bracket-and-bisect search as the simulator's, on predicted attainment. The
capacity headroom (the solver's: the largest s at which every unit still serves s x its routed rates under the LP's
caps) is reported next to it. Usage:

    python -m bench.fit_unit_model [--fresh] [--train-duration 60] [--duration 60] [--time-limit 10] [--steps 4]

Writes bench/results/unit_model_fit.json and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench/results/fit_cache"
MIN_SCALE, MAX_SCALE = 1 / 16, 16.0
TARGET = 0.99
HEADROOM_WEIGHT = 0.25
FIT_DRAWS = 8  # planner.latency.DRAWS while searching (4x faster); the reported errors use the model's own DRAWS
GRIDS = {
    "DRAIN_FACTOR": (0.0, 0.1, 0.25, 0.5, 0.75),
    "TPOT_MARGIN": (0.6, 0.75, 0.9, 1.0),
    "UTIL_CAP": (0.9, 0.95, 0.98, 1.0),
    "CS2": (0.0, 0.25, 1.0),
    "BURST": (0.5, 1.0, 2.0, 4.0),
}


HAND_SET = {"DRAIN_FACTOR": 0.5, "TPOT_MARGIN": 0.75, "UTIL_CAP": 0.95, "CS2": 0.25, "BURST": 1.0}  # before any fit


def current_constants() -> dict[str, float]:
    import planner.estimator
    import planner.latency
    import planner.tables

    mods = (planner.tables, planner.estimator, planner.latency)
    return {name: float(next(getattr(m, name) for m in mods if hasattr(m, name))) for name in GRIDS}


@contextmanager
def constants(**values: float):
    """Set the unit model's constants in every loaded planner module that binds them (and drop the option tables)."""
    import planner.tables

    saved = []
    for name, value in values.items():
        hit = False
        for mod_name, mod in list(sys.modules.items()):
            if mod_name.startswith("planner") and mod is not None and hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, value)
                hit = True
        if not hit:
            raise KeyError(f"no planner module defines {name}")
    planner.tables._CACHE.clear()
    try:
        yield
    finally:
        for mod, name, value in reversed(saved):
            setattr(mod, name, value)
        planner.tables._CACHE.clear()


# ---- instances ----------------------------------------------------------------------------------------------------

def _sweep_grid(order: str):
    """bench.paper_plans.grid at its defaults (the sweep's 5 alphas x 4 scales) for one rank order."""
    from bench.paper_plans import add_grid_args, grid

    ap = argparse.ArgumentParser()
    add_grid_args(ap)
    return list(grid(ap.parse_args(["--orders", order])))


def training_instances(duration_s: float):
    """(label, planning workload, simulated workload, cluster): the size-ordered paper sweep and the demo."""
    from bench.paper_plans import PAPER_COUNTS
    from muxplan.cluster import load_cluster
    from muxplan.schema import Arrivals
    from muxplan.workload import load_workload, synthesize

    cluster = load_cluster("4x8xA100-80GB")
    out = []
    for order, alpha, s in _sweep_grid("size"):
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * s, duration_s=duration_s, seed=1, order=order)
        out.append((f"paper-{order}-a{alpha:g}-s{s:g}-d{duration_s:g}", wl, wl, cluster))
    for alpha, s, cv in BURSTY_TRAINING:  # the sweep is all Poisson: a burst term needs bursty training instances
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * s, duration_s=duration_s, seed=1, order="size",
                        arrivals=Arrivals(process="gamma", cv=cv))
        out.append((f"paper-size-a{alpha:g}-s{s:g}-cv{cv:g}-d{duration_s:g}", wl, wl, cluster))
    demo = load_workload(ROOT / "examples/paper19/workload.yaml")
    trace = synthesize(PAPER_COUNTS, 0.9, top_rate=40.0, duration_s=60.0, seed=1, order="size")
    out.append(("demo-paper19", demo, trace, load_cluster(str(ROOT / "examples/paper19/cluster.yaml"))))
    return out


def held_out_instances(duration_s: float):
    """The shuffled paper sweep and bench.slo_sweep's held-out instances, on the sweep's traces."""
    from bench.paper_plans import PAPER_COUNTS
    from bench.slo_sweep import held_out
    from muxplan.cluster import load_cluster
    from muxplan.workload import synthesize

    cluster = load_cluster("4x8xA100-80GB")
    out = []
    for order, alpha, s in _sweep_grid("shuffled"):
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * s, duration_s=duration_s, seed=1, order=order)
        out.append((f"paper-{order}-a{alpha:g}-s{s:g}", wl, wl, cluster))
    out += [(label, wl, wl, cl) for label, wl, cl in held_out(duration_s)]
    return out


def simulated(label, plan_wl, sim_wl, cluster, cost, time_limit_s: float, steps: int, fresh: bool = False) -> dict:
    """The instance's fixed plan and its simulated probes (cached on disk)."""
    from planner.sim.capacity import max_rate_scale
    from planner.sim.evaluate import policy_for
    from planner.sim.trace import build_request_table
    from planner.solve import run_solver

    path = CACHE / f"{label}.json"
    if path.exists() and not fresh:
        rec = json.loads(path.read_text())
        if rec.get("steps") == steps and rec.get("time_limit_s") == time_limit_s:
            return rec
    t0 = time.perf_counter()
    plan = run_solver("exact", plan_wl, cluster, cost, objective="goodput", time_limit_s=time_limit_s)
    solve_s = time.perf_counter() - t0
    table = build_request_table(sim_wl)
    k = sim_wl.models[0].slo.scale
    cap = max_rate_scale(plan, sim_wl, table, cost, policy_for(plan.solver.method, plan), k, steps=steps)
    rec = {"label": label, "steps": steps, "time_limit_s": time_limit_s, "solve_s": solve_s, "sim_s": time.perf_counter() - t0 - solve_s,
           "num_requests": table.num_requests, "slo_scale": k, "window_s": float(table.arrival_s[-1] - table.arrival_s[0]), "solver_headroom": plan.solver.headroom,
           "max_rate_scale": cap.rate_scale, "bracket": [cap.bracket[0], min(cap.bracket[1], 1e9)],
           "probes": [{"scale": p.rate_scale, "slo": p.overall.slo_attainment, "rps": p.overall.throughput_rps} for p in cap.probes],
           "plan": plan.model_dump(mode="json")}
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec) + "\n")
    return rec


BURSTY_TRAINING = ((1.3, 0.75, 3.0), (0.9, 0.5, 4.0))  # (alpha, scale, gamma arrival CV) in the size order
SUSTAINED = ("paper-size-a0.7-s0.5", "paper-size-a0.9-s0.75", "paper-size-a1.3-s0.5", "paper-size-a1.7-s1")


def sustained(label: str, rec: dict, cost, steps: int, duration_s: float = 60.0, fresh: bool = False) -> dict:
    """The same plan at a sustained rate scale: a fresh trace of ``duration_s`` seconds at s x the rates (so the window
    stays ``duration_s`` at every scale), instead of the sweep's replay of one trace compressed by s (whose window
    shrinks to duration / s: at x8 a 60 s trace is 7.5 s of arrivals, fewer than one batch of lifetimes)."""
    from bench.paper_plans import PAPER_COUNTS
    from muxplan.schema import Plan
    from muxplan.workload import synthesize
    from planner.sim.engine import run_table
    from planner.sim.metrics import summarize
    from planner.sim.trace import build_request_table

    if "sustained" in rec and not fresh:
        return rec["sustained"]
    _, order, a, sc = label.split("-")[:4]
    alpha, scale = float(a[1:]), float(sc[1:])
    plan = Plan.model_validate(rec["plan"])
    probes = []

    def ok(x):
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * scale * x, duration_s=duration_s, seed=1, order=order)
        summary = summarize(run_table(plan, wl, build_request_table(wl), cost, "adbs", seed=0, rate_scale=x), wl)
        probes.append({"scale": x, "slo": summary.overall.slo_attainment, "rps": summary.overall.throughput_rps})
        return summary.overall.slo_attainment >= TARGET

    h = search_scale(ok, steps)
    rec["sustained"] = {"max_rate_scale": h, "probes": probes, "duration_s": duration_s}
    (CACHE / f"{rec['label']}.json").write_text(json.dumps(rec) + "\n")
    return rec["sustained"]


# ---- predictions of a fixed plan ----------------------------------------------------------------------------------

@dataclass
class Fixed:
    """A plan's placed models (planner.latency.plan_units), to be re-predicted under any constants."""
    label: str
    units: list  # (GpuSpec, [PlacedDemand])
    demand_rps: float
    unplaced_rps: float
    cost: object
    sim: dict
    window_s: float = 0.0  # arrival span of the simulated trace at x1


def fixed_plan(rec: dict, plan_wl, cost, window_s: float = 0.0) -> Fixed:
    from muxplan.schema import Plan
    from planner.latency import plan_units
    from planner.tables import demands_from_workload

    plan = Plan.model_validate(rec["plan"])
    demands = demands_from_workload(plan_wl)
    units, demand = plan_units(plan, demands)
    placed = {m.name for u in plan.units for m in u.models}
    unplaced = sum(d.rate_rps for d in demands if d.name not in placed)
    return Fixed(rec["label"], units, demand, unplaced, cost, rec, window_s or rec.get("window_s", 0.0))


WINDOW = True  # predict the replayed trace's finite window (planner.latency.backlog_met); False: steady state only


def predict_at(fx: Fixed, scale: float, window: bool | None = None, compressed: bool = True) -> tuple[float, float]:
    """(predicted served req/s, predicted SLO attainment over all demand) of the plan at rate scale ``scale``; with
    ``window`` (default WINDOW) the trace's finite window: arrivals over window_s / scale seconds (window_s at every
    scale when not ``compressed``)."""
    from planner.latency import predict_plan

    window = WINDOW if window is None else window
    w = (fx.window_s / scale if compressed else fx.window_s) if window else 0.0
    return predict_plan(fx.units, fx.demand_rps, fx.cost, scale, w)


def capacity_headroom(fx: Fixed) -> float:
    """The largest s at which every unit serves s x its routed rates within the LP's caps (the solver's headroom for
    this routing): s <= P_max / (q . r) and s <= UTIL_CAP / (d_i r_i + q . r)."""
    from planner.estimator import UTIL_CAP, prefill_limit, stall_costs
    from planner.tables import option_for

    if fx.unplaced_rps > (1 - TARGET) * fx.demand_rps:
        return 0.0
    h = MAX_SCALE * 4
    for gpu, placed in fx.units:
        opts = [option_for(p.demand, gpu, p.tp, p.decode_sm_pct, p.batch, fx.cost) for p in placed]
        pmax = prefill_limit(opts)
        if pmax < 0:
            return 0.0
        load = sum(q * p.rate_rps for q, p in zip(stall_costs(opts), placed))
        if load > 0:
            h = min(h, pmax / load)
        for o, p in zip(opts, placed):
            if p.rate_rps > 0:
                h = min(h, UTIL_CAP / (o.decode_s_per_req * p.rate_rps + load))
    return h


def search_scale(ok: Callable[[float], bool], steps: int) -> float:
    from planner.latency import search_scale as search

    return search(ok, steps, MIN_SCALE, MAX_SCALE)


def slo_headroom(fx: Fixed, steps: int = 6, compressed: bool = True) -> float:
    """planner.latency.predicted_headroom of the fixed plan (on the simulated trace's window when WINDOW)."""
    from planner.latency import predicted_headroom

    return predicted_headroom(fx.units, fx.demand_rps, fx.cost, fx.window_s if WINDOW else 0.0, compressed, steps)


def _log_ratio(pred: float, sim: float) -> float:
    clip = lambda h: min(MAX_SCALE, max(MIN_SCALE, h))  # noqa: E731
    return math.log(clip(pred) / clip(sim))


def instance_errors(fx: Fixed, headroom_steps: int = 6) -> dict:
    """Predicted vs simulated under the constants now set."""
    probes = fx.sim["probes"]
    x1 = next(p for p in probes if p["scale"] == 1.0)
    curve = []
    for p in probes:
        _, att = predict_at(fx, p["scale"])
        curve.append(abs(att - p["slo"]))
    served, att1 = predict_at(fx, 1.0)
    h_slo, h_cap, h_sim = slo_headroom(fx, headroom_steps), capacity_headroom(fx), fx.sim["max_rate_scale"]
    return {"instance": fx.label, "served_pred": served, "served_sim": x1["rps"], "slo_pred": att1, "slo_sim": x1["slo"],
            "served_err": abs(served - x1["rps"]) / max(1e-9, x1["rps"]), "slo_err": abs(att1 - x1["slo"]),
            "curve_err": float(np.mean(curve)), "headroom_sim": h_sim, "headroom_slo": h_slo, "headroom_cap": h_cap,
            "headroom_log_err": _log_ratio(h_slo, h_sim), "headroom_cap_log_err": _log_ratio(h_cap, h_sim)}


def loss(rows: list[dict]) -> float:
    """The training loss of the module docstring over per-instance error rows."""
    return (float(np.mean([r["served_err"] for r in rows])) + float(np.mean([r["curve_err"] for r in rows]))
            + HEADROOM_WEIGHT * float(np.mean([abs(r["headroom_log_err"]) for r in rows])))


MIN_GAIN = 0.002  # a move must lower the loss by this much: flat directions keep the value in the code


def coordinate_search(loss_of: Callable[[dict], float], grids: dict, start: dict, max_passes: int = 3, log=None,
                      min_gain: float = MIN_GAIN) -> tuple[dict, float, list]:
    """Minimise loss_of(values) one constant at a time over its grid, moving to the best value of the grid when it
    beats the current one by more than ``min_gain``, until a pass moves nothing (ties and noise-level gains keep the
    current value). Returns (values, loss, every evaluation in order)."""
    memo: dict[tuple, float] = {}
    trail = []

    def f(values):
        key = tuple(sorted(values.items()))
        if key not in memo:
            memo[key] = loss_of(dict(values))
            trail.append((dict(values), memo[key]))
            if log:
                log(values, memo[key])
        return memo[key]

    best = dict(start)
    best_loss = f(best)
    for _ in range(max_passes):
        moved = False
        for name, grid in grids.items():
            scored = [(f({**best, name: v}), v) for v in grid]
            val, v = min(scored, key=lambda t: t[0])
            if val < best_loss - min_gain:
                best, best_loss, moved = {**best, name: v}, val, True
        if not moved:
            break
    return best, best_loss, trail


def summarise(rows: list[dict]) -> dict:
    def stats(key, absolute=True):
        v = np.array([abs(r[key]) if absolute else r[key] for r in rows])
        return {"worst": float(v.max()), "median": float(np.median(v))}

    ratio = np.exp(np.array([r["headroom_log_err"] for r in rows]))
    cap_ratio = np.exp(np.array([r["headroom_cap_log_err"] for r in rows]))
    return {"served_err": stats("served_err"), "slo_err": stats("slo_err"), "curve_err": stats("curve_err"),
            "headroom_log_err": stats("headroom_log_err"), "headroom_cap_log_err": stats("headroom_cap_log_err"),
            "headroom_ratio_range": [float(ratio.min()), float(ratio.max())],
            "headroom_cap_ratio_range": [float(cap_ratio.min()), float(cap_ratio.max())], "loss": loss(rows)}


def evaluate_all(fixed: list[Fixed], values: dict, headroom_steps: int = 6) -> list[dict]:
    with constants(**values):
        return [instance_errors(fx, headroom_steps) for fx in fixed]


def render(title: str, rows_before: list[dict], rows_after: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("instance", "served pred/sim", "SLO% pred/sim (x1)", "SLO err over probes", "headroom sim",
                "SLO headroom pred (before -> after)", "capacity headroom (before -> after)"):
        t.add_column(col, justify="right")
    for b, a in zip(rows_before, rows_after):
        t.add_row(a["instance"], f"{a['served_pred']:.1f} / {a['served_sim']:.1f}", f"{100 * a['slo_pred']:.1f} / {100 * a['slo_sim']:.1f}",
                  f"{100 * b['curve_err']:.1f} -> {100 * a['curve_err']:.1f}", f"{a['headroom_sim']:.2f}",
                  f"{b['headroom_slo']:.2f} -> {a['headroom_slo']:.2f}", f"{b['headroom_cap']:.2f} -> {a['headroom_cap']:.2f}")
    Console(width=200).print(t)


def render_sustained(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="max rate at 99%: the sweep's compressed replay vs a sustained rate (fresh 60 s trace at s x the rates)")
    for col in ("instance", "sim compressed", "sim sustained", "pred compressed (before -> fitted)",
                "pred sustained (before -> fitted)", "capacity (before -> fitted)"):
        t.add_column(col, justify="right")
    for r in rows:
        b, a = r["before"], r["fitted"]
        t.add_row(r["instance"], f"{r['compressed_sim']:.2f}", f"{r['sustained_sim']:.2f}", f"{b['compressed_pred']:.2f} -> {a['compressed_pred']:.2f}",
                  f"{b['sustained_pred']:.2f} -> {a['sustained_pred']:.2f}", f"{b['capacity']:.2f} -> {a['capacity']:.2f}")
    Console(width=200).print(t)


def _window_s(workload) -> float:
    from planner.sim.trace import build_request_table

    t = build_request_table(workload).arrival_s
    return float(t[-1] - t[0]) if len(t) > 1 else 0.0


def main() -> None:
    from profiler.cost_model import load_cost_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--train-duration", type=float, default=60.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--fresh", action="store_true", help="re-solve and re-simulate instead of reading bench/results/fit_cache")
    ap.add_argument("--only", choices=("train", "held-out"), help="only build (solve + simulate) this set's cache")
    ap.add_argument("--out", default=str(ROOT / "bench/results/unit_model_fit.json"))
    args = ap.parse_args()
    cost = load_cost_model()
    start = time.perf_counter()
    sets = {"train": training_instances(args.train_duration), "held-out": held_out_instances(args.duration)}
    fixed: dict[str, list[Fixed]] = {}
    for name, instances in sets.items():
        if args.only and name != args.only:
            continue
        fixed[name] = []
        for label, plan_wl, sim_wl, cluster in instances:
            rec = simulated(label, plan_wl, sim_wl, cluster, cost, args.time_limit, args.steps, args.fresh)
            print(f"{name} {label}: sim x{rec['max_rate_scale']:.2f} solver headroom {rec['solver_headroom']} "
                  f"({rec['solve_s']:.1f} s solve, {rec['sim_s']:.1f} s simulate)", flush=True)
            window = rec.get("window_s") or _window_s(sim_wl)
            fixed[name].append(fixed_plan(rec, plan_wl, cost, window))
    if args.only:
        return
    sim_s = time.perf_counter() - start
    before, in_code = dict(HAND_SET), current_constants()

    def log(values, val):
        print(f"  loss {val:.4f} at {values}", flush=True)

    best, best_loss, trail = coordinate_search(lambda v: loss(evaluate_all(fixed["train"], {**v, "DRAWS": FIT_DRAWS})), GRIDS, before, log=log)
    result = {"loss": "mean served-rate rel. error at x1 + mean |SLO attainment error| over the probed scales + "
                      f"{HEADROOM_WEIGHT} x mean |ln(predicted / simulated max rate at 99%)| (clipped to [1/16, 16])",
              "before": before, "fitted": best, "in_code": in_code, "train_loss": {"before": trail[0][1], "fitted": best_loss},
              "evaluations": [{"values": v, "loss": l} for v, l in trail], "args": vars(args), "sim_and_cache_s": sim_s}
    for name in ("train", "held-out"):
        rows_b, rows_a = evaluate_all(fixed[name], before), evaluate_all(fixed[name], best)
        result[name] = {"before": {"summary": summarise(rows_b), "rows": rows_b}, "fitted": {"summary": summarise(rows_a), "rows": rows_a}}
        render(f"unit model vs simulator, {name} ({len(rows_a)} instances): before {before} -> fitted {best}", rows_b, rows_a)
    result["sustained"] = []
    for fx in fixed["train"]:
        if any(fx.label.startswith(name + "-d") for name in SUSTAINED):
            sus = sustained(fx.label.rsplit("-d", 1)[0], fx.sim, cost, args.steps)
            row = {"instance": fx.label, "compressed_sim": fx.sim["max_rate_scale"], "sustained_sim": sus["max_rate_scale"]}
            for when, values in (("before", before), ("fitted", best)):
                with constants(**values):
                    row[when] = {"compressed_pred": slo_headroom(fx), "sustained_pred": slo_headroom(fx, compressed=False),
                                 "capacity": capacity_headroom(fx)}
            result["sustained"].append(row)
    render_sustained(result["sustained"])
    result["seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    from rich.console import Console

    c = Console(width=200)
    for name in ("train", "held-out"):
        for when in ("before", "fitted"):
            s = result[name][when]["summary"]
            c.print(f"{name} {when}: loss {s['loss']:.4f}; served err worst {100 * s['served_err']['worst']:.2f}% median "
                    f"{100 * s['served_err']['median']:.2f}%; SLO err x1 worst {100 * s['slo_err']['worst']:.2f} median "
                    f"{100 * s['slo_err']['median']:.2f} points; over probes worst {100 * s['curve_err']['worst']:.2f} median "
                    f"{100 * s['curve_err']['median']:.2f}; SLO headroom pred/sim x{s['headroom_ratio_range'][0]:.2f}..x{s['headroom_ratio_range'][1]:.2f} "
                    f"(|ln| median {s['headroom_log_err']['median']:.2f}); capacity headroom pred/sim "
                    f"x{s['headroom_cap_ratio_range'][0]:.2f}..x{s['headroom_cap_ratio_range'][1]:.2f}")
    c.print(f"fitted {best} (training loss {trail[0][1]:.4f} -> {best_loss:.4f}, searched with DRAWS {FIT_DRAWS}); "
            f"in the code: {in_code}{'' if in_code == best else ' (DIFFERENT from the fit)'}; {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
