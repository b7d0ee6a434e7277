"""Router overhead against a trivial stub backend: the same requests direct and through the router, in one run.

Usage: python -m bench.router_overhead [--requests 1000] [--out bench/results/router_overhead.json]

Starts bench/router_stub.py (FastAPI/uvicorn) and the router (its own server, as `muxplan deploy` runs it)
as separate processes on loopback, then measures with one aiohttp client: latency p50/p99 at concurrency 1
(max_tokens 1), req/s at concurrency 8, and streaming time to first byte at concurrency 1; req/s at
concurrency 8 also with the official openai client (AsyncOpenAI on httpx, ~10x the client CPU of aiohttp,
so the router's share of the 2 cores is smaller). Two more proxies run in the same rounds: the same router
app under uvicorn (what it ran on before), and a byte pipe with no HTTP at all (what any proxy process costs
on these two cores). All paths alternate in rounds so drift on the shared cores hits them alike; the
machine's load average is recorded with the results.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from muxplan.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

BODY = json.dumps({"model": "stub", "prompt": "Hello there", "max_tokens": 1}).encode()
STREAM_BODY = json.dumps({"model": "stub", "prompt": "Hello there", "max_tokens": 4, "stream": True}).encode()
ROUNDS = 10
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_router(port: int, backend: str, server: str) -> None:
    """The router process: one model on one replica, served the way executor.deployment.serve does (or, for
    comparison, the same app under uvicorn, which served it until the router had its own server)."""
    from executor.admission import Admission
    from executor.router import Replica, RouterState, create_app
    from executor.router_server import serve

    state = RouterState({"stub": [Replica("stub", backend, 1.0, 0, "p0", healthy=True)]}, Admission({"stub": 1024}), {"stub": 1.0})
    if server == "uvicorn":
        import uvicorn

        return uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    serve(create_app(state), "127.0.0.1", port)


def serve_pipe(port: int, backend_port: int) -> None:
    """A floor for any proxy: each client connection piped byte for byte to its own backend connection (no HTTP)."""
    import uvloop

    class Up(asyncio.Protocol):
        def __init__(self, down):
            self.down = down

        def data_received(self, data):
            self.down.write(data)

        def connection_lost(self, exc):  # the stub closed an idle connection: so does the pipe, as any proxy would
            self.down.close()

    class Down(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.up, self.early = transport, None, []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self):
            self.up, _ = await asyncio.get_running_loop().create_connection(lambda: Up(self.transport), "127.0.0.1", backend_port)
            for data in self.early:
                self.up.write(data)

        def data_received(self, data):
            self.up.write(data) if self.up else self.early.append(data)

        def connection_lost(self, exc):
            if self.up:
                self.up.close()

    async def run():
        server = await asyncio.get_running_loop().create_server(Down, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(run())


def wait_up(url: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


async def timed(session, url: str, body: bytes, first_byte: bool) -> float:
    t = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise SystemExit(f"{url}: HTTP {r.status}")
        if first_byte:
            await r.content.readany()
            dt = time.perf_counter() - t
            await r.read()
            return dt
        await r.read()
    return time.perf_counter() - t


async def sequential(session, url: str, n: int, body: bytes, first_byte: bool = False) -> list[float]:
    return [await timed(session, url, body, first_byte) for _ in range(n)]


async def concurrent(session, url: str, n: int, concurrency: int) -> float:
    left = n

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await timed(session, url, BODY, False)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1e3


async def concurrent_openai(url: str, n: int, concurrency: int) -> float:
    """req/s through the official openai client (httpx underneath): what most users run."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    left = n

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await client.completions.create(model="stub", prompt="Hello there", max_tokens=1)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return n / (time.perf_counter() - t)


