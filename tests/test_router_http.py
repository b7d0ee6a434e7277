"""The router over real HTTP with the official openai client, in front of stub backends (real uvicorn
servers in subprocesses): the OpenAI surface, failover, bounds, stream errors, disconnects, metrics."""
import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.router_fixtures import API_KEY, TOKEN, RouterThread, Stub, router_state, wait_until


@pytest.fixture(scope="module")
def stubs():
    s = {"a1": Stub("a1", ["a", "b"]).start(), "a2": Stub("a2", ["a"]).start()}
    yield s
    for stub in s.values():
        stub.kill()


@pytest.fixture
def router(stubs):
    for s in stubs.values():  # a test may have killed one
        if s.proc.poll() is not None:
            s.start()
    with RouterThread(router_state({"a": [stubs["a1"], stubs["a2"]], "b": [stubs["a1"]]})) as r:
        r.wait_probed("a")
        r.wait_probed("b")
        yield r


def test_openai_surface_and_router_metrics(router):
    c = router.client()
    out = c.completions.create(model="a", prompt="Hello", max_tokens=3)
    assert out.choices[0].text == "xxx" and out.usage.completion_tokens == 3
    chat = c.chat.completions.create(model="b", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], max_tokens=2)
    assert chat.choices[0].message.content == "xx" and chat.system_fingerprint == "a1"
    chunks = list(c.completions.create(model="a", prompt="Hi", max_tokens=4, stream=True))
    assert [ch.choices[0].text for ch in chunks] == ["x"] * 4
    served_by = {c.completions.create(model="a", prompt="Hi", max_tokens=1).system_fingerprint for _ in range(4)}
    assert served_by == {"a1", "a2"}  # equal shares alternate
    models = {m.id: m for m in c.models.list().data}
    assert models["a"].model_extra["replicas"] == 2 and models["a"].model_extra["max_model_len"] == 2048
    # a stream's accounting ends after its last byte went out, possibly after the client read it
    wait_until(lambda: router.metric("muxplan_router_tpot_seconds_count", "a") == 1, what="the stream's time per token")
    assert router.metric("muxplan_router_ttft_seconds_count", "a") == 1
    assert router.metric("muxplan_router_request_bytes_count", "a") == 6
    assert router.metric("muxplan_router_response_bytes_count", "a") == 6
    assert not any(router.state.admission.in_flight.values())


def test_api_key_and_backend_token(router, stubs):
    bad = openai.OpenAI(base_url=router.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
        bad.completions.create(model="a", prompt="Hi", max_tokens=1)
    direct = openai.OpenAI(base_url=stubs["a1"].url + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="missing or wrong token"):  # the router sends TOKEN; nobody else has it
        direct.completions.create(model="a", prompt="Hi", max_tokens=1)
    assert openai.OpenAI(base_url=stubs["a1"].url + "/v1", api_key=TOKEN, max_retries=0).completions.create(
        model="a", prompt="Hi", max_tokens=1).usage.completion_tokens == 1


def test_a_backend_500_is_relayed_and_does_not_mark_the_replica_down(router):
    c = router.client()
    for _ in range(2):
        with pytest.raises(openai.InternalServerError, match="stub failure"):
            c.completions.create(model="b", prompt="Hi", max_tokens=1, extra_body={"stub": {"status": 500}})
    assert c.completions.create(model="b", prompt="Hi", max_tokens=1).usage.completion_tokens == 1  # two backend 500s do not take the replica out
    assert all(not r.failed for r in router.state.replicas["b"])
    assert router.metric("muxplan_router_replica_failures_total", "b") == 0


def test_killing_a_replica_mid_load_loses_no_request(router, stubs):
    c = router.client(timeout=30)

    def one(k):
        return c.completions.create(model="a", prompt=f"r{k}", max_tokens=2, extra_body={"stub": {"delay_s": 0.05}}).system_fingerprint

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, k) for k in range(60)]
        wait_until(lambda: sum(f.done() for f in futures) >= 10, what="the first answers")
        stubs["a2"].kill()
        answered = [f.result() for f in futures]  # raises if any request failed
    assert len(answered) == 60 and answered[-10:] == ["a1"] * 10
    assert router.metric("muxplan_router_retries_total", "a") >= 1
    assert router.metric("muxplan_router_failovers_total", "a") == router.metric("muxplan_router_retries_total", "a")
    assert [r.failed for r in router.state.replicas["a"]] == [False, True]
    stubs["a2"].start()  # same port: the router's probe finds it and routes to it again
    wait_until(lambda: not router.state.replicas["a"][1].failed, what="the probe to mark a2 up")
    assert {one(k) for k in range(4)} == {"a1", "a2"}
    assert router.state.admission.in_flight["a"] == 0


