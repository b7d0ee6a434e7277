"""Hostile but well-formed files: huge numbers, deep nesting, a BOM, short spans, broken plans.

Each must end in exit code 2 with one line per problem naming the file and the field, never a traceback.
"""
import json

import pytest

from muxplan.files import atomic_path
from muxplan.schema import MAX_TOKENS
from tests.helpers import run_cli
from tests.sim_fixtures import make_plan, placed

HEADER = "arrival_s,model,prompt_tokens,output_tokens\n"
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
HUGE = ["1e20", "100000000000000000000", "1" * 5000, str(MAX_TOKENS + 1)]


def assert_one_line(proc, path, field):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {field}"), lines


def _plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(make_plan([[placed("llama-7b", 10 * 2**30)]]).model_dump_json())
    return path


@pytest.mark.parametrize("value", HUGE)
def test_huge_token_counts_in_traces(tmp_path, value):
    csv = tmp_path / "t.csv"
    csv.write_text(f"{HEADER}0.5,llama-7b,{value},3\n1.0,llama-7b,5,3\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(f'{{"arrival_s": 0.5, "model": "llama-7b", "prompt_tokens": 3, "output_tokens": {value}}}\n')
    assert_one_line(run_cli("workload", "show", csv), csv, "rows[0].prompt_tokens")
    assert_one_line(run_cli("simulate", _plan_file(tmp_path), "-w", jsonl), jsonl,
                    "line 1: invalid JSON" if len(value) > 4300 else "rows[0].output_tokens")
    row = {"arrival_s": 0.5, "model": "llama-7b", "prompt_tokens": 3, "output_tokens": 3}
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"schema_version": 1, "requests": [row, {**row, "prompt_tokens": int(float(value)) if len(value) < 30 else 10**30}]}))
    assert_one_line(run_cli("workload", "show", trace), trace, "requests[1].prompt_tokens")


@pytest.mark.parametrize("value", HUGE)
def test_huge_token_counts_in_azure(tmp_path, value):
    az = tmp_path / "az.csv"
    az.write_text(f"{AZURE}2023-11-16 18:17:03.5,10,{value}\n2023-11-16 18:17:04.5,10,3\n")
    assert_one_line(run_cli("workload", "import", az, "--models", "llama-7b:2", "--out", tmp_path / "w.json"), az,
                    "rows[0].GeneratedTokens: ")
    assert_one_line(run_cli("workload", "synth", "--models", "llama-7b", "--lengths-from", az, "--out", tmp_path / "s.json"), az,
                    "rows[0].GeneratedTokens: ")
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("suffix,open_,close", [(".json", "[", "]"), (".json", '{"a":', "}"), (".yaml", "[", "]")])
def test_deeply_nested_files(tmp_path, suffix, open_, close):
    deep = tmp_path / f"deep{suffix}"
    deep.write_text(open_ * 100_000 + close * 100_000)
    kind = "YAML" if suffix == ".yaml" else "JSON"
    assert_one_line(run_cli("plan", "show", deep), deep, f"(root): invalid {kind}: nested too deeply")
    assert_one_line(run_cli("solve", "--workload", deep, "--cluster", "1x1xA100-80GB"), deep, f"(root): invalid {kind}")
    assert_one_line(run_cli("solve", "--workload", "examples/small/workload.yaml", "--cluster", deep), deep, f"(root): invalid {kind}")


