"""Tiny Llama/Qwen2-shaped models (built once per session) and plans that serve them on the engine."""
import pytest

from muxplan.cluster import parse_cluster_shorthand
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """name -> folder: a Llama, a Qwen2 (tied embeddings, q/k/v bias) and a Llama-3-scaled RoPE Llama."""
    from executor.tiny_models import build_tiny_model

    tmp = tmp_path_factory.mktemp("tiny")
    return {
        "llama": build_tiny_model(tmp / "llama", "llama", seed=0),
        "qwen": build_tiny_model(tmp / "qwen", "qwen2", seed=1),
        "llama3": build_tiny_model(tmp / "llama3", "llama", seed=2, rope_scaling=LLAMA3_SCALING),
    }


# (prefill, decode) SM% that keeps two colocated models within the plan checker's 120% decode budget: plans that a server or
# `muxplan deploy` reads from a file go through profiler.plan_check.load_plan
VALID_SM = (100, 60)


def colocated_plan(paths: dict, kv_bytes: int = 16 * 2**20, rates: dict | None = None, sm: tuple[int, int] = (100, 100)) -> Plan:
    """One unit on one logical GPU hosting every model of ``paths``."""
    rates = rates or {name: 1.0 for name in paths}
    models = [PlacedModel(name=name, model=str(path), tp=1, prefill_sm_pct=sm[0], decode_sm_pct=sm[1], kv_bytes=kv_bytes,
                          max_num_seqs=64, routing_share=1.0, rate_rps=rates[name], predicted_rps=rates[name])
              for name, path in paths.items()]
    total = sum(rates.values())
    return Plan(cluster=parse_cluster_shorthand("1x1xA100-80GB"), solver=SolverRecord(method="spatial", objective="throughput", value=total),
                units=[Unit(id=0, node=0, gpu="A100-80GB", gpu_ids=[0], predicted_rps=total, models=models)],
                demand_rps=total, served_rps=total, num_gpus_used=1)
