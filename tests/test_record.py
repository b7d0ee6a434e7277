"""`deploy --record`: a real engine deployment of a tiny model records what it serves; the segment replays through
`muxplan simulate` with the same request count and lengths, and /metrics shows the observed rate beside the plan's."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import openai
import psutil

from muxplan.files import save_contract
from muxplan.workload import load_workload
from tests.engine_fixtures import VALID_SM, colocated_plan
from tests.helpers import ROOT, free_port, get, run_cli


def _start(plan, port, state, record):
    deploy = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(plan), "--backend", "engine", "--port", str(port),
                               "--state-dir", str(state), "--record", str(record)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    for line in deploy.stdout:
        if " at http://" in line or deploy.poll() is not None:
            break
    assert deploy.poll() is None, "deploy exited"
    deadline = time.monotonic() + 30  # the "serving" line comes just before the router binds its port
    while get(f"http://127.0.0.1:{port}/health") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return deploy


def test_recorded_trace_replays_with_the_same_requests(tiny_models, tmp_path):
    plan = tmp_path / "plan.json"
    save_contract(plan, colocated_plan({"tiny-llama": tiny_models["llama"]}, sm=VALID_SM))
    port = free_port()
    while get(f"http://127.0.0.1:{port + 1}/health") != 0:
        port = free_port()
    record = tmp_path / "rec"
    deploy = _start(plan, port, tmp_path / "state", record)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        sent = []
        for k in range(12):
            r = client.completions.create(model="tiny-llama", prompt="hello " * (3 + 2 * k), max_tokens=2 + k % 5, temperature=0)
            sent.append((r.usage.prompt_tokens, r.usage.completion_tokens))
            time.sleep(0.05)
        stream = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                                stream=True, stream_options={"include_usage": True})
        usage = [c.usage for c in stream if c.usage is not None][0]
        sent.append((usage.prompt_tokens, usage.completion_tokens))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        observed = [line for line in metrics.splitlines() if line.startswith('muxplan_router_observed_rps{model="tiny-llama"}')]
        assert observed and float(observed[0].split()[-1]) > 0
        assert 'muxplan_plan_predicted_rps{model="tiny-llama"}' in metrics
    finally:
        children = psutil.Process(deploy.pid).children(recursive=True)
        deploy.send_signal(signal.SIGINT)
        deploy.wait(timeout=60)
        psutil.wait_procs(children, timeout=10)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    segments = sorted(record.glob("trace-*.json"))
    assert [s.name for s in segments] == ["trace-0000.json"]
    rows = load_workload(segments[0]).requests
    assert sorted((r.prompt_tokens, r.output_tokens) for r in rows) == sorted(sent)
    out = run_cli("simulate", plan, "--workload", segments[0], "--json", check=True)
    assert json.loads(out.stdout)["num_requests"] == len(sent)
