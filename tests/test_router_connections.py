"""The cap on client connections (executor.router_refusal) over real sockets, with the router in front of a stub
backend process: below the cap nothing changes, at the cap the connection idle longest is closed to admit a new
one, with none idle a newcomer gets an explicit 503 (never silence or a reset), and /metrics counts both."""
import json
import re
import socket

import pytest

from executor.router_connection import ServerLimits
from tests.helpers import run_cli
from tests.router_fixtures import RouterThread, Stub, router_state, wait_until

CAP = 4
LIMITS = ServerLimits(max_connections=CAP, head_timeout_s=20.0, keepalive_s=30.0)
REFUSAL_MESSAGE = f"the router is at its limit of {CAP} open connections, none of them idle; retry shortly"


@pytest.fixture(scope="module")
def stub():
    s = Stub("c", ["m"]).start()
    yield s
    s.kill()


@pytest.fixture
def router(stub):
    with RouterThread(router_state({"m": [stub]}), LIMITS) as r:
        yield r


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split(" ")[1]), headers, body


def get(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_response(sock)


def connect(router) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=5)


def metric(text: bytes, name: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} not in /metrics")


def until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):  # a hang fails as the socket's timeout
        out += chunk
    return out


def assert_refused(raw: bytes) -> None:
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])} == {
        "content-type": "application/json", "content-length": str(len(body)), "retry-after": "1", "connection": "close"}
    assert json.loads(body) == {"error": {"message": REFUSAL_MESSAGE, "code": 503}}


def test_connections_up_to_the_cap_are_served_and_none_is_evicted(router):
    socks = [connect(router) for _ in range(CAP)]
    for _ in range(2):  # keep-alive: every connection serves again
        assert [get(s, "/health")[0] for s in socks] == [200] * CAP
    status, _, text = get(socks[0], "/metrics")
    assert status == 200
    assert metric(text, "muxplan_router_client_connections") == CAP
    assert metric(text, "muxplan_router_client_connections_max") == CAP
    assert metric(text, "muxplan_router_connections_refused_total") == 0
    assert metric(text, "muxplan_router_idle_connections_evicted_total") == 0
    for s in socks:
        s.close()


def test_over_the_cap_with_none_idle_gets_503_retry_after_and_a_close(router):
    busy = [connect(router) for _ in range(CAP)]
    for s in busy:  # a head begun and not finished: inside a request, so never evicted
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    wait_until(lambda: len(router.server.conns) == CAP and not router.server.idle, what="busy connections")
    with connect(router) as silent:  # a newcomer that sends nothing still gets the answer
        assert_refused(until_closed(silent))
    with connect(router) as eager:  # one that sends a request (and a body) at once reads the 503, not a reset
        eager.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000)
        assert_refused(until_closed(eager))
    busy[0].sendall(b"\r\n")  # the busy requests end and get their answers
    status, _, text = read_response(busy[0])
    assert status == 200
    assert metric(text, "muxplan_router_connections_refused_total") == 2
    assert metric(text, "muxplan_router_idle_connections_evicted_total") == 0
    assert metric(text, "muxplan_router_client_connections") == CAP
    for s in busy[1:]:
        s.sendall(b"\r\n")
        assert read_response(s)[0] == 200
        s.close()
    busy[0].close()
    wait_until(lambda: router.server.num_lingering == 0, what="refused connections to close")


def test_the_connection_idle_longest_is_closed_to_admit_a_new_one(router):
    socks = [connect(router) for _ in range(CAP)]
    for s in socks:
        assert get(s, "/health")[0] == 200
    assert get(socks[0], "/health")[0] == 200  # now socks[1] has idled longest
    with connect(router) as newcomer:
        status, _, text = get(newcomer, "/metrics")
        assert status == 200
        assert metric(text, "muxplan_router_idle_connections_evicted_total") == 1
        assert metric(text, "muxplan_router_connections_refused_total") == 0
        assert metric(text, "muxplan_router_client_connections") == CAP
        assert until_closed(socks[1]) == b""  # closed between requests, with nothing half-sent
        assert [get(s, "/health")[0] for s in (socks[0], socks[2], socks[3])] == [200] * 3
        status, _, body = get(newcomer, "/health")
        assert (status, json.loads(body)) == (200, {"status": "ok", "down": []})
    for s in socks:
        s.close()


def test_the_count_returns_to_zero_after_clients_close(router):
    socks = [connect(router) for _ in range(CAP)]
    for s in socks:
        assert get(s, "/health")[0] == 200
    wait_until(lambda: len(router.server.conns) == CAP, what="connections open")
    for s in socks:
        s.close()
    wait_until(lambda: not router.server.conns and not router.server.idle, what="connections closed")
    assert metric(router.metrics().encode(), "muxplan_router_client_connections") == 1  # the scrape's own connection
    wait_until(lambda: not router.server.conns, what="the scrape's connection closed")


def test_the_cap_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="^max_connections must be at least 1, not 0$"):
        ServerLimits(max_connections=0)
    proc = run_cli("deploy", tmp_path / "plan.json", "--max-connections", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    words = " ".join(re.sub("[│╭╮╰╯─]", " ", proc.stderr).split())  # the rich error box, unwrapped
    assert "Invalid value for '--max-connections': Input should be greater than or equal to 1" in words