def test_no_reachable_replica_is_a_503_after_one_retry():
    doomed = [Stub("d1", ["a"]).start(), Stub("d2", ["a"]).start()]
    state = router_state({"a": doomed}, probe_s=3600.0)  # one probe at start, then none: only requests find them gone
    with RouterThread(state) as r:
        r.wait_probed("a")
        for s in doomed:
            s.kill()
        status, headers, body = r.post("/v1/completions", json.dumps({"model": "a", "prompt": "Hi"}).encode())
        assert (status, headers["retry-after"]) == (503, "5")
        assert json.loads(body)["error"]["message"] == "model 'a': backend unreachable"
        assert r.metric("muxplan_router_retries_total", "a") == 1
        status, _, body = r.post("/v1/completions", json.dumps({"model": "a", "prompt": "Hi"}).encode())
        assert (status, json.loads(body)["error"]["message"]) == (503, "model 'a' has no healthy backend right now")
        assert state.admission.in_flight["a"] == 0


def test_bounds_give_413_and_400_naming_the_limit(router):
    c = router.client()
    with pytest.raises(openai.APIStatusError, match="request body is larger than the 4194304-byte limit") as err:
        c.completions.create(model="a", prompt="x" * (10 * 2**20), max_tokens=1)
    assert err.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="max_tokens 5000 exceeds model 'a''s context of 2048 tokens"):
        c.completions.create(model="a", prompt="Hi", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="prompt of at least 3000 tokens plus 1 output tokens exceeds model 'a''s context"):
        c.completions.create(model="a", prompt=[7] * 3000, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="prompt of at least 3125 tokens plus 16 output tokens exceeds model 'b''s context"):
        c.chat.completions.create(model="b", messages=[{"role": "user", "content": "y" * 100_000}], max_tokens=16)
    for field, value in (("max_tokens", 0), ("max_tokens", "5"), ("max_completion_tokens", 1.5)):
        status, _, body = router.post("/v1/chat/completions", json.dumps({"model": "a", "messages": [], field: value}).encode())
        assert (status, json.loads(body)["error"]["message"]) == (400, f"field '{field}' must be a positive integer")
    assert not any(router.state.admission.in_flight.values())


