"""`deploy --update`: a real engine deployment of two tiny units moves a model from one unit to the other while an
openai client keeps sending requests to it; every request is answered 200 and no old process is left behind."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import psutil

from muxplan.cluster import parse_cluster_shorthand
from muxplan.files import save_contract
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit
from tests.helpers import ROOT, free_port, get, run_cli


def _plan(paths: dict, layout: list[list[str]]) -> Plan:
    units = []
    for uid, names in enumerate(layout):
        sm = 100 if len(names) == 1 else 60  # two colocated decodes within the 120% budget
        models = [PlacedModel(name=n, model=str(paths[n]), tp=1, prefill_sm_pct=100, decode_sm_pct=sm, kv_bytes=16 * 2**20,
                              max_num_seqs=16, routing_share=1.0, rate_rps=1.0, predicted_rps=1.0) for n in names]
        units.append(Unit(id=uid, node=0, gpu="A100-80GB", gpu_ids=[uid], predicted_rps=len(names), models=models))
    return Plan(cluster=parse_cluster_shorthand("1x2xA100-80GB"), solver=SolverRecord(method="spatial", objective="throughput", value=3.0),
                units=units, demand_rps=3.0, served_rps=3.0, num_gpus_used=2)


def _client(port, model, results, stop):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
    k = 0
    while not stop.is_set():
        try:
            r = client.completions.create(model=model, prompt="count " * (2 + k % 7), max_tokens=4, temperature=0)
            results.append(200 if r.choices else -1)
        except openai.APIStatusError as exc:
            results.append(exc.status_code)
        except openai.APIError as exc:  # connection errors, cut streams
            results.append(repr(exc))
        k += 1


def test_update_moves_a_model_between_units_without_a_failed_request(tiny_models, tmp_path):
    paths = {"tiny-llama": tiny_models["llama"], "tiny-qwen": tiny_models["qwen"], "tiny-llama-b": tiny_models["llama3"]}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    save_contract(old, _plan(paths, [["tiny-llama"], ["tiny-qwen", "tiny-llama-b"]]))
    save_contract(new, _plan(paths, [["tiny-llama", "tiny-llama-b"], ["tiny-qwen"]]))
    port = free_port()
    while any(get(f"http://127.0.0.1:{port + k}/health") != 0 for k in range(1, 6)):
        port = free_port()
    state = tmp_path / "state"
    deploy = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(old), "--backend", "engine", "--port", str(port),
                               "--state-dir", str(state)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    drained = []
    stop, results = threading.Event(), {"tiny-llama-b": [], "tiny-llama": []}
    threads = []
    try:
        for line in deploy.stdout:
            if " at http://" in line or deploy.poll() is not None:
                break
        assert deploy.poll() is None
        deadline = time.monotonic() + 30  # the "serving" line comes just before the router binds its port
        while get(f"http://127.0.0.1:{port}/health") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        threading.Thread(target=lambda: drained.extend(deploy.stdout), daemon=True).start()  # never block its writes
        before = {row["name"]: row["pid"] for row in json.loads((state / "deployment.json").read_text())["processes"]}
        old_trees = {name: [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True) for name, pid in before.items()}
        threads = [threading.Thread(target=_client, args=(port, m, results[m], stop)) for m in results]
        for t in threads:
            t.start()
        time.sleep(1.0)
        out = run_cli("deploy", "--update", new, "--state-dir", state)
        assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        for model, got in results.items():
            assert got and all(s == 200 for s in got), (model, [s for s in got if s != 200][:5], "".join(drained)[-3000:])
        log = json.loads((state / "update.json").read_text())
        assert log["status"] == "done"
        assert [s["step"] for s in log["steps"] if s["status"] == "done" and s["step"].startswith("stop")] == \
            ["stopped unit0", "stopped unit1"] or {"stopped unit0", "stopped unit1"} <= {s["step"] for s in log["steps"]}
        after = {row["name"]: row["pid"] for row in json.loads((state / "deployment.json").read_text())["processes"]}
        assert sorted(after) == ["unit0.g1", "unit1.g1"]
        for name, tree in old_trees.items():  # the old processes and everything under them are gone
            assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], name
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read())["data"]
        assert {m["id"]: m["units"] for m in models} == {"tiny-llama": [0], "tiny-llama-b": [0], "tiny-qwen": [1]}
        new_tree = [psutil.Process(pid) for pid in after.values()]
        new_tree += [c for p in new_tree for c in p.children(recursive=True)]
    finally:
        stop.set()
        deploy.send_signal(signal.SIGINT)
        deploy.wait(timeout=60)
    psutil.wait_procs(new_tree, timeout=10)
    assert not [p for p in new_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
