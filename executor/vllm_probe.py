"""Measure prefill and decode latencies through vLLM itself (offline `vllm.LLM`, controlled batches).

prefill(b, t): one generate() of b prompts of exactly t token ids with max_tokens=1.
decode(b, t): (generate with max_tokens=1+k minus prefill) / k, prompts of t tokens, k = DECODE_STEPS;
the context grows from t to t+k during those steps, close to t for t >> k.
One SM share per process: the share is whatever MPS gives this process (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE);
on CPU only 100% exists. Run one `muxplan profile` per SM% under MPS to profile several shares.
"""
from __future__ import annotations

import os
import statistics
import time

from muxplan.files import InputError
from profiler.measure import ProbeInfo, ProfileRequest

DECODE_STEPS = 8


class VllmProbe:
    def __init__(self, req: ProfileRequest):
        import torch
        import vllm

        self.sm_pct = int(os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100"))
        if any(sm != self.sm_pct for sm in req.sm_pcts):
            raise InputError(f"--sm: this process runs at {self.sm_pct}% SMs (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); profile one SM% per run")
        on_gpu = torch.cuda.is_available()
        from muxplan.catalog import get_model, kv_bytes_per_token

        max_len = max(max(req.prefill_tokens), max(req.context_tokens)) + DECODE_STEPS + 1
        # explicit KV bytes (room for the largest batch at full length), not a memory fraction
        kv_bytes = 2 * max(req.batches) * max_len * kv_bytes_per_token(get_model(req.model)) // req.tp + 64 * 2**20
        self.llm = vllm.LLM(model=req.model, tensor_parallel_size=req.tp, enforce_eager=not on_gpu, max_model_len=max_len,
                            kv_cache_memory_bytes=kv_bytes,
                            max_num_seqs=max(req.batches), max_num_batched_tokens=max(max_len, max(req.batches) * max(req.prefill_tokens)),
                            seed=0)
        self.vocab = self.llm.get_tokenizer().vocab_size
        self.info = ProbeInfo(engine="vllm", engine_version=vllm.__version__, torch_version=torch.__version__,
                              cuda_version=torch.version.cuda or "", dtype=str(self.llm.llm_engine.model_config.dtype).removeprefix("torch."),
                              sm_mechanism="mps" if "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" in os.environ else "none")

    def _run_ms(self, batch: int, tokens: int, max_tokens: int) -> float:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[(7 * i + 13 * k) % (self.vocab - 1) + 1 for k in range(tokens)]) for i in range(batch)]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        start = time.perf_counter()
        self.llm.generate(prompts, params, use_tqdm=False)
        return (time.perf_counter() - start) * 1e3

    def _median(self, batch: int, tokens: int, max_tokens: int, repeats: int, warmup: int) -> float:
        for _ in range(warmup):
            self._run_ms(batch, tokens, max_tokens)
        return statistics.median(self._run_ms(batch, tokens, max_tokens) for _ in range(max(1, repeats)))

    def prefill_ms(self, sm_pct: int, batch: int, prompt_tokens: int, repeats: int, warmup: int) -> float:
        return self._median(batch, prompt_tokens, 1, repeats, warmup)

    def decode_ms(self, sm_pct: int, batch: int, context_tokens: int, repeats: int, warmup: int) -> float:
        full = self._median(batch, context_tokens, 1 + DECODE_STEPS, repeats, warmup)
        first = self._median(batch, context_tokens, 1, repeats, 0)
        return max(1e-3, (full - first) / DECODE_STEPS)


def make_probe(req: ProfileRequest) -> VllmProbe:
    return VllmProbe(req)
