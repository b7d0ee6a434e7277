"""One client connection of the router's HTTP/1.1 server: httptools parsing, ASGI request cycles in order.

Requests on a connection are answered in order: a pipelined request waits for the one before it, reading
pauses while one waits, and more than ``pipeline_max`` parsed ahead get a 429, so a client cannot queue
requests without bound. Request heads are bounded in bytes and header count (431) and in time (a head not
complete ``head_timeout_s`` after its first byte gets 408: slowloris clients hold no connection for long);
request bodies are bounded in idle time between bytes (408) and buffered at most ``body_buffer_bytes`` ahead
of the app before reading pauses. Malformed HTTP gets a 400 with llhttp's reason and the connection closes,
since the parser cannot find the next request's start. Responses without a length are sent chunked. Error
bodies have the router's JSON error shape. A POST the app has a fast path for (``app.fast``, router_fast)
starts no task: it is held until its body is in and offered there; what the fast path declines runs as ASGI.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass

import httptools

from executor.router_cycle import Cycle, error_response, request_scope

log = logging.getLogger("muxplan.router")
FAST_BODY_MAX_BYTES = 256 * 1024  # larger bodies go to the app's task (under body_buffer_bytes: reading never pauses for them)


@dataclass(frozen=True)
class ServerLimits:
    head_max_bytes: int = 64 * 1024
    headers_max: int = 100
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    body_idle_s: float = 30.0  # longest silence inside a request body
    # as nginx: longer than clients keep idle connections (httpx 5 s, aiohttp 15 s), so the client closes
    # first and never sends a request on a connection the server is closing
    keepalive_s: float = 75.0
    body_buffer_bytes: int = 1 << 20
    pipeline_max: int = 64  # requests parsed ahead of their answers (one read can hold thousands of small ones)
    max_connections: int = 1024  # open client connections, idle keep-alive ones included (router_refusal)

    def __post_init__(self):
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")


class HeadTooLarge(Exception):
    """431"""


class TooManyPipelined(Exception):
    """429"""


class Connection(asyncio.Protocol):
    """httptools callbacks build cycles; the server's sweeper calls ``expire`` once ``deadline`` passes."""

    def __init__(self, server):
        self.server, self.app, self.limits, self.loop = server, server.app, server.limits, server.loop
        server.conns.add(self)  # counted from the accept on, so a burst of accepts cannot overshoot the cap
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.lost = self.closing = self.broken = self.paused = self.write_paused = False
        self.drained: asyncio.Future | None = None
        self.on_drained = None
        self.current: Cycle | None = None  # the cycle being answered (by its task or the fast path)
        self.queue: deque[Cycle] = deque()  # pipelined cycles waiting for it
        self.parsing: Cycle | None = None  # the cycle whose body is being read
        self.pending_error: tuple[int, str] | None = None  # a bad head, answered once the cycles before it are
        self.in_head, self.mid_message = True, False
        self.head_bytes = 0
        self.url, self.headers = b"", []
        self.deadline: float | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small answers go out now, not after the client's ACK
        self.deadline = time.monotonic() + self.limits.keepalive_s
        self.server.idle[self] = None

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, TooManyPipelined):
                return self.fail(429, f"more than {self.limits.pipeline_max} pipelined requests")
            if not isinstance(exc.__context__, HeadTooLarge):
                log.error("router: HTTP parser callback failed", exc_info=exc.__context__)
            self.fail(431, f"request head is larger than {self.limits.head_max_bytes} bytes or {self.limits.headers_max} headers")
        except httptools.HttpParserError as exc:
            self.fail(400, f"bad HTTP request: {exc}")
        else:
            if self.in_head and self.head_bytes > self.limits.head_max_bytes:
                self.fail(431, f"request head is larger than {self.limits.head_max_bytes} bytes or {self.limits.headers_max} headers")

    def connection_lost(self, exc) -> None:
        self.lost = self.broken = True
        self.server.conns.discard(self)
        self.server.idle.pop(self, None)
        for c in {self.current, self.parsing, *self.queue} - {None}:
            c.client_gone()
        self.queue.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_drained is not None:  # the fast path's backend, paused while this client's buffer was full
            self.on_drained()
            self.on_drained = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    async def drain(self) -> None:
        self.drained = self.loop.create_future()
        await self.drained

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self.server.idle.pop(self, None)
        self.in_head, self.mid_message = True, True
        self.head_bytes = 0
        self.url, self.headers = b"", []
        self.deadline = time.monotonic() + self.limits.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.head_bytes += len(name) + len(value)
        self.headers.append((name, value))
        if self.head_bytes > self.limits.head_max_bytes:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.headers_max:
            raise HeadTooLarge
        if len(self.queue) >= self.limits.pipeline_max:
            raise TooManyPipelined
        self.in_head = False
        self.deadline = time.monotonic() + self.limits.body_idle_s
        p = self.parser
        url = self.url
        scope = request_scope(self, url)
        expect = (b"expect", b"100-continue") in self.headers  # clients send it in lower case
        cycle = self.parsing = Cycle(self, scope, p.should_keep_alive(), expect)
        if not scope["raw_path"]:
            cycle.failed = (400, f"bad HTTP request: invalid target {url[:100]!r}")
        if self.current is None and not self.queue:
            fast = self.server.fast
            if fast is not None and scope["method"] == "POST" and scope["path"] in fast.paths and not expect and not cycle.failed:
                self.current, cycle.deferred = cycle, True  # the app's fast path may take it once its body is in
            else:
                self.start_cycle(cycle)
        else:
            self.queue.append(cycle)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        c = self.parsing
        c.body.append(body)
        c.buffered += len(body)
        self.deadline = time.monotonic() + self.limits.body_idle_s
        if c.deferred and c.buffered > FAST_BODY_MAX_BYTES:
            self._undefer(c)
        if c.buffered > self.limits.body_buffer_bytes:
            self.update_reading()
        c.wake()

    def on_message_complete(self) -> None:
        self.in_head, self.mid_message = True, False
        self.head_bytes = 0
        self.deadline = None  # a running or queued request: the app's own timeouts apply
        c = self.parsing
        c.complete = True
        if c.deferred:
            c.deferred = False
            try:
                taken = self.server.fast(c)
            except Exception:  # a bug there must not become a parser error (431): the ASGI path answers
                log.exception("router: fast path failed")
                taken = False
            if not taken:
                self.start_cycle(c)
        c.wake()

    # --- request cycles ---
    def start_cycle(self, cycle: Cycle) -> None:
        self.current = cycle
        self.loop.create_task(self._run(cycle))

    def _undefer(self, cycle: Cycle) -> None:
        """Not for the fast path after all (a large body, a bad one): the app's task takes the request."""
        if cycle.deferred:
            cycle.deferred = False
            self.start_cycle(cycle)

    async def _run(self, cycle: Cycle) -> None:
        try:
            if cycle.failed is None:
                await self.app(cycle.scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:  # the server shutting down
            pass
        except Exception:
            log.exception("router: request handler failed")
        if cycle.done:
            return
        cycle.done = True  # the app ended without a complete response
        if not self.lost:
            if not cycle.started:
                self.transport.write(error_response(*(cycle.failed or (500, "internal error in the router"))))
            self.transport.close()  # after a started response: the client sees it cut, never a short 200
        self.current = None
        cycle.wake()

    def finished(self, cycle: Cycle) -> None:
        """The response went out whole: the next pipelined request, the deferred error, or keep-alive."""
        self.current = None
        cycle.wake()  # a receive() still waiting (a disconnect watcher) returns now
        cycle.scope = None  # the scope refers back to the cycle (muxplan.on_disconnect): no cycle left for the garbage collector
        if not cycle.keep_alive or self.closing:
            self.broken = True
            self.transport.close()
        elif self.queue:
            self.start_cycle(self.queue.popleft())
        elif self.pending_error:
            self._write_error(*self.pending_error)
        else:
            if not self.mid_message:
                self.deadline = time.monotonic() + self.limits.keepalive_s
                self.server.idle[self] = None  # at the end: the dict's order is idle-since order
            self.update_reading()

    def update_reading(self) -> None:
        """Read only while the app keeps up: not while a pipelined request waits or a body is buffered ahead."""
        if self.lost:
            return
        pause = self.broken or bool(self.queue) or (self.parsing is not None and self.parsing.buffered > self.limits.body_buffer_bytes)
        if pause != self.paused:
            self.paused = pause
            self.transport.pause_reading() if pause else self.transport.resume_reading()

    def fail(self, status: int, message: str) -> None:
        """Bad HTTP: a request whose head was read gets the error as its answer; else it follows the answers due."""
        self.broken = True
        self.update_reading()
        if not self.in_head and self.parsing is not None and not self.parsing.complete:  # a bad body
            self.parsing.failed = (status, message)
            self._undefer(self.parsing)
            self.parsing.wake()
        elif self.current is None and not self.queue:
            self._write_error(status, message)
        else:
            self.pending_error = (status, message)

    def _write_error(self, status: int, message: str) -> None:
        self.broken = True
        if not self.lost:
            self.transport.write(error_response(status, message))
            self.transport.close()

    def _upgrade(self) -> None:
        """llhttp stops at an Upgrade (h2c, websocket): the request is answered over HTTP/1.1 and the connection closed;
        one with a body is refused, since llhttp hands the body over as the upgraded protocol's bytes."""
        self.broken = True
        self.update_reading()
        c = self.parsing
        if c is not None:
            c.keep_alive = False
            if any(n in (b"content-length", b"transfer-encoding") and v not in (b"0",) for n, v in c.scope["headers"]):
                c.failed = (400, "protocol upgrades are not supported")
                self._undefer(c)
                c.wake()

    def close_idle(self) -> None:
        """Close a keep-alive connection between requests (expired, evicted, or the server stopping)."""
        self.broken = True
        self.server.idle.pop(self, None)
        self.server.conns.discard(self)  # its slot is free now, not once the close completes
        self.transport.close()

    def expire(self) -> None:
        self.deadline = None
        if not self.mid_message:  # an idle keep-alive connection
            self.close_idle()
        elif self.in_head:
            self.fail(408, f"request head not complete within {self.limits.head_timeout_s:g} s")
        else:
            self.fail(408, f"request body stalled for {self.limits.body_idle_s:g} s")

    def shutdown(self) -> None:
        """Server stopping: an idle connection closes now, a busy one after its response."""
        self.closing = True
        if self.current is None and self.transport is not None:
            self.close_idle()
