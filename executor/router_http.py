"""A lean HTTP/1.1 client for the router's backends: pooled keep-alive connections, httptools parsing.

Measured on the 2-core sandbox against the stub backend, aiohttp's client spent ~130 us of CPU per
request and this one ~15 us, which is most of what the router adds (bench/RESULTS.md). It speaks only what
the router needs: one request per connection at a time, Content-Length bodies out, any framing back
(httptools decodes chunked), bodies read whole or chunk by chunk with backpressure. A connection with a
``sink`` (the router's fast path, executor.router_fast) reports to it by callbacks instead of futures.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

import httptools

IDLE_S = 4.0  # under uvicorn's 5 s keep-alive, so the backend does not close a connection as it is reused
PAUSE_BYTES = 1 << 20  # unread body bytes before the backend is paused
SWEEP_S = 0.1  # how often response timeouts are checked: their precision


class UpstreamError(Exception):
    """The connection failed; ``before_response`` when not one byte of the response had arrived."""

    def __init__(self, message: str, before_response: bool):
        super().__init__(message)
        self.before_response = before_response


class UpstreamTimeout(UpstreamError):
    """The backend is connected but silent: slow, not necessarily down."""


class Response:
    __slots__ = ("status", "content_type", "_conn", "_done", "_idle_s")

    def __init__(self, status: int, content_type: str, conn: "Connection", idle_s: float):
        self.status, self.content_type, self._conn, self._idle_s = status, content_type, conn, idle_s
        self._done = False

    async def read(self) -> bytes:
        c = self._conn
        if c.complete:  # the usual case for short answers: all of it came with the headers
            data = b"".join(c.body)
            self._done = True
            c.finish()
            return data
        chunks = []
        async for chunk in self.chunks():
            chunks.append(chunk)
        return b"".join(chunks)

    async def chunks(self):
        c = self._conn
        while True:
            while c.body:
                chunk = c.body.popleft()
                c.buffered -= len(chunk)
                if c.paused and c.buffered < PAUSE_BYTES // 2:
                    c.paused = False
                    c.transport.resume_reading()
                yield chunk
            if c.complete:
                self._done = True
                c.finish()
                return
            if c.error:
                raise c.error
            c.wake = c.pool.loop.create_future()
            c.deadline = time.monotonic() + self._idle_s
            try:
                await c.wake
            except TimeoutError:
                c.abort()
                raise UpstreamTimeout(f"the backend sent nothing for {self._idle_s:g} s", before_response=False) from None
            finally:
                c.deadline = None

    def release(self) -> None:
        """The caller has all it wants (a stream's ``[DONE]``): the connection goes back to the pool when the
        backend's end of message arrives (usually it already has), or closes if that takes over IDLE_S."""
        c = self._conn
        self._done = True
        if c.complete:
            c.finish()
        elif not c.closed:
            c.release_timer = c.pool.loop.call_later(IDLE_S, c.abort)

    def close(self) -> None:
        """Drop the connection unless the response was read to its end (then it went back to the pool)."""
        if not self._done:
            self._conn.abort()


class Connection(asyncio.Protocol):
    def __init__(self, pool: "Pool", key):
        self.pool, self.key = pool, key
        self.parser = httptools.HttpResponseParser(self)
        self.transport = None
        self.reset()
        self.closed = False
        self.idle_since = 0.0
        self.deadline: float | None = None  # while a response is awaited; Pool.sweep expires it

    def reset(self) -> None:
        self.headers_done: asyncio.Future | None = None
        self.content_type = b""
        self.body: deque = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.error: Exception | None = None
        self.wake: asyncio.Future | None = None
        self.got_data = False
        self.keep_alive = False
        self.release_timer: asyncio.TimerHandle | None = None  # set: released early, finish on completion
        self.sink = None  # router_fast.FastRequest: called back instead of waking futures

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad HTTP from backend: {exc}", before_response=False))
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.busy.discard(self)
        if not self.complete:
            self._fail(UpstreamError("the backend closed the connection", before_response=not self.got_data))

    def _fail(self, err: UpstreamError) -> None:
        self.error = err
        if self.sink is not None:
            return self.sink.backend_failed(err)
        if self.headers_done and not self.headers_done.done():
            self.headers_done.set_exception(err)
        self._wake()

    def _wake(self) -> None:
        if self.wake and not self.wake.done():
            self.wake.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        if self.sink is not None:
            return self.sink.backend_headers(self.parser.get_status_code())
        if self.headers_done and not self.headers_done.done():
            self.headers_done.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            return self.sink.backend_body(body)
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.sink is not None:
            return self.sink.backend_done()
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.finish()
            return
        self._wake()

    def expire(self) -> None:
        self.deadline = None
        if self.sink is not None:
            return self.sink.backend_timeout()
        for fut in (self.headers_done, self.wake):
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError())

    def finish(self) -> None:
        """The response was read to its end: back to the pool if the backend keeps the connection alive."""
        self.pool.busy.discard(self)
        if not self.closed and self.keep_alive:
            if self.paused:  # a large body read whole: the next response must not find reading paused
                self.transport.resume_reading()
            self.reset()
            self.idle_since = time.monotonic()
            self.pool.idle.setdefault(self.key, []).append(self)
        elif not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.pool.busy.discard(self)
        if not self.complete and not self.closed:
            self.closed = True
            self.transport.abort()


class Pool:
    """Timeouts of responses awaited are checked by ``sweep`` (called every SWEEP_S), not by a timer per request
    and per streamed chunk."""

    def __init__(self, connect_timeout_s: float):
        self.connect_timeout_s = connect_timeout_s
        self.loop = asyncio.get_running_loop()
        self.idle: dict[tuple[str, int], list[Connection]] = {}
        self.busy: set[Connection] = set()

    def sweep(self) -> None:
        now = time.monotonic()
        for c in [c for c in self.busy if c.deadline is not None and c.deadline < now]:
            c.expire()

    async def _connect(self, key) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(lambda: Connection(self, key), key[0], key[1])
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect: {exc or type(exc).__name__}", before_response=True) from None
        return conn

    def reuse(self, key) -> Connection | None:
        """An idle connection to ``key`` still fresh, or None."""
        idle = self.idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.abort()
        return None

    async def request(self, host: str, port: int, head: bytes, body: bytes, timeout_s: float) -> Response:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; return once the
        response headers are in. ``timeout_s`` bounds the wait for them and every later wait for body bytes.
        A reused connection found dead before any response byte is retried once fresh."""
        key = (host, port)
        conn = self.reuse(key)
        for fresh in (conn is None, True):
            if fresh:
                conn = await self._connect(key)
            done = conn.headers_done = self.loop.create_future()
            conn.deadline = time.monotonic() + timeout_s
            self.busy.add(conn)
            conn.transport.writelines((head, body)) if body else conn.transport.write(head)
            try:
                status = await done
            except UpstreamError as exc:
                if fresh or not exc.before_response:
                    raise
                continue
            except BaseException:
                conn.abort()
                raise
            finally:
                conn.deadline = None
            return Response(status, conn.content_type.decode("latin-1"), conn, timeout_s)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.abort()
        self.idle.clear()
