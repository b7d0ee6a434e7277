"""What the CLI shows: interpolation gaps, progress on a terminal, uncut tables, schema names, plot names."""
import json
import os
import pty
import select
import subprocess
import sys

import pytest

from muxplan.catalog import get_gpu, get_model
from muxplan.files import InputError
from muxplan.schema import CONTRACTS, Profile, ProfilePoint
from profiler.table import TableCostModel
from tests.helpers import ROOT, run_cli
from tests.sim_fixtures import make_plan, placed

L7, A100 = get_model("llama-7b"), get_gpu("A100-80GB")


def _profile(rows: dict[int, list[int]]) -> Profile:
    """Prefill points: batch -> measured token counts, latency = batch x tokens / 100 ms."""
    pts = [ProfilePoint(phase="prefill", tp=1, sm_pct=100, batch=b, tokens=t, latency_ms=b * t / 100) for b, ts in rows.items() for t in ts]
    return Profile(gpu="A100-80GB", model="llama-7b", points=pts)


def test_a_batch_measured_at_one_token_count_does_not_block_interpolation():
    # the default grid's shape: the largest prefill batch fits one token count only (batch x tokens capped)
    cm = TableCostModel([_profile({1: [128, 256], 2: [128, 256], 4: [128]})])
    assert cm.prefill_ms(L7, A100, 1, 100, 4, 128) == pytest.approx(4 * 128 / 100)  # exact at the measured point
    assert cm.prefill_ms(L7, A100, 1, 100, 4, 64) == pytest.approx(4 * 64 / 100)  # carried by batches 1 and 2
    assert cm.prefill_ms(L7, A100, 1, 100, 2, 64) == pytest.approx(2 * 64 / 100)


def test_an_interpolation_gap_says_which_point_to_add():
    cm = TableCostModel([_profile({1: [128], 2: [128]})])
    with pytest.raises(InputError) as err:
        cm.prefill_ms(L7, A100, 1, 100, 2, 64)
    assert err.value.problems == ["profile llama-7b on A100-80GB prefill tp=1 sm=100 batch=1 tokens: only one measured value (128), "
                                  "cannot interpolate to 64; add a point at tokens=64 to the profile"]
    strict = TableCostModel([_profile({1: [128, 256], 2: [128, 256]})], extrapolate=False)
    with pytest.raises(InputError) as err:
        strict.prefill_ms(L7, A100, 1, 100, 3, 128)
    assert err.value.problems == ["profile llama-7b on A100-80GB prefill tp=1 sm=100 batch: 3 is outside the measured range 1..2; "
                                  "add a point at batch=4 to the profile"]
    with pytest.raises(InputError, match="add points at sm_pct=50"):
        strict.prefill_ms(L7, A100, 1, 50, 2, 128)


def test_schema_without_a_name_lists_the_names():
    proc = run_cli("schema", check=True)
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(CONTRACTS)
    assert all(len(line.split()) > 1 for line in proc.stdout.splitlines())  # each with what it is


def test_profile_show_plot_writes_exactly_the_named_file(tmp_path):
    ref = tmp_path / "ref.json"
    entry = {"1": {"100": {str(b): {str(t): {"prefill": b * t / 50, "decoding": b / 10 + t / 1000} for t in (128, 512)} for b in (1, 8)}}}
    ref.write_text(json.dumps({"llama-7b": entry, "llama-13b": entry}))
    out = tmp_path / "plots" / "ref.png"
    proc = run_cli("profile", "show", ref, "--plot", out, check=True)
    assert proc.stdout.strip().endswith(f"wrote {out}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["ref.png"] and out.read_bytes()[:4] == b"\x89PNG"
    bad = run_cli("profile", "show", ref, "--plot", tmp_path / "ref.svg")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: --plot {tmp_path / 'ref.svg'}: must end in .png"


def _sim_inputs(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(make_plan([[placed("llama-7b-10", 2**30)]]).model_dump_json())
    trace = tmp_path / "t.csv"
    rows = "".join(f"{i * 0.5},llama-7b-10,64,8\n" for i in range(40))
    trace.write_text("arrival_s,model,prompt_tokens,output_tokens\n" + rows)
    return plan, trace


def test_tables_are_not_cut_when_piped(tmp_path):
    for args in (("models", "list"), ("simulate", *_sim_inputs(tmp_path)[:1], "-w", _sim_inputs(tmp_path)[1], "--compare", "fcfs")):
        out = run_cli(*args, check=True).stdout
        assert "…" not in out, out
        assert max(len(line) for line in out.splitlines()) > 80
    assert "llama-7b-10" in out


def _on_a_terminal(*args: str, timeout_s: float = 120) -> str:
    """Run the CLI with stderr on a pseudo-terminal (as a user sees it); stdout is captured. Returns what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "muxplan", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                raise AssertionError(f"no terminal output for {timeout_s} s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.communicate(timeout=timeout_s)
        os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    return seen.decode(errors="replace")


def test_long_steps_show_progress_on_a_terminal(tmp_path):
    seen = _on_a_terminal("solve", "--workload", "examples/small/workload.yaml", "--cluster", "1x4xA100-80GB", "--solver", "greedy",
                          "--no-compare")
    assert "solving (greedy)" in seen
    plan, trace = _sim_inputs(tmp_path)
    seen = _on_a_terminal("simulate", plan, "-w", trace, "--compare", "fcfs", "--plot", tmp_path / "plots")
    assert "preparing" in seen  # simulation steps of this tiny trace finish between two refreshes
    assert "throughput vs rate for --plot" in seen
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "attainment_vs_rate.png", "slo_attainment.png", "throughput_vs_rate.png", "usage_plan+adbs.png", "usage_plan+fcfs.png"]
