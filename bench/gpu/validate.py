"""GPU validation in one invocation: measured profiles, analytic-model error, engine speed vs roofline,
multiplexing gain and simulator fidelity. Writes JSON into OUT and prints short tables.

    python bench/gpu/validate.py OUT            # on an NVIDIA GPU: Llama-3.1-8B, Qwen2.5-14B, Llama-3.2-3B (random bf16 weights)
    python bench/gpu/validate.py OUT --tiny     # anywhere (CPU): three tiny local models, a small grid, short traces

Steps (each writes OUT/<step>.json; a step that would overrun --budget-s is skipped and says so):
1. profiles: ``muxplan profile --backend engine`` code path (run_profile + EngineProbe) per model and SM% -> OUT/profiles/;
2. analytic: the roofline fitted to these profiles, MAPE per phase;
3. speed: decode tokens/s of the first model vs the memory roofline (weights + KV bytes per step / measured copy
   bandwidth) and prefill TFLOP/s vs the measured matmul peak; paged decode attention, batched (gather + SDPA)
   vs the simple per-sequence version;
4. multiplexing: the three models on one device with a skewed trace: ADBS with SM partitions vs one job at a
   time (temporal) vs a static split (every job at a third of the SMs), same trace, throughput and TTFT/TPOT p50/p99;
5. fidelity: ``muxplan simulate`` with the measured profiles on the same plan and trace, errors vs the real runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Run as a script on a bare GPU machine (``python bench/gpu/validate.py OUT``, no install), so the checkout's
# root goes on the path before the library is imported.
sys.path.insert(0, str(ROOT))

from bench import engine_vs_sim as evs  # noqa: E402

GPU_MODELS = {"llama-3.1-8b": "llama-3.1-8b", "qwen2.5-14b": "qwen2.5-14b", "llama-3.2-3b": "llama-3.2-3b"}
SKEW = (0.6, 0.3, 0.1)  # share of the total rate of each model, in MODELS order


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def environment(device: str) -> dict:
    import torch

    env = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda or ""}
    if device == "cuda":
        from executor.engine.probe import _driver

        env |= {"gpu": torch.cuda.get_device_name(0), "driver": _driver(), "num_sms": torch.cuda.get_device_properties(0).multi_processor_count}
    return env


def gpu_catalog_name(device_name: str) -> str:
    """Our catalog's name for the device (H100 SXM/PCIe, H200, A100); 'cpu' on CPU."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100-PCIe" if "PCIE" in name else "H100-SXM"
    if "A100" in name:
        return "A100-80GB" if "80" in name else "A100-40GB"
    return "cpu" if name in ("", "CPU") else device_name


def step_profiles(models: dict[str, str], gpu: str, grid: dict, out: Path, budget: Budget) -> dict:
    import torch

    from executor.engine.probe import EngineProbe
    from profiler.measure import ProfileRequest, run_profile

    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, ref in models.items():
        if budget.left_s() < grid["min_left_s"]:
            done[name] = "skipped: time budget"
            continue
        req = ProfileRequest(model=ref, gpu=gpu, sm_pcts=grid["sm"], batches=grid["batches"], prefill_tokens=grid["tokens"],
                             context_tokens=grid["tokens"], repeats=grid["repeats"], warmup=1)
        started = time.perf_counter()
        probe = EngineProbe(req)
        prof = run_profile(req, probe, out / f"{name}.json")
        done[name] = {"points": len(prof.points), "seconds": round(time.perf_counter() - started, 1), "sm_mechanism": prof.sm_mechanism}
        del probe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return done


def step_analytic(gpu: str, profiles_dir: Path) -> dict:
    from profiler.calibrate import error_table, fit
    from profiler.table import load_profiles

    profiles = [p for f in sorted(profiles_dir.glob("*.json")) for p in load_profiles(f)]
    params = fit(profiles, gpu)
    rows = error_table(params, profiles)
    return {"params": params.model_dump(), "mape_pct": {r.group: round(r.mape_pct, 2) for r in rows}}


def _samples_s(run, device: str, repeats: int = 5) -> list[float]:
    """Wall seconds of ``run()`` after one warm-up call, synchronising the GPU around each timed call."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def _copy_bandwidth_bytes_per_s(device: str) -> float:
    import torch

    n = (1 << 30) if device == "cuda" else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * n / min(_samples_s(lambda: dst.copy_(src), device))  # read + write


def _matmul_flops_per_s(device: str) -> float:
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (768, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / min(_samples_s(lambda: a @ b, device))


def step_speed(model_ref: str, profile_path: Path, device: str, decode_context: int) -> dict:
    from muxplan.catalog import flops_per_token, get_model, kv_bytes_per_token, weight_bytes
    from profiler.table import load_profiles

    spec = get_model(model_ref)
    dtype = "bfloat16" if device == "cuda" else "float32"
    weights, kv_per_token = weight_bytes(spec, dtype), kv_bytes_per_token(spec, dtype)
    bandwidth, peak = _copy_bandwidth_bytes_per_s(device), _matmul_flops_per_s(device)
    points = load_profiles(profile_path)[0].points
    decode, prefill = [], []
    for p in points:
        if p.sm_pct != 100:
            continue
        seconds = p.latency_ms / 1e3
        if p.phase == "decode" and p.tokens == decode_context:
            step_bytes = weights + p.batch * p.tokens * kv_per_token
            decode.append({"batch": p.batch, "context": p.tokens, "tokens_per_s": p.batch / seconds,
                           "roofline_tokens_per_s": p.batch / (step_bytes / bandwidth), "fraction_of_roofline": (step_bytes / bandwidth) / seconds})
        if p.phase == "prefill":
            flops = p.batch * sum(flops_per_token(spec, c) for c in range(p.tokens))
            prefill.append({"batch": p.batch, "tokens": p.tokens, "tflops": flops / seconds / 1e12, "fraction_of_matmul_peak": flops / seconds / peak})
    return {"model": model_ref, "copy_bandwidth_gb_per_s": bandwidth / 1e9, "matmul_peak_tflops": peak / 1e12,
            "decode": sorted(decode, key=lambda r: r["batch"]), "prefill": sorted(prefill, key=lambda r: (r["batch"], r["tokens"]))}


def step_attention(device: str, batch: int, context: int, heads: int, kv_heads: int, head_dim: int) -> dict:
    """Batched paged decode attention (gather + SDPA) against the simple per-sequence version, same inputs."""
    import torch

    from executor.engine.attention import decode_paged, decode_reference
    from unitsched.config import BASE_BLOCK_TOKENS as block_tokens  # one head size: the base block

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    num_logical = -(-context // block_tokens)
    gen = torch.Generator(device=device).manual_seed(0)
    cache = torch.randn(batch * num_logical * kv_heads, 2, block_tokens, head_dim, device=device, dtype=dtype, generator=gen)
    tables = torch.randperm(cache.shape[0], device=device, generator=gen).view(batch, num_logical, kv_heads)
    q = torch.randn(batch, heads, head_dim, device=device, dtype=dtype, generator=gen)
    lens = torch.full((batch,), context, device=device)

    def timed(fn) -> float:
        return float(np.median(_samples_s(lambda: fn(q, cache, tables, lens), device))) * 1e3

    diff = float((decode_paged(q, cache, tables, lens).float() - decode_reference(q, cache, tables, lens).float()).abs().max())
    paged_ms, reference_ms = timed(decode_paged), timed(decode_reference)
    return {"batch": batch, "context": context, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "dtype": str(dtype),
            "paged_ms": paged_ms, "reference_ms": reference_ms, "speedup": reference_ms / paged_ms, "max_abs_diff": diff}


def _capacity_scale(plan, refs, rates, profiles_dir: Path, lengths: dict, seed: int) -> float:
    """Rate scale at which the simulator (measured profiles, ADBS) still serves >= 95% of demand, searched by doubling."""
    from planner.sim.engine import simulate_plan
    from planner.sim.metrics import summarize
    from profiler.cost_model import load_cost_model

    cost = load_cost_model(profile=profiles_dir)
    scale, best = 0.25, 0.25
    while scale <= 512:
        wl = evs.make_workload(refs, 20.0, scale, seed, rates, **lengths)
        summary = summarize(simulate_plan(plan, wl, cost, "adbs"), wl)
        if summary.overall.throughput_rps < 0.95 * len(wl.requests) / 20.0:
            break
        best, scale = scale, scale * 2
    return best


def step_multiplexing(refs: dict[str, str], profiles_dir: Path, work: Path, device: str, sm_adbs: tuple[int, int], sm_static: int,
                      kv_bytes: int, duration_s: float, lengths: dict, seed: int, load: float, budget: Budget) -> dict:
    from muxplan.files import save_contract

    rates = {name: share for name, share in zip(refs, SKEW)}
    runs = {"adbs": ("adbs", sm_adbs), "temporal": ("temporal", (100, 100)), "static-split": ("fcfs", (sm_static, sm_static))}
    capacity = _capacity_scale(evs.make_plan(refs, rates, kv_bytes, evs_gpu(device), sm_adbs), refs, rates, profiles_dir, lengths, seed)
    scale = load * capacity
    workload = evs.make_workload(refs, duration_s, scale, seed, rates, **lengths)
    save_contract(work / "workload.json", workload)
    result = {"rate_scale": scale, "total_rate_rps": scale * sum(rates.values()), "num_requests": len(workload.requests), "runs": {}}
    names = list(refs)
    for label, (policy, sm) in runs.items():
        if budget.left_s() < duration_s * 1.5 + 20:
            result["runs"][label] = "skipped: time budget"
            continue
        plan = evs.make_plan(refs, rates, kv_bytes, evs_gpu(device), sm)
        save_contract(work / f"plan-{label}.json", plan)
        rec = evs.replay(plan, workload, policy=policy, device=device)
        _release_device()
        sim = evs.simulate(work / f"plan-{label}.json", work / "workload.json", profiles_dir, policy)
        result["runs"][label] = {"policy": policy, "sm_pct": sm, "fidelity": evs.compare(rec, sim, names)}
    return result


def _release_device() -> None:
    """Free the last engine's weights and KV pool before the next one loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evs_gpu(device: str) -> str:
    import torch

    return gpu_catalog_name(torch.cuda.get_device_name(0)) if device == "cuda" else "cpu"


