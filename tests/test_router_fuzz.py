"""Hypothesis fuzz of the router's request parser, alone and over real HTTP: random JSON bodies and
headers never give a 500, never hang, and never keep an admission slot; and of its HTTP server with raw
bytes: malformed request lines, odd headers, broken chunked bodies, pipelined and cut-off requests are
each answered with a 4xx or the connection closes, within the server's timeouts, and the server serves on."""
import json
import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.router_connection import ServerLimits
from executor.router_request import RequestError, check_context, parse_request
from tests.router_fixtures import API_KEY, RouterThread, Stub, router_state

SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["a", "b", "nope"]) | JSON, "prompt": JSON | st.lists(st.integers(0, 100), max_size=50),
    "messages": JSON | st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": JSON}), max_size=3),
    "max_tokens": st.integers(-5, 5000) | JSON, "stream": st.booleans() | JSON, "temperature": JSON,
    "max_completion_tokens": st.integers(-1, 3000) | JSON}).flatmap(lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=3).map(
        lambda extra: {**{k: v for k, v in extra.items() if k != "stub"}, **d}))
DEEP = st.integers(1, 1200).map(lambda d: b'{"model": "a", "prompt": ' + b"[" * d + b"]" * d + b', "messages": ' + b"[" * d + b"]" * d + b"}")
RAW = st.binary(max_size=200) | DEEP | st.sampled_from([b"NaN", b"[" * 5000, b'{"model": "a", "prompt": 1e999}', b"{" * 100_000, b""])
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30)
HEADER_NAME = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)  # RFC 9110 tokens: others are malformed HTTP


@given(body=FIELDS | JSON)
@settings(max_examples=400, deadline=None)
def test_the_parser_only_raises_request_errors(body):
    try:
        parsed = parse_request(json.dumps(body).encode(), chat=bool(len(str(body)) % 2))
        check_context(parsed, 2048)
    except RequestError as exc:
        assert exc.status == 400 and exc.message and "\n" not in exc.message


@given(raw=RAW, chat=st.booleans())
@settings(max_examples=200, deadline=None)
def test_raw_bytes_only_raise_request_errors(raw, chat):
    try:
        parse_request(raw, chat=chat)
    except RequestError as exc:
        assert exc.status == 400


@pytest.fixture(scope="module")
def fuzz_router():
    stub = Stub("f", ["a", "b"]).start()
    state = router_state({"a": [stub], "b": [stub]}, quota=4)
    try:
        with RouterThread(state, ServerLimits(head_timeout_s=0.3, body_idle_s=0.3, keepalive_s=0.3)) as r:
            r.wait_probed("a")
            yield r
    finally:
        stub.kill()


def send_raw(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):  # a hang fails as a socket timeout
            data += chunk
    return int(data.split(b" ", 2)[1])


@given(body=FIELDS.map(lambda d: json.dumps(d).encode()) | RAW, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       headers=st.dictionaries(HEADER_NAME.filter(lambda k: k.lower() not in ("content-length", "transfer-encoding", "host", "connection")),
                               HEADER_TEXT, max_size=4),
       auth=st.sampled_from([f"Bearer {API_KEY}", "Bearer wrong", None]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_http_requests_never_500_hang_or_leak_a_slot(fuzz_router, body, path, headers, auth):
    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    if auth:
        headers["Authorization"] = auth
    status = send_raw(fuzz_router.port, path, headers, body)
    assert status in ({200, 400, 404} if auth == f"Bearer {API_KEY}" else {401})
    assert not any(fuzz_router.state.admission.in_flight.values())
    labels = {line.split('model="')[1].split('"')[0] for line in fuzz_router.metrics().splitlines() if line.startswith("muxplan_router_requests")}
    assert labels <= {"a", "b", "_unknown", "_invalid"}


TOKEN = st.text(st.sampled_from("GETPOSTHEADX /-.1"), min_size=0, max_size=8)
TARGET = st.sampled_from(["/health", "/v1/models", "/v1/completions", "/metrics", "*", "http://x/health", "/%zz", "/a?b=c"]) | st.text(max_size=12)
VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "", "http/1.1"])
FRAMING = st.sampled_from([
    b"", b"Content-Length: 2\r\n\r\n{}", b"Content-Length: 50\r\n\r\n{}", b"Content-Length: -1\r\n\r\n",
    b"Content-Length: 99999999999999999999\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}", b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n", b"X: " + b"y" * 70_000 + b"\r\n\r\n"])
REQUEST = st.builds(lambda m, t, v, hs, framing: f"{m} {t} {v}\r\n".encode("utf-8", "replace") + b"".join(
    k.encode() + b": " + v.encode() + b"\r\n" for k, v in hs.items()) + (framing or b"\r\n"),
    st.sampled_from(["GET", "POST", "HEAD", "DELETE"]) | TOKEN, TARGET, VERSION,
    st.dictionaries(HEADER_NAME, HEADER_TEXT, max_size=3), FRAMING)
WIRE = st.lists(REQUEST, min_size=1, max_size=3).map(b"".join) | st.binary(max_size=300)
ALLOWED = {200, 400, 401, 404, 405, 408, 413, 431}


def send_wire(port: int, data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    """``data`` with bytes overwritten at ``mutations``, read until the server closes; the server's timeouts are
    0.3 s, so anything that runs into the socket's 5 s is a hang."""
    data = bytearray(data)
    for at, byte in mutations:
        if data:
            data[at % len(data)] = byte
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(bytes(data))
        except OSError:  # the server answered and closed before taking everything (a bad head)
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with our unread bytes still in its buffer
            pass
    return out


@given(data=WIRE, mutations=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_raw_http_gets_a_4xx_or_a_close_never_a_500_or_a_hang(fuzz_router, data, mutations):
    t = time.monotonic()
    out = send_wire(fuzz_router.port, data, mutations)
    assert time.monotonic() - t < 4
    got = [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)]
    assert set(got) <= ALLOWED, out[:300]
    if out:
        assert re.match(rb"HTTP/1\.1 \d{3} ", out), out[:300]  # answers start at a status line
    assert not any(fuzz_router.state.admission.in_flight.values())
    assert send_raw(fuzz_router.port, "/v1/completions", {"Authorization": f"Bearer {API_KEY}"}, b'{"model": "a"}') == 200
