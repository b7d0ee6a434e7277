"""The front door: one OpenAI-compatible endpoint routing by `model` to the plan's replicas.

Replicas of a model get requests in proportion to their routing shares (smooth weighted round robin
over the routable ones: healthy by the supervisor's checks and not marked down by a failed request).
Unknown model -> 404 listing the served models; no routable replica -> 503 with Retry-After for that
model only; over the admission quota a request waits in a bounded per-model queue (full -> 429, waited
past the queue timeout -> 504, both with Retry-After); bodies over the size limit -> 413; lengths that
cannot fit the model's context -> 400. The app is plain ASGI (no framework on the hot path), served by the
router's own HTTP/1.1 server (executor.router_server) and testable under any ASGI client: the body is
parsed once to read the model and limits and forwarded as the client sent it; streams are relayed chunk
by chunk, and a stream the backend cuts ends with an SSE error event and no ``[DONE]``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field

from executor.admission import Admission
from executor.router_metrics import INVALID, UNKNOWN, Finished, RouterMetrics
from executor.router_request import RequestError, check_context, error_body, parse_request

GENERATE = {"/v1/completions": False, "/v1/chat/completions": True}  # path -> chat
PARSE_IN_THREAD_BYTES = 256 * 1024  # larger bodies are parsed off the event loop
DRAIN_MAX_BYTES = 64 * 2**20  # an over-long body is read (and dropped) up to this much, so the client sees the 413


@dataclass
class Limits:
    max_body_bytes: int = 4 * 2**20
    queue_depth: int | None = None  # requests waiting per model; None: as many as its admission quota
    queue_timeout_s: float = 30.0
    upstream_timeout_s: float = 600.0  # longest wait for a backend's next bytes
    connect_timeout_s: float = 5.0
    probe_s: float = 2.0
    probe_timeout_s: float = 5.0


@dataclass
class Replica:
    model: str
    url: str
    share: float
    unit: int
    process: str
    healthy: bool = False  # the supervisor's health checks
    credit: float = 0.0
    failed: bool = False  # a request could not reach it; cleared by the router's probe or the supervisor


@dataclass
class RouterState:
    replicas: dict[str, list[Replica]]
    admission: Admission
    predicted_rps: dict[str, float] = field(default_factory=dict)
    api_key: str | None = None
    backend_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    context_tokens: dict[str, int] = field(default_factory=dict)  # learnt from the backends' /v1/models unless given
    recorder: object | None = None  # executor.recorder.TraceRecorder with `deploy --record DIR`
    observed: object | None = None  # executor.recorder.ObservedRates: finished requests per model, for /metrics

    def pick(self, model: str, exclude: list[Replica] = ()) -> Replica | None:
        """Smooth weighted round robin over routable replicas (deterministic, proportional to shares)."""
        reps = self.replicas[model]
        if len(reps) == 1:  # the common case needs no arithmetic
            r = reps[0]
            return r if r.healthy and not r.failed and r not in exclude else None
        live = [r for r in reps if r.healthy and not r.failed and r not in exclude]
        if not live:
            return None
        total = sum(r.share for r in live)
        for r in live:
            r.credit += r.share
        best = max(live, key=lambda r: r.credit)
        best.credit -= total
        return best

    def set_health(self, process: str, healthy: bool) -> None:
        """The supervisor's verdict; a healthy verdict also clears a mark left by a failed request."""
        for reps in self.replicas.values():
            for r in reps:
                if r.process == process:
                    r.healthy = healthy
                    r.failed = r.failed and not healthy

    def routable(self, model: str) -> bool:
        return any(r.healthy and not r.failed for r in self.replicas[model])


async def respond(send, status: int, body: bytes, content_type: bytes = b"application/json", retry_after_s: int | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if retry_after_s:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send, status: int, message: str, retry_after_s: int | None = None) -> None:
    await respond(send, status, error_body(status, message), retry_after_s=retry_after_s)