@pytest.mark.parametrize("body, message", [
    (b'{"model": "a", "prompt": "Hi", "temperature": NaN}', "request body must be JSON: NaN is not valid JSON"),
    (b'{"model": "a", "prompt": "Hi", "top_p": Infinity}', "request body must be JSON: Infinity is not valid JSON"),
    (b'{"model": "a", "prompt": "Hi", "seed": -Infinity}', "request body must be JSON: -Infinity is not valid JSON"),
    (b'{"model": "a", "prompt": "Hi", "temperature": 1e999}', "request body must be JSON: 1e999 is out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "request body must be JSON: nested too deeply"),
    (b'{"model": "a", "prompt": ' + b"[" * 900 + b"]" * 900 + b', "max_tokens": 5}',  # parsed, then refused: backends would 500
     "request body must be JSON: nested too deeply (more than 64 levels)"),
    (b'{"model": "a", "prompt": ' + b"[" * 62 + b"1" + b"]" * 62 + b', "max_tokens": 5000}',  # 63 levels pass to the limits
     "max_tokens 5000 exceeds model 'a''s context of 2048 tokens"),
    (b'{"model": "a", "stream": "yes"}', "field 'stream' must be true or false"),
    (b'{"model": 7}', "field 'model' is required"),
    (b'"a"', "request body must be a JSON object"),
    (b'{"model": "\xc3\x28"}', "request body must be JSON: 'utf-8' codec can't decode byte 0xc3 in position 11: invalid continuation byte"),
])
def test_bad_bodies_are_400s_that_hold_no_slot(router, body, message):
    status, _, raw = router.post("/v1/completions", body)
    assert (status, json.loads(raw)["error"]["message"]) == (400, message)
    assert not any(router.state.admission.in_flight.values())  # no admission slot is left held


def test_unknown_models_share_one_metrics_label(router):
    for k in range(30):
        status, _, _ = router.post("/v1/completions", json.dumps({"model": f"nope-{k}", "prompt": "Hi"}).encode())
        assert status == 404
    text = router.metrics()
    assert 'muxplan_router_requests_total{model="_unknown",status="404"} 30.0' in text and "nope-" not in text


def test_queue_bound_429_and_queue_timeout_504(stubs):
    state = router_state({"b": [stubs["a1"]]}, quota=1, queue_depth=1, queue_timeout_s=0.5)
    with RouterThread(state) as r:
        c = r.client(timeout=30)
        with ThreadPoolExecutor(2) as pool:
            holder = pool.submit(c.completions.create, model="b", prompt="Hi", max_tokens=1, extra_body={"stub": {"delay_s": 1.5}})
            wait_until(lambda: state.admission.in_flight.get("b") == 1, what="the first request to hold the slot")
            waiter = pool.submit(r.post, "/v1/completions", json.dumps({"model": "b", "prompt": "Hi"}).encode())
            wait_until(lambda: state.admission.queued("b") == 1, what="the second request to queue")
            status, headers, body = r.post("/v1/completions", json.dumps({"model": "b", "prompt": "Hi"}).encode())
            assert (status, headers["retry-after"]) == (429, "1")
            assert json.loads(body)["error"]["message"] == "model 'b' is at its admission quota (1 in flight, 1 waiting)"
            status, headers, body = waiter.result()
            assert (status, headers["retry-after"]) == (504, "1")
            assert json.loads(body)["error"]["message"] == "model 'b': no admission slot within 0.5 s"
            assert holder.result().usage.completion_tokens == 1
        assert state.admission.in_flight == {"b": 0} and state.admission.queued("b") == 0


def test_a_silent_backend_gives_504_before_headers_and_an_error_event_after(stubs):
    state = router_state({"b": [stubs["a1"]]}, upstream_timeout_s=0.5)
    with RouterThread(state) as r:
        status, headers, body = r.post("/v1/completions", json.dumps({"model": "b", "prompt": "Hi", "stub": {"delay_s": 1.5}}).encode())
        assert (status, headers["retry-after"]) == (504, "5")
        assert json.loads(body)["error"]["message"] == "model 'b': backend did not answer within 0.5 s"
        stream = r.client().completions.create(model="b", prompt="Hi", max_tokens=3, stream=True, extra_body={"stub": {"token_delay_s": 1.5}})
        with pytest.raises(openai.APIError, match=r"^model 'b': the backend failed mid-stream \(the backend sent nothing for 0.5 s\)$"):
            list(stream)
        wait_until(lambda: stubs["a1"].in_flight() == 0, what="the backend to finish both")
        assert not state.replicas["b"][0].failed  # slow is not down
        assert state.admission.in_flight == {"b": 0}


def test_a_stream_cut_by_a_backend_crash_ends_with_an_error_event(router, stubs):
    c = router.client()
    stream = c.completions.create(model="b", prompt="Hi", max_tokens=5, stream=True, extra_body={"stub": {"crash": "mid_stream"}})
    with pytest.raises(openai.APIError, match=r"^model 'b': the backend failed mid-stream \(the backend closed the connection\)$"):
        list(stream)
    raw = urllib.request.urlopen(urllib.request.Request(  # the same on the wire: an error event, no [DONE]
        router.url + "/v1/completions", data=json.dumps({"model": "a", "prompt": "Hi", "max_tokens": 3, "stream": True,
                                                          "stub": {"crash": "mid_stream"}}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})).read()
    assert b"[DONE]" not in raw and raw.endswith(b'"type": "backend_error", "code": 503}}\n\n') and raw.count(b"data:") == 2
    assert router.metric("muxplan_router_stream_errors_total", "a") == 1
    assert not any(router.state.admission.in_flight.values())


def test_a_client_that_drops_a_stream_frees_the_backend_slot(router, stubs):
    body = json.dumps({"model": "b", "prompt": "Hi", "max_tokens": 200, "stream": True, "stub": {"token_delay_s": 0.05}}).encode()
    sock = socket.create_connection(("127.0.0.1", router.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                 + API_KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"200 OK" in sock.recv(4096)
    wait_until(lambda: stubs["a1"].in_flight() == 1, what="the stream to be generating")
    sock.close()
    wait_until(lambda: stubs["a1"].in_flight() == 0, what="the backend to drop the abandoned stream")
    wait_until(lambda: router.state.admission.in_flight["b"] == 0, what="the router slot to be freed")
    assert router.metric("muxplan_router_client_disconnects_total", "b") == 1
    assert 'muxplan_router_requests_total{model="b",status="499"} 1.0' in router.metrics()


def test_health_follows_probes_not_one_failed_request(router):
    a1 = router.state.replicas["b"][0]
    a1.failed = True  # as after one refused connection
    wait_until(lambda: not a1.failed, timeout_s=5, what="the probe to mark the replica up again")
    assert json.loads(urllib.request.urlopen(router.url + "/health", timeout=2).read()) == {"status": "ok", "down": []}
    assert router.post("/v1/completions", json.dumps({"model": "b", "prompt": "Hi"}).encode())[0] == 200


def test_large_answers_are_relayed_whole_and_the_connection_reused(stubs):
    state = router_state({"b": [stubs["a1"]]})
    state.context_tokens["b"] = 10**7  # given, so the probe keeps it
    with RouterThread(state) as r:
        c = r.client(timeout=60)
        for n in (3_000_000, 1, 2_000_000):
            assert len(c.completions.create(model="b", prompt="Hi", max_tokens=n).choices[0].text) == n
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="b", prompt="Hi", max_tokens=20_000, stream=True))
        assert streamed == "x" * 20_000
        assert r.metric("muxplan_router_replica_failures_total", "b") == 0 and state.admission.in_flight == {"b": 0}


def test_each_admitted_request_ends_as_one_finished_record(router):
    seen = []
    record = router.app.metrics.finished
    router.app.metrics.finished = lambda rec: (seen.append(rec), record(rec))  # the hook a traffic recorder uses
    try:
        c = router.client()
        c.completions.create(model="a", prompt="Hello", max_tokens=3)
        list(c.completions.create(model="b", prompt=[1, 2, 3], max_tokens=4, stream=True))
        wait_until(lambda: len(seen) == 2, what="both records")
    finally:
        router.app.metrics.finished = record
    plain, stream = seen
    assert (plain.model, plain.status, plain.stream, plain.max_tokens, plain.prompt_tokens_min) == ("a", 200, False, 3, 1)
    assert plain.headers_s > 0 and plain.ttft_s is None and plain.response_bytes > 0 and plain.arrived > 1e9
    assert (stream.model, stream.status, stream.stream, stream.prompt_tokens_min, stream.stream_events) == ("b", 200, True, 3, 5)
    assert 0 < stream.headers_s <= stream.ttft_s and stream.tpot_s is not None
