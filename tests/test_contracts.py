"""Every file contract round-trips through JSON and YAML, and `muxplan schema NAME` prints its JSON Schema."""
import json

import pytest

from muxplan.catalog import gpu_catalog, model_catalog
from muxplan.cluster import load_cluster
from muxplan.files import load_contract, load_trace, save_contract, save_trace
from muxplan.schema import (
    CONTRACTS, Considered, GpuCatalogFile, ModelCatalogFile, PlacedModel, Plan, Profile, ProfilePoint, SolverRecord, Trace,
    Unit, Unserved,
)
from muxplan.workload import parse_model_counts, synthesize
from tests.helpers import run_cli


def one_of_each() -> dict:
    workload = synthesize(parse_model_counts("llama-7b:2,qwen2.5-14b"), 1.0, 2.0, duration_s=5, seed=1)
    cluster = load_cluster("2x4xH100-SXM+1x8xA100-80GB")
    profile = Profile(gpu="H100-SXM", model="llama-7b", engine="vllm", created="2026-01-01T00:00:00", points=[
        ProfilePoint(phase="decode", tp=1, sm_pct=50, batch=4, tokens=128, latency_ms=9.5),
        ProfilePoint(phase="prefill", tp=2, sm_pct=100, batch=1, tokens=512, latency_ms=31.25)])
    placed = PlacedModel(name="llama-7b-0", model="llama-7b", tp=2, prefill_sm_pct=70, decode_sm_pct=40, kv_bytes=10**9,
                         max_num_seqs=64, routing_share=1.0, rate_rps=2.0, predicted_rps=2.0)
    plan = Plan(workload="w.json", cluster=cluster,
                solver=SolverRecord(method="exact", objective="throughput", value=2.0, bound=2.5, gap=0.2, seconds=1.5),
                units=[Unit(id=0, node=0, gpu="H100-SXM", gpu_ids=[0, 1], models=[placed], predicted_rps=2.0)],
                unserved=[Unserved(name="llama-7b-1", demand_rps=1.0, served_rps=0.0, reason="no memory")],
                demand_rps=3.0, served_rps=2.0, num_gpus_used=2,
                considered=[Considered(method="greedy", value=1.5, served_rps=1.5, num_gpus_used=2, seconds=0.1)])
    return {
        "model-catalog": ModelCatalogFile(models=list(model_catalog().values())),
        "gpu-catalog": GpuCatalogFile(gpus=list(gpu_catalog().values())),
        "cluster": cluster, "workload": workload, "trace": Trace(requests=workload.requests, source="synth"),
        "profile": profile, "plan": plan,
    }


def test_one_of_each_covers_every_contract():
    assert sorted(one_of_each()) == sorted(CONTRACTS)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_contract_round_trips(tmp_path, name, suffix):
    obj = one_of_each()[name]
    path = tmp_path / f"{name}{suffix}"
    save_contract(path, obj)
    back = load_contract(path, CONTRACTS[name])
    assert back == obj and type(back) is type(obj)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".yaml"])
def test_trace_formats_round_trip(tmp_path, suffix):
    rows = synthesize(parse_model_counts("llama-7b:2"), 1.0, 3.0, duration_s=20, seed=2).requests
    save_trace(tmp_path / f"t{suffix}", Trace(requests=rows))
    back = load_trace(tmp_path / f"t{suffix}").requests
    assert [(r.model, r.prompt_tokens, r.output_tokens) for r in back] == [(r.model, r.prompt_tokens, r.output_tokens) for r in rows]
    assert max(abs(a.arrival_s - b.arrival_s) for a, b in zip(back, rows)) <= 5e-7  # CSV keeps microseconds
    if suffix in (".jsonl", ".json", ".yaml"):
        assert back == rows


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_schema_command_prints_each_json_schema(name):
    proc = run_cli("schema", name, check=True)
    schema = json.loads(proc.stdout)
    assert schema == CONTRACTS[name].model_json_schema()
    assert schema["title"] == CONTRACTS[name].__name__ and "schema_version" in schema["properties"]


def test_schema_command_rejects_unknown_name():
    proc = run_cli("schema", "plans")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unknown schema 'plans'; known: model-catalog, gpu-catalog, cluster, workload, trace, profile, plan"