async def measure(urls: dict[str, str], n: int, proxy_pids: dict[str, int]) -> dict:
    import aiohttp

    lat = {k: [] for k in urls}
    ttfb = {k: [] for k in urls}
    rps = {k: [] for k in urls}
    rps_openai = {k: [] for k in urls}
    cpu = dict.fromkeys(proxy_pids, 0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for url in urls.values():
            await sequential(session, url + "/v1/completions", 200, BODY)  # warm-up
        for _ in range(ROUNDS):
            for k, url in urls.items():
                lat[k] += await sequential(session, url + "/v1/completions", n // ROUNDS, BODY)
                ttfb[k] += await sequential(session, url + "/v1/completions", n // (2 * ROUNDS), STREAM_BODY, first_byte=True)
                before = cpu_s(proxy_pids[k]) if k in proxy_pids else 0.0
                rps[k].append(await concurrent(session, url + "/v1/completions", 2 * n // ROUNDS, 8))
                if k in proxy_pids:
                    cpu[k] += cpu_s(proxy_pids[k]) - before
                rps_openai[k].append(await concurrent_openai(url, n // ROUNDS, 8))
    out = {k: {"p50_ms": pct(lat[k], 50), "p99_ms": pct(lat[k], 99), "rps_c8": sorted(rps[k])[len(rps[k]) // 2],
               "rps_c8_openai": sorted(rps_openai[k])[len(rps_openai[k]) // 2],
               "ttfb_p50_ms": pct(ttfb[k], 50), "ttfb_p99_ms": pct(ttfb[k], 99)} for k in urls}
    for k in proxy_pids:
        out[k]["cpu_us_per_request"] = cpu[k] / (2 * n // ROUNDS * ROUNDS) * 1e6
        out[k]["rps_ratio_paired_median"] = sorted(r / d for r, d in zip(rps[k], rps["direct"]))[ROUNDS // 2]
    return out


def added(res: dict, k: str) -> dict:
    """What the proxy ``k`` adds to the direct path, measured in the same run."""
    d, r = res["direct"], res[k]
    out = {"p50_ms": r["p50_ms"] - d["p50_ms"], "p99_ms": r["p99_ms"] - d["p99_ms"], "ttfb_p50_ms": r["ttfb_p50_ms"] - d["ttfb_p50_ms"],
           "ttfb_p99_ms": r["ttfb_p99_ms"] - d["ttfb_p99_ms"], "rps_ratio": r["rps_c8"] / d["rps_c8"],
           "rps_ratio_openai": r["rps_c8_openai"] / d["rps_c8_openai"]}
    if "cpu_us_per_request" in r:
        out |= {"rps_ratio_paired_median": r["rps_ratio_paired_median"], "cpu_us_per_request": r["cpu_us_per_request"],
                "one_core_rps": 1e6 / r["cpu_us_per_request"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="sequential requests per path (c=8 runs twice as many)")
    ap.add_argument("--out", default="bench/results/router_overhead.json")
    ap.add_argument("--serve-router", nargs=3, metavar=("PORT", "BACKEND", "SERVER"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-pipe", nargs=2, type=int, metavar=("PORT", "BACKEND_PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_router:
        return serve_router(int(args.serve_router[0]), *args.serve_router[1:])
    if args.serve_pipe:
        return serve_pipe(*args.serve_pipe)
    stub_port, router_port, uvicorn_port, pipe_port = free_port(), free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{stub_port}"
    procs = [subprocess.Popen([sys.executable, "-m", "bench.router_stub", "--port", str(stub_port), "--models", "stub"], cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "bench.router_overhead", "--serve-router", str(router_port), backend, "own"], cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "bench.router_overhead", "--serve-router", str(uvicorn_port), backend, "uvicorn"], cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "bench.router_overhead", "--serve-pipe", str(pipe_port), str(stub_port)], cwd=ROOT)]
    urls = {"direct": backend, "router": f"http://127.0.0.1:{router_port}", "uvicorn": f"http://127.0.0.1:{uvicorn_port}",
            "pipe": f"http://127.0.0.1:{pipe_port}"}
    load_before = os.getloadavg()
    try:
        for url in urls.values():
            wait_up(url + "/health")
        res = asyncio.run(measure(urls, args.requests, {k: p.pid for k, p in zip(("router", "uvicorn", "pipe"), procs[1:])}))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    load = {"before": load_before, "after": os.getloadavg()}
    adds = {k: added(res, k) for k in ("router", "uvicorn", "pipe")}
    print(f"router overhead vs a FastAPI stub ({args.requests} req at c=1 per path, {2 * args.requests} at c=8, {os.cpu_count()} CPUs, "
          f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after)")
    print(f"{'path':<9}{'p50 ms':>9}{'p99 ms':>9}{'req/s c=8':>11}{'(openai)':>10}{'TTFB p50':>10}{'TTFB p99':>10}{'CPU us/req':>12}")
    for k, v in res.items():
        print(f"{k:<9}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}{v['rps_c8']:>11.0f}{v['rps_c8_openai']:>10.0f}{v['ttfb_p50_ms']:>10.2f}"
              f"{v['ttfb_p99_ms']:>10.2f}{v.get('cpu_us_per_request', float('nan')):>12.0f}")
    for k, a in adds.items():
        paired = f", paired-round median {a['rps_ratio_paired_median']:.0%}" if "rps_ratio_paired_median" in a else ""
        print(f"added by {k:<8} p50 {a['p50_ms']:+.2f} ms, p99 {a['p99_ms']:+.2f} ms, TTFB p50 {a['ttfb_p50_ms']:+.2f} ms; "
              f"c=8 req/s {a['rps_ratio']:.0%} of direct{paired} (openai client {a['rps_ratio_openai']:.0%})")
    write_text_atomic(args.out, json.dumps({**res, "added": adds, "requests": args.requests, "cpus": os.cpu_count(), "load_average": load},
                                           indent=1))


if __name__ == "__main__":
    main()
