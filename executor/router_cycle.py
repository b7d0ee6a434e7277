"""One request on a client connection and its response: the ASGI ``receive`` and ``send`` the app is given.

``receive`` hands over the body as it has arrived (reading resumes once the app has taken it), then waits
until the client goes (the relay's disconnect watcher). ``send`` writes the response head with the first
body bytes in one write (one syscall for a whole short answer), sends chunked when the app gave no length,
and waits for the client to drain when the transport's buffer is full.
"""
from __future__ import annotations

import asyncio
import http
from urllib.parse import unquote

import httptools

from executor.router_request import error_body

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
DISCONNECT = {"type": "http.disconnect"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
ASGI = {"version": "3.0", "spec_version": "2.3"}


def request_scope(conn, url: bytes) -> dict:
    """The ASGI scope of the request whose head ``conn``'s parser has just read (``raw_path`` empty: a bad target)."""
    if url[:1] == b"/" and b"?" not in url:  # the usual origin-form target needs no URL parser
        raw_path, query = url, b""
    else:
        try:
            u = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raw_path, query = b"", b""
        else:
            raw_path, query = u.path or b"/", u.query or b""
    path = raw_path.decode("latin-1")
    p = conn.parser
    method = p.get_method()
    return {"type": "http", "asgi": ASGI, "http_version": p.get_http_version(), "method": METHODS.get(method) or method.decode("latin-1"),
            "scheme": "http", "path": unquote(path) if "%" in path else path, "raw_path": raw_path, "query_string": query,
            "root_path": "", "headers": conn.headers, "server": conn.server.sockname, "client": conn.peer}


def error_response(status: int, message: str) -> bytes:
    body = error_body(status, message)
    return (STATUS_LINES[status] + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body)


class Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` the app is given."""

    __slots__ = ("conn", "scope", "body", "buffered", "complete", "ended", "waiter", "keep_alive", "head_only", "expect_continue",
                 "status", "headers", "started", "chunked", "done", "failed", "gone_callback", "deferred")

    def __init__(self, conn, scope: dict, keep_alive: bool, expect_continue: bool):
        self.conn, self.scope, self.keep_alive, self.expect_continue = conn, scope, keep_alive, expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = self.ended = self.started = self.chunked = self.done = False
        self.waiter: asyncio.Future | None = None
        self.status, self.headers = 200, ()
        self.failed: tuple[int, str] | None = None  # answered by the server instead of the app
        self.gone_callback = None
        self.deferred = False  # held back for the app's fast path until the body is complete (router_connection)
        scope["muxplan.on_disconnect"] = self.on_disconnect

    def on_disconnect(self, callback) -> None:
        """This server's extension to ASGI: ``callback()`` runs when the client goes before the response is
        complete, so the app needs no task waiting in ``receive()`` to learn it."""
        self.gone_callback = callback

    def client_gone(self) -> None:
        self.wake()
        if self.gone_callback is not None and not self.done:
            self.gone_callback()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> dict:
        conn = self.conn
        while True:
            if self.body:
                data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                self.ended = self.complete
                conn.update_reading()
                return {"type": "http.request", "body": data, "more_body": not self.complete}
            if self.complete and not self.ended:
                self.ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if conn.lost or self.failed or self.done:
                return DISCONNECT
            if self.expect_continue and not self.complete:  # the client waits for this before sending its body
                self.expect_continue = False
                conn.transport.write(CONTINUE)
            self.waiter = conn.loop.create_future()  # after the body has ended this waits for the client to go
            await self.waiter

    async def send(self, message: dict) -> None:
        conn = self.conn
        kind = message["type"]
        if kind == "http.response.start":
            self.status, self.headers = message["status"], message.get("headers", ())
            return
        if kind != "http.response.body" or self.done or conn.lost:  # gone: the app learns it from receive()
            return
        self.write(message.get("body", b""), message.get("more_body", False))
        if not self.done and conn.write_paused:
            await conn.drain()

    def write(self, body: bytes, more: bool) -> None:
        """The body part of ``send`` without the wait for a full buffer (the fast path's whole answer)."""
        conn = self.conn
        if not self.started:
            self.started = True
            out = self._head(body, more)
        else:
            out = b""
        if body and not self.head_only:
            out += b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body
        if not more:
            if self.chunked and not self.head_only:
                out += b"0\r\n\r\n"
            self.done = True
        if out:
            conn.transport.write(out)
        if self.done:
            conn.finished(self)

    def _head(self, body: bytes, more: bool) -> bytes:
        lines = [STATUS_LINES.get(self.status) or b"HTTP/1.1 %d \r\n" % self.status]
        sized = False
        for name, value in self.headers:
            sized = sized or name.lower() == b"content-length"
            lines += (name, b": ", value, b"\r\n")
        if not sized:
            if not more:
                lines.append(b"content-length: %d\r\n" % len(body))
            elif self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        # a body not read to its end leaves the parser mid-message: the connection cannot carry another request
        self.keep_alive = self.keep_alive and self.complete and not self.conn.closing
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(self.conn.server.date_header)
        lines.append(b"\r\n")
        return b"".join(lines)
