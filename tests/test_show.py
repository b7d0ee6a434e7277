"""`muxplan workload show` prints the per-model and total numbers (checked against hand-computed values)."""
import pytest

from muxplan.summary import summarize
from muxplan.workload import load_workload, materialise_requests
from tests.helpers import ROOT, run_cli

# llama-7b-0: arrivals 0,2,..,10 (gaps all 2 -> CV 0); prompts 5x100 + 700 -> mean 200, p99 = 100 + 0.95*600 = 670
# llama-13b:  arrivals 1,3,9 (gaps 2,6 -> CV 2/4 = 0.5); prompts 8,9,10 -> p99 9.98; outputs 30,60,90 -> p99 89.4
# total: 9 requests over the 10 s span; gaps 1,1,1,1,2,2,1,1 -> mean 1.25, std 0.433 -> CV 0.35;
# total prompts 8,9,10,5x100,700 -> mean 136.3, p99 (index 7.92) = 100 + 0.92*600 = 652; outputs p99 = 60 + 0.92*30 = 87.6
TRACE = """arrival_s,model,prompt_tokens,output_tokens
0,llama-7b-0,100,5
1,llama-13b,8,30
2,llama-7b-0,100,5
3,llama-13b,9,60
4,llama-7b-0,100,5
6,llama-7b-0,100,5
8,llama-7b-0,100,5
9,llama-13b,10,90
10,llama-7b-0,700,5
"""


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 12 and cells[0] and not set(cells[0]) <= set("━─┃"):
            rows[cells[0]] = cells[1:]
    return rows


def test_show_trace_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRACE)
    proc = run_cli("workload", "show", path, check=True)
    rows = table_rows(proc.stdout)
    assert rows["llama-7b-0"] == ["llama-7b", "0.600", "6", "0.600", "200.0", "100", "670", "5.0", "5", "5", "0.00"]
    assert rows["llama-13b"] == ["llama-13b", "0.300", "3", "0.300", "9.0", "9", "10", "60.0", "60", "89", "0.50"]
    assert rows["total"] == ["", "0.900", "9", "0.900", "136.3", "100", "652", "23.3", "5", "88", "0.35"]
    assert list(rows) == ["llama-7b-0", "llama-13b", "total"]
    assert f"source: {path}" in proc.stdout


def test_summary_values(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(
        f'{{"arrival_s": {a}, "model": "{m}", "prompt_tokens": {p}, "output_tokens": {o}}}\n'
        for a, m, p, o in (line.split(",") for line in TRACE.splitlines()[1:])))
    s = summarize(load_workload(path))
    a, b = s.models
    assert (a.name, a.num_requests, a.rate_rps, a.prompt_mean, a.prompt_p99, a.arrival_cv) == ("llama-7b-0", 6, 0.6, 200.0, pytest.approx(670.0), 0.0)
    assert (b.output_mean, b.output_p50, b.output_p99, b.arrival_cv) == (60.0, 60.0, pytest.approx(89.4), 0.5)
    assert s.total.num_requests == 9 and s.total.arrival_cv == pytest.approx(0.4330127 / 1.25)
    assert not s.materialised


def test_show_spec_only_paper19():
    proc = run_cli("workload", "show", ROOT / "examples/paper19/workload.yaml", check=True)
    rows = table_rows(proc.stdout)
    assert len(rows) == 20  # 19 models and the total
    assert rows["llama-7b-0"][:2] == ["llama-7b", "40.000"] and rows["llama-65b"][:2] == ["llama-65b", "2.826"]
    assert rows["total"][1] == f"{sum(40.0 * (k + 1) ** -0.9 for k in range(19)):.3f}"
    assert "requests drawn from the spec with seed 1" in proc.stdout
    w = load_workload(ROOT / "examples/paper19/workload.yaml")
    n = len(materialise_requests(w))
    assert rows["total"][2] == str(n)
