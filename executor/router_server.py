"""The router's HTTP/1.1 server: listens, runs the ASGI lifespan, sweeps timeouts, shuts down cleanly.

uvicorn cost the router about as much CPU per request as everything else it does (its per-request header
validation, ASGI task and timer bookkeeping; bench/RESULTS.md), and the router needs none of its generality:
one ASGI app, HTTP/1.1 only, no websockets. The protocol itself is executor.router_connection, the cap on
connections executor.router_refusal (the app finds the counts under ``muxplan.server`` in the lifespan scope). Timeouts of
all connections are checked by one sweep every ``SWEEP_S`` instead of a timer per request. Stopping (SIGINT,
SIGTERM or ``stop()``) closes the listener and idle connections at once, lets requests in flight finish for
up to ``grace_s``, then cancels what is left and runs the app's lifespan shutdown.
"""
from __future__ import annotations

import asyncio
import resource
import signal
import threading
import time
from email.utils import formatdate

from executor.router_connection import Connection, ServerLimits
from executor.router_refusal import admit, refusal_bytes

SWEEP_S = 0.5


class Server:
    def __init__(self, app, host: str, port: int, limits: ServerLimits = ServerLimits(), grace_s: float = 10.0):
        self.app, self.host, self.port, self.limits, self.grace_s = app, host, port, limits, grace_s
        self.conns: set[Connection] = set()
        self.idle: dict[Connection, None] = {}  # keep-alive connections between requests, longest idle first
        self.num_refused = self.num_evicted = self.num_lingering = 0
        self.refusal = refusal_bytes(limits.max_connections)
        self.fast = getattr(app, "fast", None)  # the app's callback path for requests it can answer without a task (router_fast)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sockname = (host, port)
        self.date_header = b""
        self.started = threading.Event()
        self._stop: asyncio.Event | None = None

    def _tick(self) -> None:
        self.date_header = b"date: %s\r\n" % formatdate(usegmt=True).encode()

    async def _sweep(self) -> None:
        lim = self.limits
        period = min(SWEEP_S, lim.head_timeout_s / 2, lim.body_idle_s / 2, lim.keepalive_s / 2)  # short limits (tests) are kept
        while True:
            await asyncio.sleep(period)
            self._tick()
            now = time.monotonic()
            for c in [c for c in self.conns if c.deadline is not None and c.deadline < now and not c.paused]:
                c.expire()

    async def serve(self) -> None:
        """Serve until ``stop()`` or a signal; returns after the shutdown."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._tick()
        raise_fd_limit(self.limits.max_connections)
        lifespan = Lifespan(self.app, self)
        await lifespan.startup()
        try:
            listener = await self.loop.create_server(lambda: admit(self), self.host, self.port, backlog=2048)
        except OSError as exc:
            await lifespan.shutdown()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        self.sockname = listener.sockets[0].getsockname()[:2]
        sweeper = self.loop.create_task(self._sweep())
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            listener.close()
            sweeper.cancel()
            await self._drain()
            await lifespan.shutdown()
            await self._cancel_rest()

    async def _drain(self) -> None:
        for c in list(self.conns):
            c.shutdown()
        deadline = time.monotonic() + self.grace_s
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()

    async def _cancel_rest(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for t in tasks:  # handlers of connections just aborted, the app's background tasks (probes)
            t.cancel()
        await asyncio.wait(tasks, timeout=5) if tasks else None

    def stop(self) -> None:
        """Thread-safe: begin the shutdown."""
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)

    def run(self) -> None:
        """Block serving on a new event loop (uvloop when installed); SIGINT/SIGTERM stop it when run in the main thread."""
        try:
            import uvloop
            new_loop = uvloop.new_event_loop
        except ImportError:
            new_loop = asyncio.new_event_loop
        loop = new_loop()
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            for sig in previous:
                loop.add_signal_handler(sig, self.stop)
            loop.run_until_complete(self.serve())
        finally:
            loop.close()
            for sig, handler in previous.items():  # the caller's (deployment cleans up its children on SIGTERM)
                signal.signal(sig, handler)


class Lifespan:
    """ASGI lifespan: startup before the listener opens, shutdown after the last connection closed."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.replies: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def _send(self, message: dict) -> None:
        await self.replies.put(message)

    async def _ask(self, kind: str) -> None:
        await self.inbox.put({"type": f"lifespan.{kind}"})
        reply = asyncio.ensure_future(self.replies.get())
        await asyncio.wait([reply, self.task], return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            message = reply.result()
            if message["type"].endswith(".failed"):
                raise RuntimeError(f"router {kind} failed: {message.get('message', '')}")
        else:  # the app ended instead of answering: it does not speak lifespan
            reply.cancel()

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}, "muxplan.server": self.server}, self.inbox.get, self._send))
        await self._ask("startup")

    async def shutdown(self) -> None:
        if not self.task.done():
            await self._ask("shutdown")


def raise_fd_limit(max_connections: int) -> None:
    """Room for the cap: a client and a backend socket per connection, plus files and listeners. Past the soft
    descriptor limit accept() fails and a client hangs unanswered in the backlog instead of getting the 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def serve(app, host: str, port: int, **kw) -> None:
    Server(app, host, port, **kw).run()
