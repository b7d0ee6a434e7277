"""The router in front of two real engine servers serving the same tiny model (slow: starts torch servers):
a replica killed mid-load loses no request, a stream cut by the kill ends with an error event, a dropped
stream frees the engine's slot, and the context the router learns from the engine bounds prompts."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from executor.admission import Admission
from executor.router import Limits, Replica, RouterState
from muxplan.files import save_contract
from tests.engine_fixtures import colocated_plan
from tests.helpers import ROOT, free_port, get
from tests.router_fixtures import API_KEY, RouterThread, wait_until

pytestmark = pytest.mark.slow


def start_engine(plan, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "executor.engine.server", "--plan", str(plan), "--unit", "0", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while get(f"http://127.0.0.1:{port}/health") != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "engine server did not start"
        time.sleep(0.5)
    return proc


def engine_in_flight(port: int) -> int:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())["in_flight"]


@pytest.fixture(scope="module")
def engines(tiny_models, tmp_path_factory):
    plan = tmp_path_factory.mktemp("router-engine") / "plan.json"
    save_contract(plan, colocated_plan({"tiny-llama": tiny_models["llama"]}))
    ports = [free_port(), free_port()]
    procs = [start_engine(plan, p) for p in ports]
    yield {"plan": plan, "ports": ports, "procs": procs}
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture
def router(engines):
    for k, p in enumerate(engines["procs"]):
        if p.poll() is not None:
            engines["procs"][k] = start_engine(engines["plan"], engines["ports"][k])
    reps = [Replica("tiny-llama", f"http://127.0.0.1:{port}", 1.0, k, f"p{k}", healthy=True) for k, port in enumerate(engines["ports"])]
    state = RouterState({"tiny-llama": reps}, Admission({"tiny-llama": 64}), {"tiny-llama": 1.0}, api_key=API_KEY, limits=Limits(probe_s=0.5))
    with RouterThread(state) as r:
        r.wait_probed("tiny-llama", timeout_s=20)
        yield r


def test_dropped_stream_frees_the_engine_and_prompts_are_bounded_by_its_context(router, engines):
    c = router.client(timeout=60)
    context = router.state.context_tokens["tiny-llama"]
    with pytest.raises(openai.BadRequestError, match=f"max_tokens {context + 1} exceeds model 'tiny-llama''s context of {context} tokens"):
        c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=context + 1)
    stream = c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=context - 8, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    assert sum(engine_in_flight(p) for p in engines["ports"]) == 1
    stream.close()
    wait_until(lambda: sum(engine_in_flight(p) for p in engines["ports"]) == 0, timeout_s=20, what="the engine to drop the stream")
    wait_until(lambda: router.state.admission.in_flight["tiny-llama"] == 0, what="the router slot")


def test_killing_an_engine_replica_mid_load_loses_no_request(router, engines):
    c = router.client(timeout=120)

    def one(k):
        return c.completions.create(model="tiny-llama", prompt=f"Request {k}", max_tokens=8, extra_body={"ignore_eos": True}).usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, k) for k in range(32)]
        wait_until(lambda: sum(f.done() for f in futures) >= 4, timeout_s=120, what="the first answers")
        os.killpg(engines["procs"][1].pid, signal.SIGKILL)
        assert [f.result() for f in futures] == [8] * 32
    assert router.metric("muxplan_router_retries_total", "tiny-llama") >= 1
    assert router.state.replicas["tiny-llama"][1].failed and router.state.admission.in_flight["tiny-llama"] == 0


def test_a_stream_cut_by_an_engine_crash_ends_with_an_error_event(router, engines):
    router.state.replicas["tiny-llama"][1].healthy = False  # the stream goes to engine 0, which is then killed
    c = router.client(timeout=60)
    stream = c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=200, stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    next(it)
    os.killpg(engines["procs"][0].pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="model 'tiny-llama': the backend failed mid-stream"):
        list(it)
    assert router.metric("muxplan_router_stream_errors_total", "tiny-llama") == 1
    assert router.state.admission.in_flight["tiny-llama"] == 0
