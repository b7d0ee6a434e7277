"""The router's fast path: a generation request (plain or streamed) answered by callbacks alone.

At concurrency the router's CPU per request decides its throughput on shared cores, and in the ASGI path a
third of it was the machinery around the work: an asyncio task per request, ASGI messages, futures for the
backend's headers and body (bench/RESULTS.md). Here the router's server hands over a request whose body
is complete (``FastPath.__call__``, from the client connection's parser callback), the request goes out on
an idle pooled backend connection, and that connection's parser calls ``FastRequest`` back as the response
arrives; the answer is written to the client from there. No task, no future.

It takes only the common case and declines everything else before a side effect, so the ASGI path
(executor.router and router_relay) answers it exactly as before, every error status and message included:
a missing or wrong API key, a body the parser refuses, an unknown model, lengths over the context, a model
with no routable replica, no free admission slot (the ASGI path queues), no idle connection to
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

An event stream (the backend's content type decides, as on the ASGI path) is relayed chunk by chunk as it
arrives: the answer ends at ``[DONE]`` (the backend's own end is awaited in the pool, as ``Response.release``
does), a stream the backend ends early or cuts ends with an SSE error event, and while the client's
transport is full the backend connection stops being read.
"""
from __future__ import annotations

import time

from executor.recorder import finished as note_finished
from executor.router_http import IDLE_S
from executor.router_metrics import Finished
from executor.router_relay import CLIENT_GONE, USAGE_TAIL_BYTES, sse_error
from executor.router_request import RequestError, check_context, error_body, parse_request


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
            if parsed.model not in state.replicas:
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

    __slots__ = ("fast", "cycle", "rec", "replica", "backend", "timeout_s", "over", "status", "chunks", "streaming", "first", "last",
                 "events", "size", "tail")

    def __init__(self, fast: FastPath, cycle, rec: Finished, replica, backend):
        self.fast, self.cycle, self.rec, self.replica, self.backend = fast, cycle, rec, replica, backend
        self.timeout_s = fast.state.limits.upstream_timeout_s
        self.over = self.streaming = False
        self.status = self.events = self.size = 0
        self.chunks: list[bytes] = []  # a plain answer's body
        self.first = self.last = 0.0  # a stream's first and latest chunk (perf_counter)
        self.tail = b""

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
        rec, b = self.rec, self.backend
        rec.headers_s = time.perf_counter() - rec.start
        b.deadline = time.monotonic() + self.timeout_s  # as on the ASGI path: each wait gets the full timeout
        if b.content_type.startswith(b"text/event-stream"):
            self.streaming = True
            self.cycle.status, self.cycle.headers = status, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    def backend_body(self, chunk: bytes) -> None:
        self.backend.deadline = time.monotonic() + self.timeout_s
        if not self.streaming:
            return self.chunks.append(chunk)
        now = self.last = time.perf_counter()
        if not self.first:
            self.first = now
            self.rec.ttft_s = now - self.rec.start
        self.events += chunk.count(b"data:")
        self.size += len(chunk)
        self.tail = (self.tail + chunk)[-USAGE_TAIL_BYTES:]
        if self.tail.rstrip().endswith(b"[DONE]"):  # the client's answer ends here (openai's client stops reading at it)
            return self._stream_end(chunk, None)
        c = self.cycle
        if not c.conn.lost:
            c.write(chunk, True)
            if c.conn.write_paused:  # a slow reader: the backend waits (untimed, as on the ASGI path) until the client drains
                self.backend.transport.pause_reading()
                self.backend.deadline = None
                c.conn.on_drained = self._client_drained

    def _client_drained(self) -> None:
        if not self.over:
            self.backend.deadline = time.monotonic() + self.timeout_s
            self.backend.transport.resume_reading()

    def backend_done(self) -> None:
        if self.streaming:
            return self._stream_end(b"", f"model '{self.rec.model}': the backend ended the stream early")
        b, rec = self.backend, self.rec
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        status = self.status
        ctype = b.content_type or b"application/json"
        rec.response_bytes = len(data)
        self._end(status)
        b.finish()  # back to the pool
        self._answer(status, ctype, data)
        note_finished(self.fast.state, rec.model, rec.start, data, status)

    def _stream_end(self, final: bytes, error: str | None) -> None:
        b, rec = self.backend, self.rec
        if error:
            self.fast.metrics.per_model[rec.model]["stream_errors"].inc()
            final = sse_error(503, error)
        elif self.events > 2:  # token events plus [DONE]
            rec.tpot_s = (self.last - self.first) / (self.events - 2)
        rec.response_bytes, rec.stream_events = self.size, self.events
        self._end(self.status)
        if b.complete:
            b.finish()  # back to the pool
        elif error:
            b.abort()
        elif not b.closed:  # back to the pool once the backend's end of message arrives, as Response.release does
            b.release_timer = b.pool.loop.call_later(IDLE_S, b.abort)
        c = self.cycle
        c.conn.on_drained = None
        if not c.conn.lost:
            c.write(final, False)
        note_finished(self.fast.state, rec.model, rec.start, b"" if error else self.tail, self.status)

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
        self._after_headers(str(exc))

    def backend_timeout(self) -> None:
        if self.rec.headers_s is None:
            return self._error(504, f"model '{self.rec.model}': backend did not answer within {self.timeout_s:g} s")
        self._after_headers(f"the backend sent nothing for {self.timeout_s:g} s")

    def _after_headers(self, why: str) -> None:
        model = self.rec.model
        if self.streaming:
            return self._stream_end(b"", f"model '{model}': the backend failed mid-stream ({why})")
        self._error(503, f"model '{model}': the backend failed before its response was complete ({why})")

    def client_gone(self) -> None:
        if self.over:
            return
        self.backend.abort()  # the backend stops generating for nobody
        self.cycle.conn.on_drained = None
        self.fast.metrics.per_model[self.rec.model]["disconnects"].inc()
        self._end(CLIENT_GONE)
