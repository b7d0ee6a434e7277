"""The front door: one OpenAI-compatible endpoint routing by `model` to the plan's replicas.

Replicas of a model get requests in proportion to their routing shares (smooth weighted round robin
over the healthy ones). Unknown model -> 404 listing the served models; no healthy replica -> 503 with
Retry-After for that model only; over the admission quota -> 429 with Retry-After.
"""

import json
import time
from dataclasses import dataclass, field

from executor.admission import Admission


@dataclass
class Replica:
    model: str
    url: str
    share: float
    unit: int
    process: str
    healthy: bool = False
    credit: float = 0.0


@dataclass
class RouterState:
    replicas: dict[str, list[Replica]]
    admission: Admission
    predicted_rps: dict[str, float] = field(default_factory=dict)
    api_key: str | None = None

    def pick(self, model: str) -> Replica | None:
        """Smooth weighted round robin over healthy replicas (deterministic, proportional to shares)."""
        live = [r for r in self.replicas[model] if r.healthy]
        if not live:
            return None
        total = sum(r.share for r in live)
        for r in live:
            r.credit += r.share
        best = max(live, key=lambda r: r.credit)
        best.credit -= total
        return best

    def set_health(self, process: str, healthy: bool) -> None:
        for reps in self.replicas.values():
            for r in reps:
                if r.process == process:
                    r.healthy = healthy


def _error(status: int, message: str, retry_after: int | None = None):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": {"message": message, "code": status}}, status_code=status, headers=headers)


def create_app(state: RouterState):
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter("muxplan_router_requests", "Requests by model and status", ["model", "status"], registry=registry)
    latency = Histogram("muxplan_router_latency_seconds", "Time to the backend's response headers", ["model"], registry=registry)
    in_flight = Gauge("muxplan_router_in_flight", "Requests in flight", ["model"], registry=registry)
    quota = Gauge("muxplan_router_admission_quota", "Admission quota (in-flight requests)", ["model"], registry=registry)
    predicted = Gauge("muxplan_plan_predicted_rps", "The plan's predicted throughput", ["model"], registry=registry)
    healthy = Gauge("muxplan_router_healthy_replicas", "Healthy replicas", ["model"], registry=registry)
    for model, rps in state.predicted_rps.items():
        predicted.labels(model).set(rps)

    app = FastAPI(title="muxplan router")
    client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if state.api_key and request.url.path.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return _error(401, "missing or wrong API key")
        return await call_next(request)

    async def forward(request: Request, path: str):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body must be JSON")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return _error(400, "field 'model' is required")
        if model not in state.replicas:
            requests.labels(model, "404").inc()
            return _error(404, f"model '{model}' is not served; served models: {', '.join(sorted(state.replicas))}")
        replica = state.pick(model)
        if replica is None:
            requests.labels(model, "503").inc()
            return _error(503, f"model '{model}' has no healthy backend right now", retry_after=5)
        if not state.admission.admit(model):
            requests.labels(model, "429").inc()
            return _error(429, f"model '{model}' is at its admission quota ({state.admission.quotas[model]} in flight)", retry_after=1)
        in_flight.labels(model).inc()
        start = time.perf_counter()
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                state.admission.release(model)
                in_flight.labels(model).dec()

        try:
            upstream = client.build_request("POST", f"{replica.url}{path}", json=body)
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError:
            release()
            state.set_health(replica.process, False)
            requests.labels(model, "503").inc()
            return _error(503, f"model '{model}': backend unreachable", retry_after=5)
        latency.labels(model).observe(time.perf_counter() - start)
        requests.labels(model, str(response.status_code)).inc()

        async def relay():
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
                release()

        media = response.headers.get("content-type", "application/json")
        return StreamingResponse(relay(), status_code=response.status_code, media_type=media)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await forward(request, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models():
        data = []
        for model, reps in sorted(state.replicas.items()):
            data.append({"id": model, "object": "model", "owned_by": "muxplan", "units": [r.unit for r in reps],
                         "replicas": len(reps), "healthy_replicas": sum(r.healthy for r in reps)})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        down = [m for m, reps in state.replicas.items() if not any(r.healthy for r in reps)]
        return JSONResponse({"status": "ok" if not down else "degraded", "down": down}, status_code=200 if not down else 503)

    @app.get("/metrics")
    async def metrics():
        for model, reps in state.replicas.items():
            quota.labels(model).set(state.admission.quotas[model])
            healthy.labels(model).set(sum(r.healthy for r in reps))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
