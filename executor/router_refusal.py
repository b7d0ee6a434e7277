"""The cap on client connections: who gets a slot, and the explicit answer for a connection over it.

``ServerLimits.max_connections`` bounds the open client connections (each costs a file descriptor and a
parser; past the process's descriptor limit accept() fails and clients hang in the listen backlog, which
is the silence this cap exists to replace). A connection counts from its accept to its close, idle
keep-alive ones included. When a new one arrives at the cap:

- the connection idle longest (between requests, or accepted and silent) is closed to make room. Idle
  connections never lock out a client with work to do, and a flood of silent connections cannot either:
  only connections inside a request (its head, body or response) hold a slot against newcomers. Closing
  an idle keep-alive connection is what its client must expect at any time anyway (the keep-alive
  timeout does the same; HTTP clients reconnect);
- with none idle, the newcomer is accepted and answered ``503`` with the router's JSON error body,
  ``retry-after: 1`` and ``connection: close``. Its socket then lingers up to ``LINGER_S`` reading and
  dropping what the client sent: closing with unread bytes would send a reset, which can destroy the
  503 before the client reads it. At most ``max_connections`` refusals linger; past that they close at once.

Both outcomes are counted on the server (``num_refused``, ``num_evicted``), exported by the router's /metrics.
"""
from __future__ import annotations

import asyncio

from executor.router_connection import Connection
from executor.router_cycle import STATUS_LINES
from executor.router_request import error_body

LINGER_S = 1.0


def refusal_bytes(max_connections: int) -> bytes:
    body = error_body(503, f"the router is at its limit of {max_connections} open connections, none of them idle; retry shortly")
    return (STATUS_LINES[503] + b"content-type: application/json\r\ncontent-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
            % len(body) + body)


class Refusal(asyncio.Protocol):
    """A connection over the cap: the 503, then the client's bytes dropped until it closes or ``LINGER_S`` passes."""

    def __init__(self, server):
        self.server = server
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        server = self.server
        server.num_lingering += 1
        transport.write(server.refusal)
        if server.num_lingering > server.limits.max_connections or not transport.can_write_eof():
            transport.close()  # flushes the 503 first
            return
        transport.write_eof()  # the client reads the 503 and an end; its request bytes, if any, are read below
        self.timer = server.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: the transport closes

    def connection_lost(self, exc) -> None:
        self.server.num_lingering -= 1
        if self.timer is not None:
            self.timer.cancel()


def admit(server):
    """The protocol for a connection just accepted: a Connection while there is (or can be made) room, else a Refusal."""
    if len(server.conns) >= server.limits.max_connections:
        if server.idle:
            next(iter(server.idle)).close_idle()  # the dict keeps idle-since order: the first has idled longest
            server.num_evicted += 1
        else:
            server.num_refused += 1
            return Refusal(server)
    return Connection(server)
