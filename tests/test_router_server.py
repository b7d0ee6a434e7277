"""The router's own HTTP/1.1 server over raw sockets, with a small ASGI app: keep-alive, pipelining in
order, chunked bodies both ways, 100-continue, and every malformed or slow request answered with its
status (400, 408, 431, 500) instead of a hang or a traceback; stopping lets requests in flight finish."""
import asyncio
import json
import re
import socket
import threading
import time

import pytest

from executor.router_connection import ServerLimits
from executor.router_server import Server
from tests.helpers import free_port

LIMITS = ServerLimits(head_timeout_s=0.4, body_idle_s=0.4, keepalive_s=0.6)


async def app(scope, receive, send):
    """/echo answers the body's length; /slow waits 0.3 s; /stream sends 3 chunks 0.1 s apart; /boom raises."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("a bug in the app")
    if path == "/slow":
        await asyncio.sleep(0.3)
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for k in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % k, "more_body": True})
            await asyncio.sleep(0.1)
        return await send({"type": "http.response.body", "body": b"", "more_body": False})
    out = json.dumps({"path": path, "query": scope["query_string"].decode(), "len": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(scope="module")
def server():
    s = Server(app, "127.0.0.1", free_port(), LIMITS, grace_s=2.0)
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    assert s.started.wait(10)
    yield s
    s.stop()
    t.join(10)


def exchange(port: int, data: bytes, wait_s: float = 3.0) -> bytes:
    """Send ``data``, read until the server closes the connection (a hang fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def statuses(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_keep_alive_and_pipelined_requests_answer_in_order(server):
    reqs = (b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
            b"GET /echo?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = exchange(server.port, reqs)
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0]) for part in raw.split(b"HTTP/1.1 200 OK")[1:]]
    assert [(b["path"], b["len"]) for b in bodies] == [("/slow", 2), ("/echo", 0), ("/echo", 7), ("/last", 0)]
    assert bodies[1]["query"] == "q=1" and raw.count(b"connection: close") == 1


def test_http10_closes_and_an_idle_keep_alive_connection_is_closed(server):
    assert statuses(exchange(server.port, b"GET /echo HTTP/1.0\r\n\r\n")) == [200]
    t = time.monotonic()
    assert statuses(exchange(server.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]  # then idle: closed after keepalive_s
    assert time.monotonic() - t < LIMITS.keepalive_s + 1


def test_a_stream_is_chunked_and_relayed_as_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        t = time.monotonic()
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
    assert b"transfer-encoding: chunked" in first and first.endswith(b"9\r\ndata: 0\n\n\r\n")
    assert time.monotonic() - t > 0.15 and rest.count(b"data:") == 2  # the first chunk came before the app had sent the rest


def test_expect_100_continue(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        assert b'"len": 5' in s.recv(65536)


@pytest.mark.parametrize("data, status, message", [
    (b"GARBAGE\r\n\r\n", 400, "bad HTTP request: Invalid method encountered"),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad HTTP request: Invalid HTTP version"),
    (b"GET /echo HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "bad HTTP request: Invalid header token"),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n", 400, "bad HTTP request: Invalid character in chunk size"),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "bad HTTP request: Duplicate Content-Length"),
    (b"GET /echo HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "request head is larger than 65536 bytes or 100 headers"),
    (b"GET /echo HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % k for k in range(101)) + b"\r\n", 431,
     "request head is larger than 65536 bytes or 100 headers"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\n", 408, "request head not complete within 0.4 s"),  # slowloris: never ends its head
    (b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 408, "request body stalled for 0.4 s"),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nabc", 400,
     "protocol upgrades are not supported"),
    (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", 500, "internal error in the router"),
])
def test_bad_or_slow_requests_get_a_status_and_the_connection_closes(server, data, status, message):
    raw = exchange(server.port, data)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert statuses(head) == [status] and b"connection: close" in head
    assert json.loads(body) == {"error": {"message": message, "code": status}}


def test_answers_due_come_before_the_error_of_a_bad_pipelined_request(server):
    raw = exchange(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
    assert statuses(raw) == [200, 400]


def test_pipelining_is_bounded(server):
    raw = exchange(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
    assert statuses(raw) == [200] * 65 + [429] and raw.endswith(b'"more than 64 pipelined requests", "code": 429}}')


def test_a_slowloris_trickle_is_cut_at_the_head_timeout(server):
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        for ch in b"GET /echo HTTP/1.1\r\nX-Slow: ":
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.05)
        raw = s.recv(65536)
    assert statuses(raw) == [408] and time.monotonic() - t < LIMITS.head_timeout_s + 1.5


def test_stop_lets_requests_in_flight_finish_and_refuses_new_ones():
    s = Server(app, "127.0.0.1", free_port(), LIMITS, grace_s=5.0)
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    assert s.started.wait(10)
    with socket.create_connection(("127.0.0.1", s.port), timeout=3) as c:
        c.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.1)
        s.stop()
        raw = c.recv(65536)
    assert statuses(raw) == [200] and b"connection: close" in raw
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1)
