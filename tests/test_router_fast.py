"""The router's fast path (executor.router_fast) over real sockets: plain requests on pooled backend connections
are answered by callbacks with what the ASGI path would answer, everything it declines is answered by the ASGI
path, and every failure once taken ends with its status and message, its admission slot back and one record.
The misbehaving backend is a raw socket server in a thread that answers each POST as the test says."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from executor.admission import Admission
from executor.router import Limits, Replica, RouterState
from tests.helpers import free_port
from tests.router_fixtures import API_KEY, TOKEN, RouterThread, Stub, router_state, wait_until

BODY = json.dumps({"model": "m", "prompt": "Hi", "max_tokens": 1}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 2048}]}).encode()
ANSWER = json.dumps({"id": "x", "choices": [{"text": "ok"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()


class Backend:
    """Keep-alive HTTP/1.1 over raw sockets. Each POST gets ``mode``: ok, cut (headers, 10 of 100 body bytes,
    close), close (no byte; then back to ok), silent (nothing), head_only (headers, then nothing), sse_early (an
    event stream's one event and its end, no [DONE]), sse_cut (one event, then close)."""

    def __init__(self):
        self.port, self.mode, self.posts, self.peer_closed = free_port(), "ok", 0, 0
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        self.peer_closed += 1
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(MODELS) + MODELS)
                    continue
                self.posts += 1
                mode = self.mode
                if mode == "ok":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
                elif mode == "close":
                    self.mode = "ok"
                    return
                elif mode == "cut":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
                    return
                elif mode == "head_only":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
                elif mode.startswith("sse"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"d\r\ndata: {\"a\"}\n\n\r\n" + (b"0\r\n\r\n" if mode == "sse_early" else b""))
                    if mode == "sse_cut":
                        return

    def close(self):
        self.sock.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def fake_router(backend: Backend, **limits) -> RouterThread:
    state = RouterState({"m": [Replica("m", f"http://127.0.0.1:{backend.port}", 1.0, 0, "p0", healthy=True)]}, Admission({"m": 4}),
                        {"m": 1.0}, api_key=API_KEY, backend_token=TOKEN, limits=Limits(probe_s=60.0, **limits))
    return RouterThread(state)


def warm(r: RouterThread) -> None:
    """Two requests on a backend connection the probe left idle in the pool: both go fast."""
    r.wait_probed("m")
    for _ in range(2):
        assert r.post("/v1/completions", BODY)[0] == 200
    assert r.app.fast.num_taken == 2


def error(r: RouterThread) -> tuple[int, str | None, str]:
    status, headers, body = r.post("/v1/completions", BODY)
    return status, headers.get("retry-after"), json.loads(body)["error"]["message"]


def settled(r: RouterThread) -> None:
    wait_until(lambda: r.state.admission.in_flight == {"m": 0}, what="the admission slot back")


def test_plain_requests_go_fast_and_answer_as_the_asgi_path(backend):
    with fake_router(backend) as r:
        warm(r)
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\nContent-Length: %d\r\n\r\n%b"
                      % (API_KEY.encode(), len(BODY), BODY))
            raw = b""
            while not raw.endswith(ANSWER):
                raw += s.recv(65536)
        head = raw[:-len(ANSWER)].decode().split("\r\n")
        assert head[0] == "HTTP/1.1 200 OK"
        assert sorted(line.split(":")[0] for line in head[1:] if line) == ["content-length", "content-type", "date"]
        assert f"content-length: {len(ANSWER)}" in head and "content-type: application/json" in head
        assert r.app.fast.num_taken == 3
        text = r.metrics()
        assert 'muxplan_router_requests_total{model="m",status="200"} 3.0' in text
        assert 'muxplan_router_latency_seconds_count{model="m"} 3.0' in text
        assert 'muxplan_router_request_bytes_count{model="m"} 3.0' in text
        settled(r)


