"""Malformed files: one line per problem naming file and field, exit code 2, no traceback, no output left."""
import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muxplan.cli import app
from muxplan.files import InputError
from tests.helpers import run_cli

runner = CliRunner()


def invoke(*args):
    """Run the CLI in-process the way main() does: InputError -> exit 2."""
    try:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    except InputError:
        return 2, ""
    if isinstance(result.exception, InputError):
        return 2, str(result.exception)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


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
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert lines == [
        f"error: {bad}: models[0].rate_rps: Input should be a valid number, unable to parse string as a number",
        f"error: {bad}: models[0].colour: Extra inputs are not permitted",
    ]


def test_unknown_names_list_known(tmp_path):
    proc = run_cli("workload", "synth", "--models", "gpt-5:2", "--out", tmp_path / "w.json")
    assert proc.returncode == 2 and "unknown model 'gpt-5'; known: llama-7b" in proc.stderr
    assert not (tmp_path / "w.json").exists()
    cluster = tmp_path / "c.yaml"
    cluster.write_text("schema_version: 1\nnodes:\n  - {gpu: B900, num_gpus: 8}\n")
    from muxplan.cluster import load_cluster

    try:
        load_cluster(cluster)
    except InputError as exc:
        assert str(exc).startswith(f"{cluster}: nodes[0].gpu: unknown GPU 'B900'; known: A100-40GB")
    else:
        raise AssertionError("expected InputError")


def test_trace_missing_column_and_bad_value(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("arrival_s,model,prompt_tokens\n0.1,llama-7b,5\n")
    proc = run_cli("workload", "show", t)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {t}: header: missing column output_tokens (need arrival_s, model, prompt_tokens, output_tokens)"
    t.write_text("arrival_s,model,prompt_tokens,output_tokens\n0.1,llama-7b,5,3\n0.2,llama-7b,-5,3\n")
    proc = run_cli("workload", "show", t)
    assert proc.returncode == 2 and f"{t}: rows[1].prompt_tokens: Input should be greater than or equal to 1" in proc.stderr


SUFFIXES = st.sampled_from([".json", ".yaml", ".csv", ".jsonl"])
JUNK = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8).map(json.dumps),
    st.builds(lambda rate: json.dumps({"schema_version": 1, "models": [{"name": "x", "model": "llama-7b", "rate_rps": rate}]}),
              st.floats(max_value=-0.001) | st.text(max_size=3)),
    st.builds(lambda a, p: f"arrival_s,model,prompt_tokens,output_tokens\n{a},llama-7b,{p},1\n", st.text(max_size=4), st.integers(-5, 0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=JUNK, suffix=SUFFIXES)
def test_broken_files_exit_2_and_leave_nothing(tmp_path, content, suffix):
    src = tmp_path / f"in{suffix}"
    src.write_text(content)
    out = tmp_path / "out.json"
    code, _ = invoke("workload", "show", src)
    assert code == 2
    code, _ = invoke("workload", "import", src, "--models", "llama-7b:2", "--out", out)
    assert code == 2 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]
