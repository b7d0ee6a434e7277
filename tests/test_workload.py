import json

import numpy as np
import pytest

from muxplan.files import InputError, load_contract, save_contract
from muxplan.schema import CONTRACTS, Arrivals, LengthDist, Workload
from muxplan.workload import (
    import_azure, load_workload, materialise_requests, parse_model_counts, read_azure_csv, summarize, synthesize,
)
from tests.helpers import ROOT, run_cli, shared_dir

PAPER = "llama-7b:12,llama-13b:4,llama-30b:2,llama-65b:1"


def test_parse_counts_and_names():
    assert parse_model_counts("llama-7b:2,mistral-7b") == [("llama-7b", 2), ("mistral-7b", 1)]
    w = synthesize(parse_model_counts("llama-7b:2,mistral-7b"), 1.0, 10.0, duration_s=10, materialise=False)
    assert [m.name for m in w.models] == ["llama-7b-0", "llama-7b-1", "mistral-7b"]
    with pytest.raises(InputError, match="count must be a positive integer"):
        parse_model_counts("llama-7b:0")


def test_size_order_gives_largest_model_least_traffic():
    w = synthesize(parse_model_counts(PAPER), 0.9, 40.0, materialise=False)
    rates = {m.name: m.rate_rps for m in w.models}
    assert rates["llama-7b-0"] == 40.0
    assert rates["llama-65b"] == pytest.approx(40.0 * 19**-0.9)
    assert rates["llama-30b-1"] == pytest.approx(40.0 * 18**-0.9)
    shuffled = synthesize(parse_model_counts(PAPER), 0.9, 40.0, order="shuffled", seed=3, materialise=False)
    assert sorted(m.rate_rps for m in shuffled.models) == pytest.approx(sorted(rates.values()))
    assert [m.rate_rps for m in shuffled.models] != [m.rate_rps for m in w.models]


@pytest.mark.parametrize("arrivals", [Arrivals(process="poisson"), Arrivals(process="gamma", cv=2.0)])
def test_mean_rate_within_five_percent_and_cv(arrivals):
    w = synthesize(parse_model_counts("llama-7b:3"), 0.0, 20.0, duration_s=2000, seed=5, arrivals=arrivals)
    for s in summarize(w):
        assert s.rate_rps == pytest.approx(20.0, rel=0.05)
        assert s.arrival_cv == pytest.approx(arrivals.cv, rel=0.1)