def test_what_the_fast_path_declines_the_asgi_path_answers(backend):
    with fake_router(backend) as r:
        warm(r)
        taken = r.app.fast.num_taken
        cases = [({"Authorization": "Bearer wrong"}, BODY, 401, "missing or wrong API key"),
                 ({}, b'{"model": "m", "prompt": "Hi", "max_tokens": 0}', 400, "field 'max_tokens' must be a positive integer"),
                 ({}, b'{"model": "m", "prompt": "Hi", "max_tokens": 5000}', 400, "max_tokens 5000 exceeds model 'm''s context of 2048 tokens"),
                 ({}, b'{"model": "z", "prompt": "Hi"}', 404, "model 'z' is not served; served models: m"),
                 ({}, b"[1]", 400, "request body must be a JSON object")]
        for headers, body, status, message in cases:
            got, _, raw = r.post("/v1/completions", body, headers)
            assert (got, json.loads(raw)["error"]["message"]) == (status, message)
        assert r.app.fast.num_taken == taken
        settled(r)


def test_a_full_admission_quota_goes_to_the_asgi_paths_queue(backend):
    backend.mode = "silent"
    with fake_router(backend, queue_depth=0, upstream_timeout_s=1.0) as r:
        r.state.admission.quotas["m"] = 1
        backend.mode = "ok"
        warm(r)
        backend.mode = "silent"
        with ThreadPoolExecutor(1) as pool:
            holder = pool.submit(error, r)  # taken fast, holds the one slot until the 504
            wait_until(lambda: r.state.admission.in_flight.get("m") == 1, what="the slot taken")
            assert error(r) == (429, "1", "model 'm' is at its admission quota (1 in flight, 0 waiting)")
            assert holder.result() == (504, "5", "model 'm': backend did not answer within 1 s")
        settled(r)


def test_a_pooled_connection_closed_without_an_answer_is_run_again_by_the_asgi_path(backend):
    with fake_router(backend) as r:
        warm(r)
        backend.mode = "close"  # one POST: the connection closes with no byte of a response
        status, _, body = r.post("/v1/completions", BODY)
        assert (status, body) == (200, ANSWER)
        assert (r.app.fast.num_taken, r.app.fast.num_handed_back) == (3, 1)
        assert not r.state.replicas["m"][0].failed
        settled(r)


@pytest.mark.parametrize("mode, status, message, down", [
    ("cut", 503, "model 'm': the backend failed before its response was complete (the backend closed the connection)", True),
    ("silent", 504, "model 'm': backend did not answer within 0.5 s", False),
    ("head_only", 503, "model 'm': the backend failed before its response was complete (the backend sent nothing for 0.5 s)", False),
])
def test_failures_once_taken_give_the_asgi_paths_status_and_message(backend, mode, status, message, down):
    with fake_router(backend, upstream_timeout_s=0.5) as r:
        warm(r)
        backend.mode = mode
        assert error(r) == (status, "5", message)
        assert r.app.fast.num_taken == 3 and r.app.fast.num_handed_back == 0
        assert r.state.replicas["m"][0].failed is down
        assert f'muxplan_router_requests_total{{model="m",status="{status}"}} 1.0' in r.metrics()
        settled(r)


def test_a_client_that_goes_aborts_the_backend_request(backend):
    with fake_router(backend) as r:
        warm(r)
        backend.mode = "silent"
        closed = backend.peer_closed
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\nContent-Length: %d\r\n\r\n%b"
                      % (API_KEY.encode(), len(BODY), BODY))
            wait_until(lambda: backend.posts == 3, what="the request at the backend")
        wait_until(lambda: backend.peer_closed == closed + 1, what="the backend connection closed")
        settled(r)
        assert r.app.fast.num_taken == 3
        assert r.metric("muxplan_router_client_disconnects_total", "m") == 1
        assert 'muxplan_router_requests_total{model="m",status="499"} 1.0' in r.metrics()


