"""The router's side of the backends: one pooled aiohttp client, failover before headers, and probes.

A request that cannot reach its replica (refused, reset, closed or timed out before the response
headers) is retried once on another routable replica of the model; the failed replica is marked down
until a probe finds it answering again. Probes ask ``GET /v1/models`` with the deployment's token every
``probe_s``: a replica is up when it answers 200 and lists its model (so a stranger on the port is not
taken for it), and the answer's ``max_model_len`` becomes the model's context for the length checks.
A response (any status, 500 included) never marks a replica down.

Backend contract: the router sends ``Authorization: Bearer <backend_token>`` on every request and probe
when the state has a ``backend_token`` (backends get it as ``MUXPLAN_BACKEND_TOKEN``, vLLM as
``--api-key``) and answers 401 without it.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp

from executor.router_request import RequestError

KEEPALIVE_S = 4.0  # under uvicorn's 5 s keep-alive, so a pooled connection is not closed by the backend while reused


class Upstream:
    def __init__(self, state, metrics):
        self.state, self.metrics = state, metrics
        self.session: aiohttp.ClientSession | None = None
        self.loop = None
        self.prober: asyncio.Task | None = None
        self.headers = {"Content-Type": "application/json"}
        if state.backend_token:
            self.headers["Authorization"] = f"Bearer {state.backend_token}"

    def ensure(self) -> None:
        """One session and prober per event loop (test clients may run each request on a new loop)."""
        loop = asyncio.get_running_loop()
        if loop is self.loop:
            return
        self.loop = loop
        lim = self.state.limits
        timeout = aiohttp.ClientTimeout(total=None, connect=lim.connect_timeout_s, sock_read=lim.upstream_timeout_s)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S), timeout=timeout,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding"))
        self.prober = loop.create_task(self.probe_forever())

    async def close(self) -> None:
        if self.prober:
            self.prober.cancel()
        if self.session:
            await self.session.close()
        self.loop = None

    async def open(self, model: str, path: str, body: bytes):
        """The backend's response (headers read) and the replica that gave it; at most one retry elsewhere."""
        tried = []
        m = self.metrics.per_model[model]
        for attempt in (0, 1):
            replica = self.state.pick(model, exclude=tried)
            if replica is None:
                break
            if attempt:
                m["retries"].inc()
            try:
                resp = await self.session.post(replica.url + path, data=body, headers=self.headers)
            except aiohttp.SocketTimeoutError:
                raise RequestError(504, f"model '{model}': backend did not answer within {self.state.limits.upstream_timeout_s:g} s",
                                   retry_after_s=5) from None
            except (aiohttp.ClientError, OSError):
                tried.append(replica)
                self.mark_down(replica)
                continue
            if attempt:
                m["failovers"].inc()
            return resp, replica
        raise RequestError(503, f"model '{model}': backend unreachable" if tried else f"model '{model}' has no healthy backend right now",
                           retry_after_s=5)

    def mark_down(self, replica) -> None:
        if not replica.failed:
            replica.failed = True
            self.metrics.per_model[replica.model]["replica_failures"].inc()

    async def probe(self, replica) -> bool:
        try:
            async with self.session.get(replica.url + "/v1/models", headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=self.state.limits.probe_timeout_s)) as r:
                if r.status != 200:
                    return False
                listed = {m.get("id"): m for m in json.loads(await r.read()).get("data", []) if isinstance(m, dict)}
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, AttributeError):
            return False
        entry = listed.get(replica.model)
        if entry is None:
            return False
        if isinstance(entry.get("max_model_len"), int) and replica.model not in self.state.context_tokens:
            self.state.context_tokens[replica.model] = entry["max_model_len"]
        return True

    async def probe_forever(self) -> None:
        while True:
            replicas = [r for reps in self.state.replicas.values() for r in reps if r.healthy]
            results = await asyncio.gather(*(self.probe(r) for r in replicas))
            for r, ok in zip(replicas, results):
                if ok:
                    r.failed = False
                else:
                    self.mark_down(r)
            await asyncio.sleep(self.state.limits.probe_s)
