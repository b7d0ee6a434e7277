"""The router's side of the backends: pooled connections, failover before headers, and probes.

A request that cannot reach its replica (refused, reset, closed or timed out connecting before the
response headers) is retried once on another routable replica of the model; the failed replica is marked
down until a probe finds it answering again. Probes ask ``GET /v1/models`` with the deployment's token
every ``probe_s``: a replica is up when it answers 200 and lists its model (so a stranger on the port is
not taken for it), and the answer's ``max_model_len`` becomes the model's context for the length checks.
A response (any status, 500 included) never marks a replica down.

Backend contract: the router sends ``Authorization: Bearer <backend_token>`` on every request and probe
when the state has a ``backend_token`` (backends get it as ``MUXPLAN_BACKEND_TOKEN``, vLLM as
``--api-key``) and answers 401 without it.
"""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from executor.router_http import SWEEP_S, Pool, UpstreamError
from executor.router_request import RequestError


class Upstream:
    def __init__(self, state, metrics):
        self.state, self.metrics = state, metrics
        self.pool: Pool | None = None
        self.loop = None
        self.prober: asyncio.Task | None = None
        self.sweeper: asyncio.Task | None = None
        self.probe_rounds = 0  # completed rounds of probes over all replicas (tests wait for the first)
        self.auth = f"Authorization: Bearer {state.backend_token}\r\n" if state.backend_token else ""
        self.addr: dict[str, tuple[str, int]] = _Addresses()  # replicas added by `deploy --update` resolve on first use
        self.heads: dict[tuple, bytes] = {}
        for reps in state.replicas.values():
            for r in reps:
                u = urlsplit(r.url)
                self.addr[r.url] = (u.hostname, u.port or 80)

    def ensure(self) -> None:
        """One pool and prober per event loop (test clients may run each request on a new loop)."""
        loop = asyncio.get_running_loop()
        if loop is self.loop:
            return
        if self.pool:
            self.pool.close()
        self.loop = loop
        self.pool = Pool(self.state.limits.connect_timeout_s)
        self.prober = loop.create_task(self.probe_forever())
        self.sweeper = loop.create_task(self.sweep_forever())

    async def sweep_forever(self) -> None:
        pool = self.pool
        while True:
            await asyncio.sleep(SWEEP_S)
            pool.sweep()

    async def close(self) -> None:
        if self.prober:
            self.prober.cancel()
            self.sweeper.cancel()
        if self.pool:
            self.pool.close()
        self.loop = None

    def request_head(self, method: str, path: str, host: str, port: int, body: bytes) -> bytes:
        """The request head; all of it but the length is built once per (method, path, backend)."""
        key = (method, path, host, port)
        prefix = self.heads.get(key)
        if prefix is None:
            prefix = self.heads[key] = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{self.auth}".encode("latin-1")
        return prefix + (b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) if body else b"\r\n")

    async def open(self, model: str, path: str, body: bytes):
        """The backend's response (headers read) and the replica that gave it; at most one retry elsewhere."""
        tried = []
        m = self.metrics.per_model[model]
        timeout_s = self.state.limits.upstream_timeout_s
        for attempt in (0, 1):
            replica = self.state.pick(model, exclude=tried)
            if replica is None:
                break
            if attempt:
                m["retries"].inc()
            host, port = self.addr[replica.url]
            try:
                resp = await self.pool.request(host, port, self.request_head("POST", path, host, port, body), body, timeout_s)
            except TimeoutError:
                raise RequestError(504, f"model '{model}': backend did not answer within {timeout_s:g} s", retry_after_s=5) from None
            except UpstreamError:
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
        host, port = self.addr[replica.url]
        resp = None
        try:
            async with asyncio.timeout(self.state.limits.probe_timeout_s):
                resp = await self.pool.request(host, port, self.request_head("GET", "/v1/models", host, port, b""), b"", self.state.limits.probe_timeout_s)
                raw = await resp.read()
            listed = {m.get("id"): m for m in json.loads(raw).get("data", []) if isinstance(m, dict)} if resp.status == 200 else {}
        except (UpstreamError, TimeoutError, ValueError, AttributeError):
            return False
        finally:
            if resp is not None:
                resp.close()
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
            self.probe_rounds += 1
            await asyncio.sleep(self.state.limits.probe_s)


class _Addresses(dict):
    """(host, port) per backend URL, parsed once."""

    def __missing__(self, url: str) -> tuple[str, int]:
        u = urlsplit(url)
        self[url] = (u.hostname, u.port or 80)
        return self[url]
