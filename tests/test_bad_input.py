"""Malformed files: one line per problem naming file and field, exit code 2, no traceback, no output left."""
import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muxplan.catalog import model_catalog
from muxplan.cli import app
from muxplan.cluster import load_cluster
from muxplan.files import InputError, load_contract
from muxplan.schema import Plan, Profile
from tests.helpers import run_cli

runner = CliRunner()


def invoke(*args):
    """Run the CLI in-process; an InputError is what main() turns into `error:` lines and exit 2."""
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    if isinstance(result.exception, InputError):
        return 2, result.exception.problems
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # anything else would be a traceback for the user
    return result.exit_code, result.output


def assert_rejected(tmp_path, src, *args, out=None):
    code, problems = invoke(*args)
    assert code == 2, problems
    assert problems and all(line.startswith(f"{src}: ") for line in problems), problems
    if out is not None:
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]


def test_negative_rate_names_file_and_field(tmp_path):
    bad = tmp_path / "W.json"
    models = [{"name": f"m{i}", "model": "llama-7b", "rate_rps": 1.0} for i in range(4)]
    models[3]["rate_rps"] = -1
    bad.write_text(json.dumps({"schema_version": 1, "models": models}))
    proc = run_cli("workload", "show", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}: models[3].rate_rps: Input should be greater than or equal to 0"


def test_several_problems_one_line_each(tmp_path):
    bad = tmp_path / "W.yaml"
    bad.write_text(yaml.safe_dump({"schema_version": 1, "models": [{"name": "a", "model": "llama-7b", "rate_rps": "fast", "colour": 1}]}))
    proc = run_cli("workload", "show", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: models[0].rate_rps: Input should be a valid number, unable to parse string as a number",
        f"error: {bad}: models[0].colour: Extra inputs are not permitted",
    ]