def test_popularity_follows_alpha():
    w = synthesize(parse_model_counts("llama-7b:10"), 1.3, 50.0, duration_s=3000, seed=7)
    counts = sorted((s.num_requests for s in summarize(w)), reverse=True)
    slope = np.polyfit(np.log(np.arange(1, 11)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-1.3, abs=0.05)


def test_materialise_is_deterministic_and_matches_embedded():
    spec = synthesize(parse_model_counts("llama-7b:2"), 1.0, 5.0, duration_s=50, seed=11, materialise=False)
    a, b = materialise_requests(spec), materialise_requests(spec)
    assert a == b and len(a) > 100
    full = synthesize(parse_model_counts("llama-7b:2"), 1.0, 5.0, duration_s=50, seed=11)
    assert full.requests == a
    assert all(r.arrival_s < 50 for r in a) and a == sorted(a, key=lambda r: r.arrival_s)


def test_lengths_lognormal_mean():
    rng = np.random.default_rng(0)
    from muxplan.workload import sample_lengths

    values = sample_lengths(LengthDist(mean=300, sigma=0.6, high=100000), 200000, rng)
    assert values.mean() == pytest.approx(300, rel=0.02)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_every_schema_prints(name):
    proc = run_cli("schema", name, check=True)
    assert json.loads(proc.stdout)["type"] == "object"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_contract_round_trips(tmp_path, suffix):
    from muxplan.cluster import load_cluster
    from muxplan.schema import Plan, PlacedModel, Profile, ProfilePoint, SolverRecord, Trace, Unit, Unserved

    workload = synthesize(parse_model_counts("llama-7b:2"), 1.0, 2.0, duration_s=5, seed=1)
    cluster = load_cluster("2x4xH100-SXM")
    profile = Profile(gpu="H100-SXM", model="llama-7b", points=[ProfilePoint(phase="decode", tp=1, sm_pct=50, batch=4, tokens=128, latency_ms=9.5)])
    placed = PlacedModel(name="llama-7b-0", model="llama-7b", tp=2, prefill_sm_pct=70, decode_sm_pct=40, kv_bytes=10**9,
                         max_num_seqs=64, routing_share=1.0, rate_rps=2.0, predicted_rps=2.0)
    plan = Plan(cluster=cluster, solver=SolverRecord(method="exact", objective="throughput", value=2.0, bound=2.0, gap=0.0),
                units=[Unit(id=0, node=0, gpu="H100-SXM", gpu_ids=[0, 1], models=[placed], predicted_rps=2.0)],
                unserved=[Unserved(name="llama-7b-1", demand_rps=1.0, served_rps=0.0, reason="no memory")],
                demand_rps=3.0, served_rps=2.0, num_gpus_used=2)
    for obj in (workload, cluster, profile, plan, Trace(requests=workload.requests)):
        path = tmp_path / f"x{suffix}"
        save_contract(path, obj)
        assert load_contract(path, type(obj)) == obj


def test_trace_formats_round_trip(tmp_path):
    from muxplan.files import load_trace, save_trace
    from muxplan.schema import Trace

    rows = synthesize(parse_model_counts("llama-7b:2"), 1.0, 3.0, duration_s=20, seed=2).requests
    for suffix in (".csv", ".jsonl", ".json"):
        save_trace(tmp_path / f"t{suffix}", Trace(requests=rows))
        back = load_trace(tmp_path / f"t{suffix}").requests
        assert [(r.model, r.prompt_tokens, r.output_tokens) for r in back] == [(r.model, r.prompt_tokens, r.output_tokens) for r in rows]
        assert max(abs(a.arrival_s - b.arrival_s) for a, b in zip(back, rows)) < 1e-6
    w = load_workload(tmp_path / "t.csv")
    assert [m.model for m in w.models] == ["llama-7b", "llama-7b"] and len(w.requests) == len(rows)


def test_azure_import_keeps_arrivals_and_lengths(tmp_path):
    azure = shared_dir() / "traces" / "azure_llm_2023_code.csv"
    raw = read_azure_csv(azure)
    w = import_azure(azure, parse_model_counts("llama-3.1-8b:2,qwen2.5-14b:1"), 1.0, seed=2)
    assert len(w.requests) == len(raw) == 8819
    assert sorted((round(t, 6), c, g) for t, c, g in raw) == [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in w.requests]
    share = {m.name: sum(r.model == m.name for r in w.requests) / len(raw) for m in w.models}
    assert share["llama-3.1-8b-0"] > share["llama-3.1-8b-1"] > share["qwen2.5-14b"]
    assert "Splitwise" in w.source
    out = tmp_path / "T.json"
    run_cli("workload", "import", azure, "--models", "llama-3.1-8b:2,qwen2.5-14b:1", "--alpha", "1.0", "--seed", "2", "--out", out, check=True)
    assert load_contract(out, Workload).requests == w.requests


def test_cli_synth_and_show(tmp_path):
    out = tmp_path / "W.json"
    run_cli("workload", "synth", "--models", "llama-7b:2,llama-13b:1", "--alpha", "1.0", "--top-rate", "4", "--duration", "100",
            "--seed", "1", "--arrivals", "gamma", "--cv", "2", "--out", out, check=True)
    w = load_contract(out, Workload)
    assert [m.rate_rps for m in w.models] == [4.0, 2.0, 4.0 / 3]
    show = run_cli("workload", "show", out, check=True).stdout
    assert "llama-13b" in show and "total" in show
    assert str(len(w.requests)) in show


def test_bundled_examples_load():
    from muxplan.cluster import load_cluster

    w = load_workload(ROOT / "examples/paper19/workload.yaml")
    assert len(w.models) == 19 and w.models[0].rate_rps == 40.0
    assert load_cluster(ROOT / "examples/paper19/cluster.yaml").num_gpus == 32
    assert load_cluster(ROOT / "examples/small/cluster.yaml").num_gpus == 4
    assert len(load_workload(ROOT / "examples/small/workload.yaml").models) == 5