def test_deep_nesting_inside_a_valid_mapping(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text("schema_version: 1\nmodels: " + "[" * 5000 + "]" * 5000 + "\n")
    proc = run_cli("workload", "show", w)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith(f"error: {w}: ")


def test_times_and_rates_are_bounded(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text(f"{HEADER}1e300,llama-7b,5,3\n")
    assert_one_line(run_cli("workload", "show", t), t, "rows[0].arrival_s: Input should be less than or equal to 100000000")
    w = tmp_path / "w.json"
    w.write_text(json.dumps({"schema_version": 1, "models": [{"name": "a", "model": "llama-7b", "rate_rps": 1e9}], "duration_s": 1e-3}))
    assert_one_line(run_cli("workload", "show", w), w, "models[0].rate_rps: at most 1e+06 req/s")
    w.write_text(json.dumps({"schema_version": 1, "models": [{"name": "a", "model": "llama-7b", "rate_rps": 0}], "duration_s": 1e9}))
    assert_one_line(run_cli("workload", "show", w), w, "duration_s: must be finite and at most 1e+08 s")
    w.write_text(json.dumps({"schema_version": 1, "seed": -1, "models": [{"name": "a", "model": "llama-7b", "rate_rps": 1}]}))
    assert_one_line(run_cli("workload", "show", w), w, "seed: Input should be greater than or equal to 0")


def test_a_rate_needs_a_measurable_span(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text(f"{AZURE}2023-11-16 18:17:03.5,10,3\n")
    proc = run_cli("workload", "import", one, "--models", "llama-7b", "--out", tmp_path / "w.json")
    assert proc.stderr.strip() == (f"error: {one}: rows: 1 request(s) spanning 0 s: a rate cannot be measured "
                                   "(need >= 2 requests at different times)")
    assert proc.returncode == 2 and not (tmp_path / "w.json").exists()
    burst = tmp_path / "burst.csv"
    burst.write_text(f"{AZURE}2023-11-16 18:17:03.5000000,10,3\n2023-11-16 18:17:03.5000001,10,3\n")
    assert_one_line(run_cli("workload", "import", burst, "--models", "llama-7b", "--out", tmp_path / "w.json"), burst,
                    "rows: 2 requests in 1e-07 s is 2e+07 req/s, above 1e+06: the span is too short to measure a rate")
    t = tmp_path / "t.csv"
    t.write_text(f"{HEADER}0,llama-7b,5,3\n0,llama-7b,5,3\n")
    assert_one_line(run_cli("workload", "show", t), t, "rows: 2 request(s) spanning 0 s")
    # one row at a real time is a rate (1 request over 4 s)
    t.write_text(f"{HEADER}4,llama-7b,5,3\n")
    assert run_cli("workload", "show", t, check=True).returncode == 0


def test_csv_with_a_utf8_bom_reads(tmp_path):
    t = tmp_path / "t.csv"
    t.write_bytes(("\ufeff" + HEADER + "0.5,llama-7b,5,3\n2,llama-7b,7,3\n").encode())
    assert "llama-7b" in run_cli("workload", "show", t, check=True).stdout
    az = tmp_path / "az.csv"
    az.write_bytes(("\ufeff" + AZURE + "2023-11-16 18:17:03.5,10,3\n2023-11-16 18:17:05.5,12,0\n").encode())
    out = tmp_path / "w.json"
    assert "2 requests" in run_cli("workload", "import", az, "--models", "llama-7b", "--out", out, check=True).stdout
    w = tmp_path / "w.yaml"
    w.write_bytes(("\ufeffschema_version: 1\nmodels: [{name: a, model: llama-7b, rate_rps: 1}]\n").encode())
    assert run_cli("workload", "show", w, check=True).returncode == 0


@pytest.mark.parametrize("change,field", [
    (lambda d: d["units"][0]["models"][0].update(kv_bytes=10**13), "units[0]: memory 9326.6 GiB > usable 76.0 GiB per GPU"),
    (lambda d: d["units"][0].update(gpu_ids=[99]), "units[0].gpu_ids: GPU 99 is not on node 0 (8 GPUs)"),
    (lambda d: d["units"][0].update(node=7), "units[0].node: 7 does not exist (the cluster has 1 nodes)"),
    (lambda d: d["units"][1].update(gpu_ids=[0]), "units[1].gpu_ids: GPU 0 of node 0 is also in units[0]"),
    (lambda d: d["units"][1].update(id=0), "units[1].id: 0 is also the id of units[0]"),
    (lambda d: d["units"][0]["models"][0].update(model="gpt-5"), "units[0].models[0].model: unknown model 'gpt-5'"),
    (lambda d: d["units"][0]["models"][0].update(model="no/such/folder"), "units[0].models[0].model: unknown model 'no/such/folder'"),
    (lambda d: d["units"][0]["models"][0].update(tp=2), "units[0].models[0].tp: 2 != mesh size 1"),
    (lambda d: d["units"][0].update(gpu="H100-SXM"), "units[0].gpu: H100-SXM but node 0 has A100-80GB"),
    (lambda d: d["units"][0]["models"][0].update(kv_bytes=0), "units[0].models[0].kv_bytes: must be > 0 to serve requests"),
])
def test_every_command_reading_a_plan_checks_it(tmp_path, change, field):
    data = make_plan([[placed("llama-7b-0", 2**30)], [placed("llama-7b-1", 2**30)]]).model_dump(mode="json")
    change(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    good = tmp_path / "good.json"
    good.write_text(make_plan([[placed("llama-7b-0", 2**30)], [placed("llama-7b-1", 2**30)]]).model_dump_json())
    w = tmp_path / "t.csv"
    w.write_text(f"{HEADER}0.5,llama-7b-0,5,3\n1.5,llama-7b-1,5,3\n")
    for args in (("plan", "show", bad), ("plan", "diff", good, bad), ("simulate", bad, "-w", w),
                 ("simulate", good, "-w", w, "--compare", bad)):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert f"error: {bad}: {field}" in proc.stderr.splitlines()[0], (args, proc.stderr)


def test_atomic_path_keeps_the_suffix_and_leaves_nothing(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and not target.exists()
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"png" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


@pytest.mark.parametrize("args,message", [
    (("simulate", "PLAN", "-w", "TRACE", "--rate-scale", "inf"), "--rate-scale: must be a finite number > 0, got inf"),
    (("simulate", "PLAN", "-w", "TRACE", "--rate-scale", "nan"), "--rate-scale: must be a finite number > 0, got nan"),
    (("simulate", "PLAN", "-w", "TRACE", "--slo-scale", "-1"), "--slo-scale: must be a finite number > 0, got -1.0"),
    (("simulate", "PLAN", "-w", "TRACE", "--seed", "-1"), "--seed: must be a finite number >= 0, got -1"),
    (("solve", "--workload", "examples/small/workload.yaml", "--cluster", "1x4xA100-80GB", "--time-limit", "nan"),
     "--time-limit: must be a finite number > 0, got nan"),
    (("solve", "--workload", "examples/small/workload.yaml", "--cluster", "1x4xA100-80GB", "--time-limit", "-1"),
     "--time-limit: must be a finite number > 0, got -1.0"),
    (("solve", "--workload", "examples/small/workload.yaml", "--cluster", "1x4xA100-80GB", "--seed", "-1"),
     "--seed: must be a finite number >= 0, got -1"),
    (("workload", "synth", "--models", "llama-7b", "--seed", "-1", "--out", "OUT"), "--seed: must be a finite number >= 0, got -1"),
])
def test_numeric_options_are_checked(tmp_path, args, message):
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}0.5,llama-7b,5,3\n")
    subst = {"PLAN": str(_plan_file(tmp_path)), "TRACE": str(trace), "OUT": str(tmp_path / "w.json")}
    proc = run_cli(*(subst.get(a, a) for a in args))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert not (tmp_path / "w.json").exists()