def test_schema_valid_but_unusable_workloads(tmp_path):
    bad = tmp_path / "W.json"
    models = [{"name": "a", "model": "gpt-5", "rate_rps": 1.0}, {"name": "b", "model": "llama-7b", "rate_rps": "Infinity"},
              {"name": "c", "model": "llama-7b", "rate_rps": 1.0, "prompt_tokens": {"mean": 1e300}}]
    bad.write_text(json.dumps({"schema_version": 1, "models": models}))
    proc = run_cli("workload", "show", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    known = ", ".join(model_catalog())
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: models[0].model: unknown model 'gpt-5'; known: {known} (or a path to a config.json)",
        f"error: {bad}: models[1].rate_rps: must be finite",
        f"error: {bad}: models[2].prompt_tokens.high: at most 1048576 tokens",
    ]
    bad.write_text(json.dumps({"schema_version": 1, "duration_s": 1e6, "models": [{"name": "a", "model": "llama-7b", "rate_rps": 1e3}]}))
    proc = run_cli("workload", "show", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: models: rates x duration_s expect 1e+09 requests; at most 2,000,000"


def test_unknown_names_list_known(tmp_path):
    proc = run_cli("workload", "synth", "--models", "gpt-5:2", "--out", tmp_path / "w.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model 'gpt-5'; known: llama-7b, llama-13b")
    assert not (tmp_path / "w.json").exists()
    cluster = tmp_path / "c.yaml"
    cluster.write_text("schema_version: 1\nnodes:\n  - {gpu: B900, num_gpus: 8}\n")
    try:
        load_cluster(cluster)
    except InputError as exc:
        assert str(exc).startswith(f"{cluster}: nodes[0].gpu: unknown GPU 'B900'; known: A100-40GB, A100-80GB")
    else:
        raise AssertionError("expected InputError")


def test_bad_options_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "w.json"
    cases = [
        (["--top-rate", "inf"], "error: --top-rate: must be a finite number >= 0, got inf"),
        (["--top-rate", "1", "--total-rate", "2"], "error: --top-rate and --total-rate: give one, not both"),
        (["--arrivals", "uniform"], "error: --arrivals: 'uniform' is not one of poisson, gamma"),
        (["--duration", "0"], "error: --duration: must be a finite number > 0, got 0.0"),
        (["--popularity-order", "explicit", "--order", "llama-7b-0"], "error: --order: must list every served model once, hottest first: llama-7b-0, llama-7b-1"),
        (["--lengths-from", tmp_path / "missing.csv"], f"error: {tmp_path / 'missing.csv'}: cannot read: FileNotFoundError"),
    ]
    for extra, message in cases:
        proc = run_cli("workload", "synth", "--models", "llama-7b:2", *extra, "--out", out)
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()
    proc = run_cli("workload", "synth", "--models", "llama-7b", "--out", tmp_path / "w.txt")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: --out {tmp_path / 'w.txt'}: suffix must be")


def test_trace_missing_column_and_bad_value(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("arrival_s,model,prompt_tokens\n0.1,llama-7b,5\n")
    proc = run_cli("workload", "show", t)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {t}: header: missing column output_tokens (need arrival_s, model, prompt_tokens, output_tokens)"
    t.write_text("arrival_s,model,prompt_tokens,output_tokens\n0.1,llama-7b,5,3\n0.2,llama-7b,-5,3\n")
    proc = run_cli("workload", "show", t)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {t}: rows[1].prompt_tokens: Input should be greater than or equal to 1"
    t.write_text("arrival_s,model,prompt_tokens,output_tokens\n0.1,llama-7b,5,3\ninf,llama-7b,5,3\n")
    proc = run_cli("workload", "show", t)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {t}: rows[1].arrival_s: Input should be a finite number"
    empty = tmp_path / "t.json"
    empty.write_text('{"schema_version": 1, "requests": []}')
    proc = run_cli("workload", "show", empty)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {empty}: requests: no requests"


def test_import_broken_csv_subprocess(tmp_path):
    src, out = tmp_path / "a.csv", tmp_path / "T.json"
    src.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,10\n")
    proc = run_cli("workload", "import", src, "--models", "llama-7b:2", "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()
    assert proc.stderr.strip() == f"error: {src}: header: missing column GeneratedTokens (need TIMESTAMP, ContextTokens, GeneratedTokens)"


# ---------------------------------------------------------------- property tests (in-process CLI)
def _invalid_model_values():
    return st.one_of(
        st.fixed_dictionaries({"rate_rps": st.floats(max_value=-1e-9) | st.just(float("inf")) | st.just(float("nan"))
                               | st.text(alphabet="abcxyz ", max_size=4) | st.none() | st.lists(st.integers(), max_size=2)}),
        st.fixed_dictionaries({"model": st.text(max_size=8).filter(lambda s: s not in model_catalog() and s.strip() not in ("", ".")
                                                                    and "/" not in s) | st.integers()}),
        st.fixed_dictionaries({"prompt_tokens": st.sampled_from([
            {"kind": "weird"}, {"mean": -1}, {"low": 5, "high": 2}, {"kind": "empirical"}, {"high": 10**9},
            {"kind": "empirical", "values": [0, 3]}, {"sigma": 1e6}, "long"])}),
        st.fixed_dictionaries({"colour": st.integers()}),
        st.fixed_dictionaries({"name": st.just("")}),
    )


def _broken_workload():
    top = st.sampled_from([{}, {"duration_s": 0}, {"duration_s": -1}, {"schema_version": 2}, {"arrivals": {"process": "uniform"}},
                           {"arrivals": {"cv": 0}}, {"seed": "x"}, {"requests": [{"arrival_s": 0, "model": "nope", "prompt_tokens": 1, "output_tokens": 1}]}])
    model = st.builds(lambda bad: {"name": "a", "model": "llama-7b", "rate_rps": 1.0, **bad}, _invalid_model_values())
    return st.builds(lambda t, m: {"schema_version": 1, "duration_s": 10, "models": [m], **t}, top, model)


def _broken_csv():
    header = st.sampled_from(["arrival_s,model,prompt_tokens,output_tokens", "arrival_s,model,prompt_tokens", "TIMESTAMP,ContextTokens",
                              "TIMESTAMP,ContextTokens,GeneratedTokens", ""])
    cell = st.sampled_from(["", "-1", "0", "x", "inf", "nan", "1e400", "2023-13-40 25:00:00", "llama-7b", "gpt-5"])
    row = st.lists(cell, min_size=1, max_size=4).map(",".join)
    return st.builds(lambda h, rows: "\n".join([h, *rows]) + "\n", header, st.lists(row, min_size=0, max_size=3))


JUNK = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8).map(json.dumps),
    _broken_workload().map(json.dumps),
    _broken_csv(),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=JUNK, suffix=st.sampled_from([".json", ".yaml", ".csv", ".jsonl"]))
def test_broken_files_exit_2_and_leave_nothing(tmp_path, content, suffix):
    src = tmp_path / f"in{suffix}"
    src.write_text(content)
    out = tmp_path / "out.json"
    code, problems = invoke("workload", "show", src)
    if code != 2:  # junk that happens to be a valid file (e.g. a CSV with only a good header row) must show cleanly
        assert code == 0 and content.strip(), problems
    else:
        assert all(line.startswith(f"{src}: ") for line in problems), problems
    assert_rejected(tmp_path, src, "workload", "import", src, "--models", "llama-7b:2", "--out", out, out=out)
    for loader in (load_cluster, lambda p: load_contract(p, Profile), lambda p: load_contract(p, Plan)):
        try:
            loader(src)
        except InputError as exc:
            assert all(line.startswith(f"{src}: ") for line in exc.problems), exc.problems
        else:
            raise AssertionError(f"{src} loaded: {content!r}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_broken_workload().map(json.dumps) | _broken_csv(), suffix=st.sampled_from([".json", ".yaml", ".csv"]))
def test_broken_workloads_and_length_files(tmp_path, content, suffix):
    src = tmp_path / f"in{suffix}"
    src.write_text(content)
    out = tmp_path / "out.json"
    if suffix != ".csv":
        assert_rejected(tmp_path, src, "workload", "show", src)
    code, problems = invoke("workload", "synth", "--models", "llama-7b:2", "--duration", "5", "--lengths-from", src, "--out", out)
    if code == 0:  # a CSV trace header with no bad rows can still be valid lengths
        assert out.exists()
        out.unlink()
    else:
        assert code == 2 and all(line.startswith(f"{src}: ") for line in problems), problems
        assert not out.exists()
