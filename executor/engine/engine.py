"""The engine loop of one unit: models, the shared KV pool, the scheduler and the job executor.

``add_request`` may be called from any thread; ``step`` (or ``serve`` on a thread of its own) drains new
requests, lets the policy start jobs, executes them and applies their tokens: detokenising incrementally,
stopping on EOS, ``max_tokens``, the context limit or a stop string, and telling each request's listener.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from executor.engine.concurrency import SerialJobs, StreamJobs
from executor.engine.kv_pool import BlockManager, KvPool
from executor.engine.model import load_model
from executor.engine.runner import ModelRunner
from executor.engine.sampler import SamplingParams
from executor.engine.scheduler import Job, Scheduler, SlotSpec, UnitSpec
from executor.engine.sequence import Sequence
from muxplan.catalog import get_model
from muxplan.files import InputError
from muxplan.schema import Plan
from unitsched.config import block_elems as unit_block_elems
from unitsched.policy import Policy, get_policy


@dataclass(frozen=True)
class ServedModel:
    name: str
    ref: str  # catalog model (random weights) or a local Hugging Face folder
    kv_bytes: int
    prefill_sm_pct: int = 100
    decode_sm_pct: int = 100
    max_num_seqs: int = 256
    rate_rps: float = 1.0


def served_models(plan: Plan, unit_id: int) -> list[ServedModel]:
    units = [u for u in plan.units if u.id == unit_id]
    if not units:
        raise InputError(f"--unit: the plan has no unit {unit_id} (units: {', '.join(str(u.id) for u in plan.units)})")
    return [ServedModel(m.name, m.model, m.kv_bytes, m.prefill_sm_pct, m.decode_sm_pct, m.max_num_seqs, m.rate_rps or 1.0)
            for m in units[0].models]


Listener = Callable[[Sequence, str, bool], None]  # (sequence, new text, finished)


class EngineDead(RuntimeError):
    """The engine loop has failed; no request can be served until the process is restarted."""


class Engine:
    def __init__(self, models: list[ServedModel], policy: str | Policy = "adbs", device: str = "cpu", dtype: torch.dtype | None = None,
                 seed: int = 0, block_elems: int | None = None, cpu_threads: int | None = 1,
                 clock: Callable[[], float] = time.monotonic, jobs=None, log_events: bool = False):
        """``clock`` and ``jobs`` (an executor like ``SerialJobs``) replace wall time and execution, e.g. to replay a
        trace on the cost model's timing; ``log_events`` keeps the scheduler's job log in ``event_log``."""
        if not models:
            raise InputError("unit: no model to serve")
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        if not on_gpu and cpu_threads:
            torch.set_num_threads(cpu_threads)  # small steps: OpenMP spin-waits cost more than a second thread gains
        self.dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        self.models = {m.name: m for m in models}
        self.specs = {m.name: get_model(m.ref) for m in models}
        self.tokenizers = {m.name: _tokenizer(m.ref) for m in models}
        self.eos_ids = {name: _eos_ids(self.models[name].ref, tok) for name, tok in self.tokenizers.items()}
        block_elems = block_elems or unit_block_elems([s.head_dim for s in self.specs.values()])
        probe_bytes = block_elems * torch.empty((), dtype=self.dtype).element_size()
        self.pool = KvPool(sum(m.kv_bytes for m in models) // probe_bytes, block_elems, self.dtype, self.device)
        self.blocks = BlockManager(self.pool.num_blocks)
        self.runners: dict[str, ModelRunner] = {}
        slots = []
        for i, m in enumerate(models):
            spec = self.specs[m.name]
            per_logical = spec.num_layers * spec.num_kv_heads
            self.blocks.add_model(m.name, per_logical)
            weights = Path(m.ref) if Path(m.ref).is_dir() else None
            model = load_model(spec, weights, self.dtype, self.device, seed=seed + i)
            self.runners[m.name] = ModelRunner(m.name, model, self.pool.view(spec.head_dim), self.blocks, self.device)
            slots.append(SlotSpec(i, m.name, m.prefill_sm_pct, m.decode_sm_pct, m.max_num_seqs, m.rate_rps,
                                  self.pool.block_tokens(spec.head_dim), per_logical * self.pool.block_bytes))
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        unit = UnitSpec(tuple(slots), self.pool.num_blocks * self.pool.block_bytes)
        self.event_log: list | None = [] if log_events else None
        self.scheduler = Scheduler(unit, self.blocks, self.policy.initial_quotas(unit), self.policy.sm_cap_parts, self._finished,
                                   self.event_log)
        self.jobs = jobs or (StreamJobs(self.device) if on_gpu else SerialJobs())
        self.clock = clock
        self.quota_history: list[tuple[float, tuple[int, ...]]] = [(0.0, tuple(s.quota_bytes for s in self.scheduler.slots))]
        self.seed = seed
        self._ids = itertools.count()
        self._inbox: list[tuple[str, object]] = []
        self._wake = threading.Condition()
        self._listeners: dict[int, Listener] = {}
        self._in_flight = 0
        self._aborted: set[int] = set()
        self._live: dict[int, Sequence] = {}  # accepted and not finished: told "error" if the loop dies
        self.failure: str | None = None  # why the loop died; set once, never cleared
        self.fail_after_jobs: int | None = None  # fault injection (server --fail-after-jobs): the loop raises after this many jobs
        self.t0 = clock()
        self._next_adapt = self.policy.adapt_period_s
        self.finished: list[Sequence] = []  # for metrics and benchmarks; bounded by the caller draining it
        self.num_steps = {"prefill": 0, "decode": 0}

    # ------------------------------------------------------------ requests (any thread)
    def now(self) -> float:
        return self.clock() - self.t0

    def max_context(self, model: str) -> int:
        """Longest sequence the model's position limit and initial KV quota can hold."""
        slot = self.scheduler.by_name[model]
        by_kv = min(slot.quota_bytes, self.scheduler.pool_bytes) // slot.bb * slot.spec.block_tokens
        return min(self.specs[model].max_position_embeddings, by_kv)

    def check_request(self, model: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """InputError for anything the loop cannot serve: bad requests must never reach it."""
        if model not in self.models:
            raise InputError(f"model: '{model}' is not served here ({', '.join(self.models)})")
        vocab, limit = self.specs[model].vocab_size, self.max_context(model)
        if not prompt_ids:
            raise InputError("prompt: empty (no tokens)")
        if len(prompt_ids) + 1 > limit:
            raise InputError(f"prompt: {len(prompt_ids)} tokens leave no room for output within this model's {limit}-token context")
        if any(type(t) is not int or not 0 <= t < vocab for t in prompt_ids):
            raise InputError(f"prompt: token ids must be in 0..{vocab - 1}")
        p = params
        if type(p.max_tokens) is not int or p.max_tokens < 1:
            raise InputError("max_tokens: must be at least 1")
        if not (math.isfinite(p.temperature) and 0.0 <= p.temperature) or not (math.isfinite(p.top_p) and 0.0 < p.top_p <= 1.0):
            raise InputError("temperature/top_p: must be finite, temperature >= 0 and 0 < top_p <= 1")
        if p.top_k < 0 or (p.seed is not None and not -(2**63) <= p.seed < 2**63):
            raise InputError("top_k/seed: top_k must be >= 0 and seed a signed 64-bit integer")

    def add_request(self, model: str, prompt_ids: list[int], params: SamplingParams, listener: Listener | None = None) -> Sequence:
        """Queue a request (EngineDead once the loop has failed, InputError for a request it cannot serve)."""
        if self.failure is not None:
            raise EngineDead(self.failure)
        self.check_request(model, prompt_ids, params)
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator().manual_seed(self.seed + next(self._ids))
        seq = Sequence(next(self._ids), model, list(prompt_ids), params, self.now(), generator=gen)
        with self._wake:
            if listener is not None:
                self._listeners[seq.id] = listener
            self._live[seq.id] = seq
            self._inbox.append(("add", seq))
            self._in_flight += 1
            self._wake.notify()
        self.jobs.poke()
        return seq

    def abort(self, seq_id: int) -> None:
        with self._wake:
            self._inbox.append(("abort", seq_id))
            self._wake.notify()

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------ the loop
    def step(self, timeout_s: float = 0.0) -> int:
        """Admit, schedule, execute, apply; returns the number of jobs completed."""
        with self._wake:
            inbox, self._inbox = self._inbox, []
        for kind, item in inbox:
            if kind == "add":
                self.scheduler.add(item)
            elif not self.scheduler.abort(item):
                self._aborted.add(item)  # inside a running job: ends when its token arrives
        now = self.now()
        if self._next_adapt is not None and now >= self._next_adapt:
            self.policy.adapt(self.scheduler, now)
            self.quota_history.append((now, tuple(s.quota_bytes for s in self.scheduler.slots)))
            self._next_adapt = now + self.policy.adapt_period_s
        self.policy.schedule(self.scheduler, now)
        while self.scheduler.started:
            self.jobs.submit(self.scheduler.started.popleft(), self._run_job)
        done = self.jobs.wait(timeout_s)
        for job, tokens, end in done:
            self.scheduler.finish(job, tokens, end - self.t0, self._accept)
            self.num_steps[job.kind] += 1
        if self.fail_after_jobs is not None and sum(self.num_steps.values()) >= self.fail_after_jobs:
            raise RuntimeError(f"injected fault after {self.fail_after_jobs} jobs")
        return len(done)

    def _run_job(self, job: Job) -> list[int]:
        return self.runners[job.slot.spec.name].step(job.kind, job.seqs)

    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.num_unfinished() > 0

    def run_until_idle(self, max_steps: int = 10**9) -> None:
        for _ in range(max_steps):
            if not self.has_work():
                return
            self.step(timeout_s=0.05)

    def serve(self, stop: threading.Event) -> None:
        """Run the loop until ``stop`` is set, sleeping while there is nothing to do. If a step raises, the
        engine is dead: ``failure`` says why, every accepted request ends with reason "error", and the
        exception propagates (the server then fails /health and exits so its supervisor restarts it)."""
        try:
            while not stop.is_set():
                with self._wake:
                    if not self._inbox and self.scheduler.num_unfinished() == 0:
                        wait = None if self._next_adapt is None else max(0.0, self._next_adapt - self.now())
                        self._wake.wait(timeout=min(wait, 1.0) if wait is not None else 1.0)
                self.step(timeout_s=0.05)
        except BaseException as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.jobs.close()

    def fail(self, why: str) -> None:
        """Mark the engine dead and end every accepted request with finish reason "error"."""
        with self._wake:
            self.failure = self.failure or why
            live, self._live = list(self._live.values()), {}
            listeners, self._listeners = self._listeners, {}
            self._in_flight = 0
        for seq in live:
            seq.finish_reason = seq.finish_reason or "error"
            listener = listeners.get(seq.id)
            if listener is not None:
                listener(seq, "", True)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    # ------------------------------------------------------------ tokens
    def _accept(self, seq: Sequence, token: int, now: float) -> str | None:
        seq.output_ids.append(token)
        if seq.first_token_s is None:
            seq.first_token_s = now
        if seq.id in self._aborted:
            self._aborted.discard(seq.id)
            return "abort"
        reason = None
        if token in self.eos_ids[seq.model] and not seq.params.ignore_eos:
            reason = "stop"
        elif len(seq.output_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_context(seq.model):
            reason = "length"
        delta, stopped = self._detokenize(seq, final=reason is not None)
        if stopped:
            reason = "stop"
        listener = self._listeners.get(seq.id)
        if listener is not None and delta:
            listener(seq, delta, False)
        return reason

    def _detokenize(self, seq: Sequence, final: bool) -> tuple[str, bool]:
        """New text to emit; holds back a partial UTF-8 character and a possible stop-string prefix."""
        tok = self.tokenizers[seq.model]
        if tok is None:
            return "", False
        ids = seq.output_ids[:-1] if seq.output_ids[-1] in self.eos_ids[seq.model] else seq.output_ids
        text = tok.decode(ids, skip_special_tokens=True)
        for stop in seq.params.stop:
            at = text.find(stop, max(0, len(seq.text) - len(stop)))
            if at >= 0:
                delta, seq.text = text[len(seq.text):at], text[:at]
                return delta, True
        if not final:
            if text.endswith("\ufffd"):
                text = text[:-1]
            hold = max((len(s) - 1 for s in seq.params.stop), default=0)
            text = text[:max(len(seq.text), len(text) - hold)]
        delta, seq.text = text[len(seq.text):], text
        return delta, False

    def _finished(self, seq: Sequence, reason: str) -> None:
        self.runners[seq.model].forget(seq.id)
        seq.finish_reason = reason
        seq.finish_s = self.now()
        self.finished.append(seq)
        with self._wake:
            if self._live.pop(seq.id, None) is None:
                return  # already ended by fail()
            self._in_flight -= 1
            listener = self._listeners.pop(seq.id, None)
        if listener is not None:
            listener(seq, "", True)

    # ------------------------------------------------------------ introspection
    def usage(self) -> dict[str, dict[str, float]]:
        """Per model: queued, running, KV blocks held and quota (physical blocks)."""
        out = {}
        for slot in self.scheduler.slots:
            per = self.blocks.blocks_per_logical(slot.spec.name)
            out[slot.spec.name] = {"queued": len(slot.queue), "running": len(slot.running) + len(slot.pending) + len(slot.in_prefill),
                                   "kv_blocks_used": self.blocks.used_blocks[slot.spec.name],
                                   "kv_blocks_quota": slot.quota_bytes // slot.bb * per}
        return out


def _tokenizer(ref: str):
    path = Path(ref)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _eos_ids(ref: str, tok) -> set[int]:
    ids: set[int] = set()
    config = Path(ref) / "generation_config.json"
    if config.exists():
        import json

        eos = json.loads(config.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok is not None and tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids
