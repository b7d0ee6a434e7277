"""`muxplan simulate` end to end on a tiny plan: JSON summary, records, plots and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from muxplan.files import save_contract
from tests.sim_fixtures import make_plan, make_workload, placed

ROOT = Path(__file__).parents[1]
GIB = 2**30


def _files(tmp_path: Path, names=("a", "b")) -> tuple[Path, Path]:
    plan = make_plan([[placed("a", 8 * GIB, 60, 40, rate=2.0), placed("b", 8 * GIB, 60, 40, rate=1.0)]])
    rows = [(0.25 * i, "a" if i % 3 else names[1], 64 + i, 16 + i % 5) for i in range(40)]
    save_contract(tmp_path / "plan.json", plan)
    save_contract(tmp_path / "workload.json", make_workload(list(names), rows))
    return tmp_path / "plan.json", tmp_path / "workload.json"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muxplan", "simulate", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_simulate_json_records_and_plots(tmp_path):
    plan, workload = _files(tmp_path)
    proc = _run(str(plan), "--workload", str(workload), "--compare", "temporal,fcfs", "--json",
                "--out", str(tmp_path / "out"), "--records-format", "parquet", "--plot", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["num_requests"] == 40
    assert [r["label"] for r in data["runs"]] == ["plan+adbs", "plan+temporal", "plan+fcfs"]
    for run in data["runs"]:
        overall = run["summary"]["overall"]
        assert overall["num_requests"] == 40 and overall["num_finished"] + overall["num_dropped"] == 40
        assert run["slo_attainment_curve"]["slo_scales"][0] == 1.0
    frame = pd.read_parquet(tmp_path / "out" / "plan+adbs.records.parquet")
    assert len(frame) == 40 and set(frame["model"]) == {"a", "b"} and (frame["unit"] == 0).all()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["runs"][0]["label"] == "plan+adbs"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "attainment_vs_rate.png", "slo_attainment.png", "throughput_vs_rate.png", "usage_plan+adbs.png", "usage_plan+fcfs.png", "usage_plan+temporal.png"]


def test_simulate_bad_input_names_the_field(tmp_path):
    plan, workload = _files(tmp_path, names=("a", "c"))
    proc = _run(str(plan), "--workload", str(workload))
    assert proc.returncode == 2
    assert f"error: {plan}: units[0].models[1].name: 'b' is not a model of workload" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(str(plan), "--workload", str(workload), "--policy", "lifo")
    assert proc.returncode == 2 and "policy: unknown 'lifo'" in proc.stderr


def test_solve_evaluate_sim_picks_the_best_simulated_plan(tmp_path):
    small = ROOT / "examples" / "small"
    cmd = [sys.executable, "-m", "muxplan", "solve", "--workload", str(small / "workload.yaml"), "--cluster", str(small / "cluster.yaml"),
           "--evaluate", "sim", "--time-limit", "5", "--json", "--out", str(tmp_path / "plan.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    sims = data["simulated"]
    assert [s["solver"] for s in sims] == ["exact", "greedy", "spatial", "temporal"]
    assert next(s["policy"] for s in sims if s["solver"] == "temporal") == "temporal"
    best = max(sims, key=lambda s: (round(s["slo_attainment"], 4), s["throughput_rps"]))
    assert data["solver"] == best["solver"]
    assert [c["method"] for c in data["considered"] if c["chosen"]] == [best["solver"]]
    assert json.loads((tmp_path / "plan.json").read_text())["solver"]["method"] == best["solver"]
    bad = subprocess.run(cmd[:-5] + ["--evaluate", "vibes"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--evaluate: 'vibes' is not none or sim" in bad.stderr