def test_failover_after_a_fast_taken_request_loses_its_replica():
    stubs = [Stub("f1", ["m"]).start(), Stub("f2", ["m"]).start()]
    try:
        with RouterThread(router_state({"m": stubs}, probe_s=60.0)) as r:
            r.wait_probed("m")
            for _ in range(4):  # a pooled connection to each replica
                assert r.post("/v1/completions", BODY)[0] == 200
            slow = json.dumps({"model": "m", "prompt": "Hi", "max_tokens": 1, "stub": {"delay_s": 1.0}}).encode()
            with ThreadPoolExecutor(2) as pool:
                calls = [pool.submit(r.post, "/v1/completions", slow) for _ in range(2)]  # one on each replica
                wait_until(lambda: stubs[0].in_flight() == 1, what="a request on f1")
                taken = r.app.fast.num_taken
                stubs[0].kill()
                assert [c.result()[0] for c in calls] == [200, 200]
            assert r.app.fast.num_handed_back == 1 and taken >= 4
            assert r.state.replicas["m"][0].failed
            assert r.metric("muxplan_router_failovers_total", "m") == 1
            settled(r)
    finally:
        for s in stubs:
            s.kill()


def sse(r: RouterThread) -> bytes:
    """A streamed request's whole answer (chunked), read until the router ends it."""
    body = json.dumps({"model": "m", "prompt": "Hi", "max_tokens": 1, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%b" % (API_KEY.encode(), len(body), body))
        return until_closed(s)


def until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(1 << 20):
        out += chunk
    return out


@pytest.mark.parametrize("mode, message, down", [
    ("sse_early", "model 'm': the backend ended the stream early", False),
    ("sse_cut", "model 'm': the backend failed mid-stream (the backend closed the connection)", True),
])
def test_a_stream_the_backend_ends_early_or_cuts_ends_with_an_error_event(backend, mode, message, down):
    with fake_router(backend) as r:
        warm(r)
        backend.mode = mode
        raw = sse(r)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked\r\n" in raw and raw.endswith(b"\r\n0\r\n\r\n")
        events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {\"error")]
        assert events == [{"error": {"message": message, "type": "backend_error", "code": 503}}]
        assert b'data: {"a"}' in raw and b"[DONE]" not in raw
        assert r.app.fast.num_taken == 3 and r.state.replicas["m"][0].failed is down
        assert r.metric("muxplan_router_stream_errors_total", "m") == 1
        settled(r)


def dechunked(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response, its framing removed."""
    pos, parts = raw.index(b"\r\n\r\n") + 4, []
    while True:
        end = raw.index(b"\r\n", pos)
        n = int(raw[pos:end], 16)
        if n == 0:
            return b"".join(parts)
        parts.append(raw[end + 2:end + 2 + n])
        pos = end + 2 + n + 2


def test_streams_go_fast_chunk_by_chunk_and_a_slow_reader_gets_all_of_it():
    stub = Stub("s", ["m"], context=100_000).start()
    try:
        with RouterThread(router_state({"m": [stub]}, probe_s=60.0)) as r:
            r.wait_probed("m")
            seen = []
            record = r.app.metrics.finished
            r.app.metrics.finished = lambda rec: (seen.append(rec), record(rec))
            chunks = list(r.client().completions.create(model="m", prompt="Hi", max_tokens=5, stream=True))
            assert ["".join(c.choices[0].text for c in chunks)] == ["xxxxx"] and r.app.fast.num_taken == 1
            body = json.dumps({"model": "m", "prompt": "Hi", "max_tokens": 50_000, "stream": True}).encode()
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the router's buffer to this client fills
                s.settimeout(30)
                s.connect(("127.0.0.1", r.port))
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n%b" % (API_KEY.encode(), len(body), body))
                time.sleep(1.0)
                raw = until_closed(s)
            assert r.app.fast.num_taken == 2
            # count events in the de-chunked body: a chunk boundary may fall inside an event on the wire
            assert raw.endswith(b"\r\n0\r\n\r\n")
            events = dechunked(raw)
            assert events.count(b"data: {") == 50_000 and events.endswith(b"data: [DONE]\n\n")
            wait_until(lambda: len(seen) == 2, what="both records")
            assert [(rec.status, rec.stream, rec.stream_events) for rec in seen] == [(200, True, 6), (200, True, 50_001)]
            assert 0 < seen[0].headers_s <= seen[0].ttft_s and seen[0].tpot_s is not None
            settled(r)
    finally:
        stub.kill()
