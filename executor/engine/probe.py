"""Measure prefill and decode latencies on the engine's own code path (``muxplan profile --backend engine``).

A point runs ``ModelRunner.step`` (model forward over the paged pool plus sampling) on synthetic
sequences whose blocks come from the block manager, exactly as in serving. prefill(b, t): b prompts of t
tokens; decode(b, c): one step of b sequences at context c (the step rewrites the same slot, so repeats
see the same context). Median of ``repeats`` after ``warmup``; on a GPU timed with CUDA events on a stream
inside a green context holding ``sm_pct`` of the SMs, on CPU with a monotonic clock (100% SMs only).
A point whose KV does not fit the pool returns None and is left out. Before every timed run the probe
overwrites a buffer larger than the last-level cache: in serving, colocated models take turns, so a step
finds little of its model's weights in cache (on a CPU with tiny models, timing warm-cache repeats made
decode look 30-50% faster than it runs beside two other models).
"""
from __future__ import annotations

import statistics
import time

import torch

from executor.engine.concurrency import StreamJobs
from executor.engine.kv_pool import BlockManager, KvPool
from executor.engine.model import load_model
from executor.engine.runner import ModelRunner
from executor.engine.sampler import SamplingParams
from executor.engine.sequence import Sequence
from muxplan.catalog import get_model
from muxplan.files import InputError
from profiler.measure import ProbeInfo, ProfileRequest
from unitsched.config import BASE_BLOCK_TOKENS as BLOCK_TOKENS  # one head size: the base block

CPU_POOL_BYTES = 2 * 2**30
GPU_POOL_FRACTION = 0.85
FLUSH_BYTES = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}  # above the last-level cache (a 32 MiB CPU L3, a 50 MiB H100 L2)


class EngineProbe:
    def __init__(self, req: ProfileRequest, device: str | None = None):
        if req.tp != 1:
            raise InputError("--tp: the engine runs one GPU per process (TP 1); profile TP > 1 through --backend vllm")
        from pathlib import Path

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        on_gpu = self.device.type == "cuda"
        if not on_gpu and any(sm != 100 for sm in req.sm_pcts):
            raise InputError("--sm: SM partitions need a GPU; on CPU only 100 exists")
        if not on_gpu:
            torch.set_num_threads(1)  # as the engine serves on CPU
        self.spec = get_model(req.model)
        dtype = torch.bfloat16 if on_gpu else torch.float32
        weights = Path(req.model) if Path(req.model).is_dir() else None
        self.model = load_model(self.spec, weights, dtype, self.device)
        block_elems = 2 * BLOCK_TOKENS * self.spec.head_dim
        block_bytes = block_elems * torch.empty((), dtype=dtype).element_size()
        per_logical = self.spec.num_layers * self.spec.num_kv_heads
        longest = max(max(req.prefill_tokens), max(req.context_tokens)) + 1
        wanted = max(req.batches) * -(-longest // BLOCK_TOKENS) * per_logical * block_bytes
        budget = int(torch.cuda.mem_get_info(self.device)[0] * GPU_POOL_FRACTION) if on_gpu else CPU_POOL_BYTES
        self.pool = KvPool(min(wanted, budget) // block_bytes, block_elems, dtype, self.device)
        self.blocks = BlockManager(self.pool.num_blocks)
        self.blocks.add_model("m", per_logical)
        self.runner = ModelRunner("m", self.model, self.pool.view(self.spec.head_dim), self.blocks, self.device)
        self.jobs = StreamJobs(self.device) if on_gpu else None
        self._scratch = torch.empty(FLUSH_BYTES[self.device.type] // 4, dtype=torch.float32, device=self.device)
        self.info = ProbeInfo(engine="muxplan-engine", engine_version="1", torch_version=torch.__version__, cuda_version=torch.version.cuda or "",
                              driver=_driver() if on_gpu else "", dtype=str(dtype).removeprefix("torch."),
                              sm_mechanism=self.jobs.mechanism if self.jobs else "none")
        self._ids = 0

    def _sequences(self, batch: int, tokens: int) -> list[Sequence] | None:
        per_seq = -(-(tokens + 1) // BLOCK_TOKENS)
        if not self.blocks.can_allocate("m", batch * per_seq):
            return None
        seqs = []
        for i in range(batch):
            self._ids += 1
            ids = [(7 * i + 13 * k) % (self.spec.vocab_size - 1) + 1 for k in range(tokens)]
            seq = Sequence(self._ids, "m", ids, SamplingParams(temperature=0.0), 0.0)
            self.blocks.allocate(seq.id, "m", per_seq)
            seqs.append(seq)
        return seqs

    def _time_ms(self, kind: str, seqs: list[Sequence], sm_pct: int, repeats: int, warmup: int) -> float:
        if self.jobs is None:
            for _ in range(warmup):
                self.runner.step(kind, seqs)
            samples = []
            for _ in range(max(1, repeats)):
                self._scratch.fill_(1.0)  # cold cache, as between colocated models' steps
                start = time.perf_counter()
                self.runner.step(kind, seqs)
                samples.append((time.perf_counter() - start) * 1e3)
            return statistics.median(samples)
        stream = self.jobs.stream("m", kind, sm_pct)
        samples = []
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.runner.step(kind, seqs)
            for _ in range(max(1, repeats)):
                self._scratch.fill_(1.0)
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record(stream)
                self.runner.step(kind, seqs)
                end.record(stream)
                end.synchronize()
                samples.append(begin.elapsed_time(end))
        return statistics.median(samples)

    def _measure(self, kind: str, sm_pct: int, batch: int, tokens: int, repeats: int, warmup: int) -> float | None:
        seqs = self._sequences(batch, tokens)
        if seqs is None:
            return None
        if kind == "decode":
            for s in seqs:  # the step's token is the last of `tokens`; context = tokens
                s.output_ids.append(s.prompt_ids.pop())
        try:
            return self._time_ms(kind, seqs, sm_pct, repeats, warmup)
        finally:
            for s in seqs:
                self.blocks.free(s.id)
                self.runner.forget(s.id)

    def prefill_ms(self, sm_pct: int, batch: int, prompt_tokens: int, repeats: int, warmup: int) -> float | None:
        return self._measure("prefill", sm_pct, batch, prompt_tokens, repeats, warmup)

    def decode_ms(self, sm_pct: int, batch: int, context_tokens: int, repeats: int, warmup: int) -> float | None:
        return self._measure("decode", sm_pct, batch, context_tokens, repeats, warmup)


def _driver() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def make_probe(req: ProfileRequest) -> EngineProbe:
    return EngineProbe(req)
