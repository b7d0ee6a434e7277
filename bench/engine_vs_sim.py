"""Engine vs simulator on this machine: 3 small models colocated on one unit, skewed rates, one trace.

1. builds three small Llama/Qwen2-shaped models (random weights, local tokenizer);
2. profiles each with `muxplan profile --backend engine` (the engine's own code path on this machine);
3. replays one Poisson trace through the engine in real time (requests enter at their arrival times,
   the engine loop runs on its own thread, ADBS) and records TTFT, TPOT and finish times;
4. runs `muxplan simulate` with those profiles on the same plan and trace;
5. prints per-model and overall throughput, TTFT and TPOT percentiles of both with the relative errors, and
   writes them to JSON.

Usage: python -m bench.engine_vs_sim [--duration 60] [--rate-scales 1,2] [--out bench/results/engine_vs_sim.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from muxplan.files import save_contract
from muxplan.schema import (Cluster, LengthDist, NodeSpec, PlacedModel, Plan, Slo, SolverRecord, TraceRow, Unit, Workload,
                            WorkloadModel)

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"hot": ("llama", 0), "warm": ("qwen2", 1), "cold": ("llama", 2)}
RATES_RPS = {"hot": 6.0, "warm": 2.0, "cold": 0.7}
PROMPT_TOKENS = (32, 192)
OUTPUT_TOKENS = (16, 96)
HIDDEN, LAYERS = 256, 4
KV_BYTES = 48 * 2**20


def build_models(folder: Path) -> dict[str, Path]:
    from executor.tiny_models import build_tiny_model

    return {name: build_tiny_model(folder / name, arch, seed, num_layers=LAYERS, hidden_size=HIDDEN) for name, (arch, seed) in MODELS.items()}


def profile(paths: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        subprocess.run([sys.executable, "-m", "muxplan", "profile", "--backend", "engine", "--model", str(path), "--gpu", "cpu",
                        "--batches", "1,2,4,8,16,32,64", "--tokens", "16,32,64,128,256,512", "--repeats", "5",
                        "--out", str(folder / f"{name}.json")], check=True, cwd=ROOT, capture_output=True)


def make_plan(refs: dict[str, Path | str], rates: dict[str, float] = RATES_RPS, kv_bytes: int = KV_BYTES, gpu: str = "cpu",
              sm_pct: tuple[int, int] = (100, 100), max_num_seqs: int = 64) -> Plan:
    """One unit on one device hosting every model of ``refs`` with (prefill, decode) SM shares ``sm_pct``."""
    models = [PlacedModel(name=n, model=str(p), tp=1, prefill_sm_pct=sm_pct[0], decode_sm_pct=sm_pct[1], kv_bytes=kv_bytes, max_num_seqs=max_num_seqs,
                          routing_share=1.0, rate_rps=rates[n], predicted_rps=rates[n]) for n, p in refs.items()]
    total = sum(rates.values())
    return Plan(cluster=Cluster(nodes=[NodeSpec(name="this-machine", gpu=gpu, num_gpus=1)]),
                solver=SolverRecord(method="spatial", objective="throughput", value=total),
                units=[Unit(id=0, node=0, gpu=gpu, gpu_ids=[0], predicted_rps=total, models=models)],
                demand_rps=total, served_rps=total, num_gpus_used=1)


def make_workload(refs: dict[str, Path | str], duration_s: float, rate_scale: float, seed: int, rates: dict[str, float] = RATES_RPS,
                  prompt_tokens: tuple[int, int] = PROMPT_TOKENS, output_tokens: tuple[int, int] = OUTPUT_TOKENS) -> Workload:
    """Poisson arrivals per model at ``rate x rate_scale``, uniform prompt and output lengths in [low, high)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, rate in rates.items():
        t = 0.0
        while True:
            t += rng.exponential(1.0 / (rate * rate_scale))
            if t >= duration_s:
                break
            rows.append(TraceRow(arrival_s=round(t, 4), model=name, prompt_tokens=int(rng.integers(*prompt_tokens)),
                                 output_tokens=int(rng.integers(*output_tokens))))
    rows.sort(key=lambda r: r.arrival_s)
    def uniform(bounds):
        return LengthDist(kind="uniform", mean=float(np.mean(bounds)), low=bounds[0], high=bounds[1] - 1)

    models = [WorkloadModel(name=n, model=str(refs[n]), rate_rps=r * rate_scale, prompt_tokens=uniform(prompt_tokens),
                            output_tokens=uniform(output_tokens), slo=Slo()) for n, r in rates.items()]
    return Workload(name=f"engine-vs-sim-x{rate_scale}", duration_s=duration_s, seed=seed, models=models, requests=rows,
                    source="bench/engine_vs_sim.py")


def replay(plan: Plan, workload: Workload, policy: str = "adbs", device: str = "cpu") -> dict[str, np.ndarray]:
    """Real-time replay through the engine; per-request columns like the simulator's records."""
    from executor.engine.engine import Engine, served_models
    from executor.engine.sampler import SamplingParams

    engine = Engine(served_models(plan, 0), policy=policy, device=device)
    stop = threading.Event()
    loop = threading.Thread(target=engine.serve, args=(stop,), daemon=True)
    loop.start()
    vocab = min(s.vocab_size for s in engine.specs.values())
    seqs = []
    start = time.monotonic()
    engine.t0 = start
    for i, row in enumerate(workload.requests):
        delay = row.arrival_s - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        prompt = [(7 * i + 13 * k) % (vocab - 10) + 5 for k in range(row.prompt_tokens)]
        seqs.append(engine.add_request(row.model, prompt, SamplingParams(max_tokens=row.output_tokens, temperature=0.0, ignore_eos=True)))
    while engine.num_in_flight:
        time.sleep(0.05)
    stop.set()
    engine.wake()
    loop.join(timeout=10)
    names = [m.name for m in workload.models]
    # arrival = when the request was due (the trace), so a late replay thread counts against the engine
    return {"model": np.array([names.index(s.model) for s in seqs]), "arrival_s": np.array([r.arrival_s for r in workload.requests]),
            "first_token_s": np.array([s.first_token_s for s in seqs]), "finish_s": np.array([s.finish_s for s in seqs]),
            "output_tokens": np.array([len(s.output_ids) for s in seqs]), "preemptions": np.array([s.num_preemptions for s in seqs])}