def render(report: dict) -> None:
    from rich.table import Table

    from muxplan.render import console

    con = console()
    speed = report.get("speed")
    if isinstance(speed, dict):
        t = Table(title=f"decode speed of {speed['model']} vs memory roofline ({speed['copy_bandwidth_gb_per_s']:.0f} GB/s copy)")
        for col in ("batch", "context", "tokens/s", "roofline tokens/s", "fraction"):
            t.add_column(col, justify="right")
        for r in speed["decode"]:
            t.add_row(str(r["batch"]), str(r["context"]), f"{r['tokens_per_s']:.0f}", f"{r['roofline_tokens_per_s']:.0f}", f"{r['fraction_of_roofline']:.2f}")
        con.print(t)
    mux = report.get("multiplexing")
    if isinstance(mux, dict):
        t = Table(title=f"3 models on one device, {mux['total_rate_rps']:.2f} req/s skewed {SKEW}: real run (sim error %)")
        for col in ("run", "req/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "thr err %", "TTFT p50 err %", "TPOT p50 err %"):
            t.add_column(col, justify="right")
        for label, run in mux["runs"].items():
            if isinstance(run, str):
                t.add_row(label, run)
                continue
            row = run["fidelity"][0]
            e, err = row["engine"], row["error_pct"]
            t.add_row(label, f"{e['throughput_rps']:.2f}", f"{e['ttft_ms'][0]:.1f}", f"{e['ttft_ms'][2]:.1f}", f"{e['tpot_ms'][0]:.2f}",
                      f"{e['tpot_ms'][2]:.2f}", f"{err['throughput']:+.1f}", f"{err['ttft_p50']:+.1f}", f"{err['tpot_p50']:+.1f}")
        con.print(t)
    att = report.get("attention")
    if isinstance(att, dict):
        con.print(f"paged decode attention (batch {att['batch']}, context {att['context']}): gather+SDPA {att['paged_ms']:.2f} ms vs "
                  f"per-sequence {att['reference_ms']:.2f} ms ({att['speedup']:.1f}x), max diff {att['max_abs_diff']:.1e}")
    analytic = report.get("analytic")
    if isinstance(analytic, dict):
        con.print("analytic roofline MAPE %: " + ", ".join(f"{k} {v}" for k, v in analytic["mape_pct"].items() if " " not in k))


def main() -> None:
    ap = argparse.ArgumentParser(description="GPU validation: profiles, roofline, multiplexing, fidelity.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="three tiny local models and a small grid (the CPU rehearsal)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting new work after this many seconds")
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals per multiplexing run")
    ap.add_argument("--load", type=float, default=0.7, help="trace rate as a fraction of the simulated ADBS capacity")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    import torch

    budget = Budget(args.budget_s)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": environment(device)}
    gpu = evs_gpu(device)
    if args.tiny or device == "cpu":
        from executor.tiny_models import build_tiny_model

        refs = {f"tiny-{i}": str(build_tiny_model(out / "models" / f"tiny-{i}", arch, seed=i))
                for i, arch in enumerate(("llama", "qwen2", "llama"))}
        grid = {"sm": (100,) if device == "cpu" else (30, 50, 100), "batches": (1, 4, 16), "tokens": (32, 128), "repeats": 3, "min_left_s": 10}
        mux = {"sm_adbs": (100, 100) if device == "cpu" else (50, 30), "sm_static": 100 if device == "cpu" else 30, "kv_bytes": 16 * 2**20,
               "duration_s": args.duration or 6.0, "lengths": {"prompt_tokens": (16, 96), "output_tokens": (8, 48)}}
        decode_context = 128
        attention = {"batch": 16, "context": 256, "heads": 4, "kv_heads": 2, "head_dim": 32}
    else:
        refs = dict(GPU_MODELS)
        grid = {"sm": (30, 50, 70, 100), "batches": (1, 4, 16, 64, 256), "tokens": (128, 512, 2048), "repeats": 3, "min_left_s": 240}
        mux = {"sm_adbs": (50, 30), "sm_static": 30, "kv_bytes": 4 * 2**30, "duration_s": args.duration or 30.0,
               "lengths": {"prompt_tokens": (128, 1024), "output_tokens": (32, 256)}}
        decode_context = 512
        attention = {"batch": 64, "context": 1024, "heads": 32, "kv_heads": 8, "head_dim": 128}
    report["config"] = {"models": refs, "grid": {k: v for k, v in grid.items()}, "multiplexing": mux, "gpu": gpu}
    profiles_dir = out / "profiles"
    steps = [
        ("profiles", lambda: step_profiles(refs, gpu, grid, profiles_dir, budget)),
        ("analytic", lambda: step_analytic(gpu, profiles_dir)),
        ("speed", lambda: step_speed(next(iter(refs.values())), profiles_dir / f"{next(iter(refs))}.json", device, decode_context)),
        ("attention", lambda: step_attention(device, **attention)),
        ("multiplexing", lambda: step_multiplexing(refs, profiles_dir, out, device, mux["sm_adbs"], mux["sm_static"], mux["kv_bytes"],
                                                   mux["duration_s"], mux["lengths"], args.seed, args.load, budget)),
    ]
    for name, run in steps:
        started = time.perf_counter()
        try:
            report[name] = run() if budget.left_s() > 0 else "skipped: time budget"
        except Exception as exc:  # a failed step is reported, the others still run
            report[name] = f"failed: {type(exc).__name__}: {exc}"
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        (out / "validate.json").write_text(json.dumps(report, indent=1, default=_jsonable))
    render(report)
    print(f"wrote {out / 'validate.json'}")


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()
