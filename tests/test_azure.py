"""Azure trace import keeps the real arrivals and lengths; --lengths-from resamples real lengths."""
import numpy as np
import pytest

from muxplan.azure import import_azure, read_azure_csv, timestamp_ns
from muxplan.files import InputError, load_contract, load_trace
from muxplan.schema import Workload
from muxplan.workload import load_workload, parse_model_counts
from tests.helpers import run_cli, shared_dir


@pytest.fixture(scope="module")
def azure():
    path = shared_dir() / "traces" / "azure_llm_2023_code.csv"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="module")
def expected(azure):
    """The file parsed independently (pandas, nanosecond timestamps), sorted by arrival."""
    import pandas as pd

    df = pd.read_csv(azure)
    ns = pd.to_datetime(df["TIMESTAMP"]).astype("int64").to_numpy()
    order = np.argsort(ns, kind="stable")
    arrival = (ns - ns.min()) / 1e9
    return arrival[order], df["ContextTokens"].to_numpy()[order], df["GeneratedTokens"].to_numpy()[order]


def test_timestamp_parsing_is_exact():
    assert timestamp_ns("2023-11-16 18:17:04.0319600") - timestamp_ns("2023-11-16 18:17:03.9799600") == 52_000_000
    assert timestamp_ns("1970-01-02 00:00:01") == 86401 * 10**9
    assert timestamp_ns("1970-01-01 00:00:00.123456789") == 123456789


def test_import_keeps_arrivals_and_lengths_exactly(azure, expected):
    arrival, prompt, output = expected
    w = import_azure(azure, parse_model_counts("llama-3.1-8b:2,qwen2.5-14b:1"), 1.0, seed=2)
    assert len(w.requests) == len(arrival) == 8819
    assert [r.arrival_s for r in w.requests] == arrival.tolist()
    assert [r.prompt_tokens for r in w.requests] == prompt.tolist()
    assert [r.output_tokens for r in w.requests] == output.tolist()
    assert w.requests[0].arrival_s == 0.0 and w.duration_s == pytest.approx(3435.948056)
    assert [m.name for m in w.models] == ["llama-3.1-8b-0", "llama-3.1-8b-1", "qwen2.5-14b"]
    assert [m.model for m in w.models] == ["llama-3.1-8b", "llama-3.1-8b", "qwen2.5-14b"]
    # p_k ∝ 1/(k+1): 6/11, 3/11, 2/11 of the requests (3 sigma ~ 1.6 percentage points)
    counts = {m.name: sum(r.model == m.name for r in w.requests) for m in w.models}
    assert [counts[m.name] / 8819 for m in w.models] == pytest.approx([6 / 11, 3 / 11, 2 / 11], abs=0.016)
    assert [m.rate_rps for m in w.models] == pytest.approx([counts[m.name] / w.duration_s for m in w.models])
    assert "CC-BY 4.0" in w.source and "Splitwise" in w.source and w.seed == 2
    assert import_azure(azure, parse_model_counts("llama-3.1-8b:2,qwen2.5-14b:1"), 1.0, seed=2) == w


def test_cli_import_json_and_csv(tmp_path, azure):
    out = tmp_path / "T.json"
    run_cli("workload", "import", azure, "--models", "llama-3.1-8b:2,qwen2.5-14b:1", "--alpha", "1.0", "--seed", "2", "--out", out, check=True)
    w = load_contract(out, Workload)
    assert w == import_azure(azure, parse_model_counts("llama-3.1-8b:2,qwen2.5-14b:1"), 1.0, seed=2)
    assert load_workload(out) == w
    csv_out = tmp_path / "T.csv"
    proc = run_cli("workload", "import", azure, "--models", "llama-3.1-8b:2,qwen2.5-14b:1", "--seed", "2", "--out", csv_out, check=True)
    assert proc.stdout.strip() == f"wrote {csv_out}: 3 models, 8819 requests over 3435.9 s"
    rows = load_trace(csv_out).requests
    assert [(r.model, r.prompt_tokens, r.output_tokens) for r in rows] == [(r.model, r.prompt_tokens, r.output_tokens) for r in w.requests]
    assert max(abs(a.arrival_s - b.arrival_s) for a, b in zip(rows, w.requests)) <= 5e-7
    from_csv = load_workload(csv_out)
    assert [m.rate_rps for m in from_csv.models] == pytest.approx([m.rate_rps for m in w.models], rel=1e-6)


def test_synth_lengths_from_azure(tmp_path, azure, expected):
    _, prompt, output = expected
    out = tmp_path / "W.json"
    run_cli("workload", "synth", "--models", "llama-7b:2", "--top-rate", "20", "--duration", "200", "--seed", "3",
            "--lengths-from", azure, "--out", out, check=True)
    w = load_contract(out, Workload)
    dist = w.models[0].prompt_tokens
    assert dist.kind == "empirical" and len(dist.values) == 1000 and dist.mean == pytest.approx(prompt.mean())
    assert (dist.low, dist.high) == (prompt.min(), prompt.max())
    assert set(dist.values) <= set(prompt.tolist()) and set(w.models[0].output_tokens.values) <= set(output.tolist())
    drawn = np.array([r.prompt_tokens for r in w.requests])
    assert drawn.size > 4000 and drawn.mean() == pytest.approx(prompt.mean(), rel=0.05)
    assert np.median([r.output_tokens for r in w.requests]) == np.median(output)


def test_bad_azure_rows_one_line_each(tmp_path):
    bad = tmp_path / "a.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,0\nyesterday,-3,x\n2023-11-16 18:17:05,0,2\n")
    with pytest.raises(InputError) as err:
        read_azure_csv(bad)
    assert err.value.problems == [
        f"{bad}: rows[1].TIMESTAMP: 'yesterday' is not YYYY-MM-DD HH:MM:SS.fff",
        f"{bad}: rows[1].ContextTokens: '-3' is not an integer in 1..1048576",
        f"{bad}: rows[1].GeneratedTokens: 'x' is not an integer in 0..1048576",
        f"{bad}: rows[2].ContextTokens: '0' is not an integer in 1..1048576",
    ]
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.5,10,0\n2023-11-16 18:17:03.25,7,3\n")
    trace = read_azure_csv(bad)
    assert trace.arrival_s.tolist() == [0.25, 0.0] and trace.output_tokens.tolist() == [1, 3]
    proc = run_cli("workload", "show", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: header: an Azure trace has no model column; convert it with `muxplan workload import`"