def simulate(plan_path: Path, workload_path: Path, profiles: Path, policy: str = "adbs") -> dict:
    out = subprocess.run([sys.executable, "-m", "muxplan", "simulate", str(plan_path), "--workload", str(workload_path), "--profile", str(profiles),
                          "--policy", policy, "--json"], check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.stdout)["runs"][0]["summary"]


def stats(rec: dict[str, np.ndarray], sel: np.ndarray) -> dict:
    ttft = (rec["first_token_s"] - rec["arrival_s"])[sel]
    multi = sel & (rec["output_tokens"] > 1)
    tpot = ((rec["finish_s"] - rec["first_token_s"]) / np.maximum(rec["output_tokens"] - 1, 1))[multi]
    span = float(rec["finish_s"].max() - rec["arrival_s"].min())
    return {"num_requests": int(sel.sum()), "throughput_rps": float(sel.sum() / span), "ttft_ms": [float(v) * 1e3 for v in np.percentile(ttft, (50, 90, 99))],
            "tpot_ms": [float(v) * 1e3 for v in np.percentile(tpot, (50, 90, 99))], "preemptions": int(rec["preemptions"][sel].sum())}


def compare(engine_rec: dict, sim: dict, names: list[str]) -> list[dict]:
    rows = []
    sim_rows = {"all": sim["overall"], **{m["name"]: m for m in sim["models"]}}
    for name in ["all", *names]:
        sel = np.ones(engine_rec["model"].size, bool) if name == "all" else engine_rec["model"] == names.index(name)
        real, s = stats(engine_rec, sel), sim_rows[name]
        row = {"model": name, "engine": real, "sim": {"throughput_rps": s["throughput_rps"], "ttft_ms": s["ttft_ms"], "tpot_ms": s["tpot_ms"],
                                                      "preemptions": s["num_preemptions"]}}
        row["error_pct"] = {"throughput": 100 * (s["throughput_rps"] - real["throughput_rps"]) / real["throughput_rps"],
                            "ttft_p50": 100 * (s["ttft_ms"][0] - real["ttft_ms"][0]) / real["ttft_ms"][0],
                            "ttft_p90": 100 * (s["ttft_ms"][1] - real["ttft_ms"][1]) / real["ttft_ms"][1],
                            "tpot_p50": 100 * (s["tpot_ms"][0] - real["tpot_ms"][0]) / real["tpot_ms"][0],
                            "tpot_p90": 100 * (s["tpot_ms"][1] - real["tpot_ms"][1]) / real["tpot_ms"][1]}
        rows.append(row)
    return rows


def render(results: list[dict]) -> None:
    from rich.table import Table

    from muxplan.render import console

    table = Table(title="engine (measured) vs muxplan simulate (engine profile), ADBS, 3 models on one CPU unit")
    for col in ("rate x", "model", "req/s eng", "req/s sim", "err %", "TTFT p50 eng", "sim", "err %", "TTFT p90 eng", "sim",
                "TPOT p50 eng", "sim", "err %"):
        table.add_column(col, justify="right")
    for res in results:
        for r in res["rows"]:
            e, s, err = r["engine"], r["sim"], r["error_pct"]
            table.add_row(f"{res['rate_scale']:g}", r["model"], f"{e['throughput_rps']:.2f}", f"{s['throughput_rps']:.2f}", f"{err['throughput']:+.1f}",
                          f"{e['ttft_ms'][0]:.1f}", f"{s['ttft_ms'][0]:.1f}", f"{err['ttft_p50']:+.1f}", f"{e['ttft_ms'][1]:.1f}", f"{s['ttft_ms'][1]:.1f}",
                          f"{e['tpot_ms'][0]:.2f}", f"{s['tpot_ms'][0]:.2f}", f"{err['tpot_p50']:+.1f}")
    console().print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per run")
    ap.add_argument("--rate-scales", default="1,2", help="comma-separated rate multipliers, one real run each")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="folder for models, profiles, plan and traces (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine_vs_sim.json")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="engine-vs-sim-"))
    paths = build_models(work / "models")
    started = time.perf_counter()
    profile(paths, work / "profiles")
    profile_s = time.perf_counter() - started
    plan = make_plan(paths)
    save_contract(work / "plan.json", plan)
    results = []
    for scale in (float(s) for s in args.rate_scales.split(",")):
        workload = make_workload(paths, args.duration, scale, args.seed)
        wl_path = work / f"workload-x{scale:g}.json"
        save_contract(wl_path, workload)
        engine_rec = replay(plan, workload)
        sim = simulate(work / "plan.json", wl_path, work / "profiles")
        results.append({"rate_scale": scale, "num_requests": len(workload.requests), "rows": compare(engine_rec, sim, list(RATES_RPS))})
    render(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": "2-core CPU VM", "duration_s": args.duration, "rates_rps": RATES_RPS, "model_hidden": HIDDEN,
                                    "model_layers": LAYERS, "profile_s": round(profile_s, 1), "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
