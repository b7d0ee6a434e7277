"""The router's fast path: a plain (non-streaming) generation request answered by callbacks alone.

At concurrency the router's CPU per request decides its throughput on shared cores, and in the ASGI path a
third of it was the machinery around the work: an asyncio task per request, ASGI messages, futures for the
backend's headers and body (bench/RESULTS.md). Here the router's server hands over a request whose body
is complete (``FastPath.__call__``, from the client connection's parser callback), the request goes out on
an idle pooled backend connection, and that connection's parser calls ``FastRequest`` back as the response
arrives; the answer is written to the client from there. No task, no future.

It takes only the common case and declines everything else before a side effect, so the ASGI path
(executor.router and router_relay) answers it exactly as before, every error status and message included:
a missing or wrong API key, a body the parser refuses, an unknown model, lengths over the context, a model
with no routable replica, a stream, no free admission slot (the ASGI path queues), no idle connection to
the picked replica (the ASGI path connects, with its timeout). Once taken:

- the admission slot is held from the take to the last byte and given back on every path;
- a backend that fails before any byte of its response (a pooled connection the backend had closed) hands
  the request to the ASGI path, which runs it from the start (a fresh connection, failover to another
  replica); one that fails with a head begun is marked down first, so the ASGI path fails over;
- after the headers: a failure is a 503 (the replica marked down unless it was only slow), no backend
  bytes within ``upstream_timeout_s`` a 504 before the headers (not marked down); the same messages as the
  ASGI path's;
- a client that goes aborts the backend connection (the backend stops generating) and counts a disconnect;
- one ``Finished`` record per request, as on the ASGI path, and the traffic recorder's hook.

A backend that streams an answer it was not asked to stream is read whole and sent with its length.
"""
from __future__ import annotations

import time

from executor.recorder import finished as note_finished
from executor.router_metrics import Finished
from executor.router_request import RequestError, check_context, error_body, parse_request

CLIENT_GONE = 499  # as router_relay counts it


class FastPath:
    def __init__(self, router, paths: dict[str, bool]):
        self.router, self.paths = router, paths  # path -> chat
        self.state, self.metrics, self.upstream = router.state, router.metrics, router.upstream
        self.num_taken = self.num_handed_back = 0  # requests answered here / given to the ASGI path after all (tests)

    def __call__(self, cycle) -> bool:
        """True when the request (its body complete) is being answered here; False: nothing happened, the ASGI path takes it."""
        router, state, upstream = self.router, self.state, self.upstream
        scope = cycle.scope
        if router.auth is not None and not router.authorised(scope):
            return False
        body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
        if len(body) > state.limits.max_body_bytes or upstream.pool is None or upstream.loop is not cycle.conn.loop:
            return False
        start = time.perf_counter()
        try:
            parsed = parse_request(body, self.paths[scope["path"]])
            if parsed.stream or parsed.model not in state.replicas:
                return False
            check_context(parsed, state.context_tokens.get(parsed.model))
        except RequestError:
            return False
        model = parsed.model
        replica = state.pick(model)
        if replica is None:
            return False
        key = upstream.addr[replica.url]
        backend = upstream.pool.reuse(key)
        if backend is None:
            return False
        if not state.admission.admit(model):
            backend.finish()  # unused: back to the pool
            return False
        FastRequest(self, cycle, Finished(model, start, len(body), parsed), replica, backend).send(scope["path"], body)
        self.num_taken += 1
        return True


class FastRequest:
    """One taken request: the backend connection's ``sink`` and the client cycle's disconnect callback."""

    __slots__ = ("fast", "cycle", "rec", "replica", "backend", "timeout_s", "over", "status")

    def __init__(self, fast: FastPath, cycle, rec: Finished, replica, backend):
        self.fast, self.cycle, self.rec, self.replica, self.backend = fast, cycle, rec, replica, backend
        self.timeout_s = fast.state.limits.upstream_timeout_s
        self.over = False
        self.status = 0

    def send(self, path: str, body: bytes) -> None:
        b, (host, port) = self.backend, self.backend.key
        b.sink = self
        b.deadline = time.monotonic() + self.timeout_s
        b.pool.busy.add(b)  # the pool's sweep expires it
        self.cycle.gone_callback = self.client_gone
        b.transport.writelines((self.fast.upstream.request_head("POST", path, host, port, body), body))

    def _end(self, status: int) -> None:
        """The slot back, the record out; the backend connection is the caller's to keep or drop."""
        self.over = True
        self.backend.sink = None
        self.cycle.gone_callback = None  # no reference cycle left for the garbage collector
        fast = self.fast
        fast.state.admission.release(self.rec.model)
        self.rec.status = status
        fast.metrics.finished(self.rec)

    def _answer(self, status: int, ctype: bytes, data: bytes, retry_after_s: int | None = None) -> None:
        c = self.cycle
        c.status = status
        c.headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(data))]
        if retry_after_s:
            c.headers.append((b"retry-after", b"%d" % retry_after_s))
        if not c.conn.lost:
            c.write(data, False)

    def _error(self, status: int, message: str) -> None:
        self.backend.abort()
        self._end(status)
        self._answer(status, b"application/json", error_body(status, message), retry_after_s=5)

    # --- the backend connection's callbacks ---
    def backend_headers(self, status: int) -> None:
        self.status = status
        self.rec.headers_s = time.perf_counter() - self.rec.start
        self.backend.deadline = time.monotonic() + self.timeout_s  # as on the ASGI path: each wait gets the full timeout

    def backend_done(self) -> None:
        b, rec = self.backend, self.rec
        data = b"".join(b.body)
        status = self.status
        ctype = b.content_type or b"application/json"
        rec.response_bytes = len(data)
        self._end(status)
        b.finish()  # back to the pool
        self._answer(status, ctype, data)
        note_finished(self.fast.state, rec.model, rec.start, data, status)

    def backend_failed(self, exc) -> None:
        b, model = self.backend, self.rec.model
        if self.rec.headers_s is None:  # no response yet: the ASGI path runs the request from the start
            if b.got_data:  # a head begun, then a failure: this replica is not to be retried
                self.fast.upstream.mark_down(self.replica)
            b.abort()
            self.over = True
            b.sink = None
            self.fast.state.admission.release(model)
            self.fast.num_handed_back += 1
            c = self.cycle
            c.gone_callback = None
            if not c.conn.lost:
                c.conn.start_cycle(c)
            return
        self.fast.router.relay.mark_down_unless_slow(self.replica, exc)
        self._error(503, f"model '{model}': the backend failed before its response was complete ({exc})")

    def backend_timeout(self) -> None:
        if self.rec.headers_s is None:
            return self._error(504, f"model '{self.rec.model}': backend did not answer within {self.timeout_s:g} s")
        self._error(503, f"model '{self.rec.model}': the backend failed before its response was complete "
                         f"(the backend sent nothing for {self.timeout_s:g} s)")

    def client_gone(self) -> None:
        if self.over:
            return
        self.backend.abort()  # the backend stops generating for nobody
        self.fast.metrics.per_model[self.rec.model]["disconnects"].inc()
        self._end(CLIENT_GONE)
