"""One admitted request, from its admission slot to the last byte relayed to the client.

The slot is held by one ``async with`` for the whole request, so every path (answer, error, timeout,
client gone, a bug) gives it back. A watcher task cancels the request when the client disconnects:
the upstream connection is closed, so the backend stops generating for nobody. Plain responses are read
whole and sent with their length (a backend that dies mid-body gives a 503, never a truncated 200);
event streams are relayed chunk by chunk, and one that does not end with ``[DONE]`` gets an SSE error
event instead.
"""
from __future__ import annotations

import asyncio
import json
import time

from executor.admission import QueueFull, QueueTimeout
from executor.recorder import finished as note_finished
from executor.router import respond, respond_error
from executor.router_http import UpstreamError, UpstreamTimeout
from executor.router_request import RequestError

WATCH_AFTER_S = 0.02  # when the router starts watching for the client's disconnect
CLIENT_GONE = 499  # nginx's status for a client that closed the connection (counted only, never sent)


USAGE_TAIL_BYTES = 2048  # the last events: [DONE] and the usage event, if the client asked for one


def sse_error(status: int, message: str) -> bytes:
    return b"data: " + json.dumps({"error": {"message": message, "type": "backend_error", "code": status}}).encode() + b"\n\n"


class Relay:
    def __init__(self, state, metrics, upstream):
        self.state, self.metrics, self.upstream = state, metrics, upstream

    async def admitted(self, scope, receive, send, rec, path: str, body: bytes) -> None:
        """Hold an admission slot while forwarding; ``rec`` (router_metrics.Finished) is filled in and recorded at the end."""
        model = rec.model
        task = asyncio.current_task()
        finished = gone = False
        watcher = timer = None

        def client_gone():
            nonlocal gone
            if not finished:
                gone = True
                task.cancel()

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone()

        def start_watching():
            nonlocal watcher
            watcher = asyncio.get_running_loop().create_task(watch())

        on_disconnect = scope.get("muxplan.on_disconnect")
        if on_disconnect is not None:  # the router's own server calls back: no timer, no task
            on_disconnect(client_gone)
        else:  # any ASGI server: a task per request costs ~30 us of CPU; requests answered within WATCH_AFTER_S need none
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
        lim = self.state.limits
        adm = self.state.admission
        depth = adm.quotas[model] if lim.queue_depth is None else lim.queue_depth
        status = 500  # until something answers
        try:
            async with adm.slot(model, depth, lim.queue_timeout_s):
                status = await self.forward(send, rec, path, body)
        except QueueFull:
            status = 429
            await respond_error(send, 429, f"model '{model}' is at its admission quota ({adm.quotas[model]} in flight, "
                                           f"{depth} waiting)", retry_after_s=1)
        except QueueTimeout:
            status = 504
            await respond_error(send, 504, f"model '{model}': no admission slot within {lim.queue_timeout_s:g} s", retry_after_s=1)
        except RequestError as exc:
            status = exc.status
            await respond_error(send, exc.status, exc.message, exc.retry_after_s)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # our own cancellation: the client is gone, nothing left to answer
            status = CLIENT_GONE
            self.metrics.per_model[model]["disconnects"].inc()
        finally:
            finished = True
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()
            rec.status = status
            self.metrics.finished(rec)

    def mark_down_unless_slow(self, replica, exc: UpstreamError) -> None:
        if not isinstance(exc, UpstreamTimeout):
            self.upstream.mark_down(replica)

    async def forward(self, send, rec, path: str, body: bytes) -> int:
        model = rec.model
        resp, replica = await self.upstream.open(model, path, body)
        rec.headers_s = time.perf_counter() - rec.start
        try:
            ctype = resp.content_type or "application/json"
            if not ctype.startswith("text/event-stream"):
                try:
                    data = await resp.read()
                except UpstreamError as exc:
                    self.mark_down_unless_slow(replica, exc)
                    raise RequestError(503, f"model '{model}': the backend failed before its response was complete ({exc})",
                                       retry_after_s=5) from None
                rec.response_bytes = len(data)
                await respond(send, resp.status, data, ctype.encode())
                note_finished(self.state, model, rec.start, data, resp.status)
                return resp.status
            usage = await self.stream(send, resp, replica, rec)
            note_finished(self.state, model, rec.start, usage, resp.status)
            return resp.status
        finally:
            resp.close()  # no-op once read; mid-stream (client gone) it drops the connection so the backend aborts

    async def stream(self, send, resp, replica, rec) -> bytes:
        model = replica.model
        m = self.metrics.per_model[model]
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        first = last = None
        events = size = 0
        tail = b""
        error = None
        final = b""
        chunks = resp.chunks()
        try:
            async for chunk in chunks:
                last = time.perf_counter()
                if first is None:
                    first = last
                    rec.ttft_s = first - rec.start
                events += chunk.count(b"data:")
                size += len(chunk)
                tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                if tail.rstrip().endswith(b"[DONE]"):
                    # the client's answer ends here: openai's client closes the connection on [DONE] without
                    # waiting for the chunked terminator, so waiting for the backend's would count it as gone
                    final = chunk
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                error = f"model '{model}': the backend ended the stream early"
        except UpstreamError as exc:
            self.mark_down_unless_slow(replica, exc)
            error = f"model '{model}': the backend failed mid-stream ({exc})"
        finally:
            await chunks.aclose()
        if error:
            m["stream_errors"].inc()
            final = sse_error(503, error)
        else:
            resp.release()  # back to the pool once the backend's terminator arrives
            if events > 2:  # token events plus [DONE]
                rec.tpot_s = (last - first) / (events - 2)
        rec.response_bytes, rec.stream_events = size, events
        await send({"type": "http.response.body", "body": final, "more_body": False})
        return b"" if error else tail