class Router:
    """The ASGI app. ``state`` is shared with the supervisor, which reports health through it."""

    def __init__(self, state: RouterState):
        from executor.router_fast import FastPath
        from executor.router_relay import Relay  # it imports respond() from here
        from executor.router_upstream import Upstream

        self.state = state
        self.metrics = RouterMetrics(list(state.replicas), state.predicted_rps)
        self.upstream = Upstream(state, self.metrics)
        self.relay = Relay(state, self.metrics, self.upstream)
        self.auth = f"Bearer {state.api_key}".encode() if state.api_key else None
        self.fast = FastPath(self, GENERATE)  # plain requests answered without a task when served by executor.router_server

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            return await self.http(scope, receive, send)
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    if "muxplan.server" in scope:  # executor.router_server: its connection counts in /metrics
                        self.metrics.watch_server(scope["muxplan.server"])
                    self.upstream.ensure()  # the prober starts with the server, not with the first request
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.upstream.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def authorised(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.auth)
        return False

    async def http(self, scope, receive, send):
        path, method = scope["path"], scope["method"]
        if self.auth and path.startswith("/v1/") and not self.authorised(scope):
            return await respond_error(send, 401, "missing or wrong API key")
        want = "POST" if path in GENERATE else "GET"
        if path not in GENERATE and path not in ("/v1/models", "/health", "/metrics"):
            return await respond_error(send, 404, f"no route {path}")
        if method != want:
            return await respond_error(send, 405, f"{path} takes {want}")
        if path in GENERATE:
            self.upstream.ensure()
            return await self.generate(scope, receive, send, path)
        if path == "/v1/models":
            return await respond(send, 200, json.dumps(self.models()).encode())
        if path == "/health":
            down = [m for m in self.state.replicas if not self.state.routable(m)]
            return await respond(send, 503 if down else 200, json.dumps({"status": "degraded" if down else "ok", "down": down}).encode())
        return await respond(send, 200, self.render_metrics(), self.metrics.content_type.encode())

    def models(self) -> dict:
        data = []
        for model, reps in sorted(self.state.replicas.items()):
            entry = {"id": model, "object": "model", "owned_by": "muxplan", "units": [r.unit for r in reps], "replicas": len(reps),
                     "healthy_replicas": sum(r.healthy and not r.failed for r in reps)}
            if model in self.state.context_tokens:
                entry["max_model_len"] = self.state.context_tokens[model]
            data.append(entry)
        return {"object": "list", "data": data}

    def render_metrics(self) -> bytes:
        m = self.metrics
        from executor.recorder import export_rates  # the observed rate next to the plan's (issue 16)
        export_rates(self.state, m.registry)
        for model, reps in self.state.replicas.items():
            m.quota.labels(model).set(self.state.admission.quotas[model])
            m.healthy.labels(model).set(sum(r.healthy and not r.failed for r in reps))
            m.per_model[model]["queued"].set(self.state.admission.queued(model))
            m.per_model[model]["in_flight"].set(self.state.admission.in_flight.get(model, 0))
        return m.render()

    async def read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, or None once a 413 (or nothing, for a client gone) has been answered."""
        limit = self.state.limits.max_body_bytes
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not msg.get("more_body") or size > DRAIN_MAX_BYTES:
                break
        if size > limit:
            self.metrics.count(INVALID, 413)
            await respond_error(send, 413, f"request body is larger than the {limit}-byte limit")
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def generate(self, scope, receive, send, path: str):
        start = time.perf_counter()
        body = await self.read_body(scope, receive, send)
        if body is None:
            return
        state, metrics = self.state, self.metrics
        try:
            if len(body) > PARSE_IN_THREAD_BYTES:
                parsed = await asyncio.get_running_loop().run_in_executor(None, parse_request, body, GENERATE[path])
            else:
                parsed = parse_request(body, GENERATE[path])
        except RequestError as exc:
            metrics.count(INVALID, exc.status)
            return await respond_error(send, exc.status, exc.message)
        model = parsed.model
        if model not in state.replicas:
            metrics.count(UNKNOWN, 404)
            return await respond_error(send, 404, f"model '{model}' is not served; served models: {', '.join(sorted(state.replicas))}")
        try:
            check_context(parsed, state.context_tokens.get(model))
            if not state.routable(model):
                raise RequestError(503, f"model '{model}' has no healthy backend right now", retry_after_s=5)
        except RequestError as exc:
            metrics.count(model, exc.status)
            return await respond_error(send, exc.status, exc.message, exc.retry_after_s)
        await self.relay.admitted(scope, receive, send, Finished(model, start, len(body), parsed), path, body)


def create_app(state: RouterState) -> Router:
    return Router(state)
