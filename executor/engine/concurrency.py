"""How started jobs execute: one after another (CPU), or concurrently on CUDA streams inside SM partitions.

On a GPU each (model, phase) gets its own stream; with PyTorch green contexts the stream lives in a green
context holding the job's share of the SMs (the in-process counterpart of MPS active-thread percentages),
otherwise plain streams share all SMs. Jobs run on worker threads (kernels release the GIL), one per
stream, and report completion in order of finishing. ``mechanism`` says which was used, for the metrics.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import torch

GREEN_CONTEXT_SM_STEP = 8  # Hopper partitions SMs in groups of 8


class SerialJobs:
    mechanism = "serial"

    def __init__(self):
        self._done: list[tuple[object, list[int], float]] = []

    def submit(self, job, run: Callable[[object], list[int]]) -> None:
        tokens = run(job)
        self._done.append((job, tokens, time.monotonic()))

    def wait(self, timeout_s: float) -> list[tuple[object, list[int], float]]:
        done, self._done = self._done, []
        return done

    def poke(self) -> None:
        """Nothing waits here: jobs finish inside submit."""

    def close(self) -> None:
        pass


class StreamJobs:
    """Concurrent jobs on CUDA streams, one worker thread per (model, phase)."""

    def __init__(self, device: torch.device):
        self.device = device
        props = torch.cuda.get_device_properties(device)
        self.num_sms = props.multi_processor_count
        self.mechanism = "green-context" if self._green_supported() else "cuda-streams"
        self._streams: dict[tuple, torch.cuda.Stream] = {}
        self._contexts: list = []
        self._workers: dict[tuple, queue.Queue] = {}
        self._done: queue.Queue = queue.Queue()

    @staticmethod
    def _green_supported() -> bool:
        try:
            from torch.cuda import green_contexts
        except ImportError:
            return False
        return bool(getattr(green_contexts, "SUPPORTED", False))

    def stream(self, model: str, kind: str, sm_pct: int) -> torch.cuda.Stream:
        key = (model, kind, sm_pct)
        if key not in self._streams:
            if self.mechanism == "green-context" and sm_pct < 100:
                from torch.cuda.green_contexts import GreenContext

                sms = max(GREEN_CONTEXT_SM_STEP, self.num_sms * sm_pct // 100 // GREEN_CONTEXT_SM_STEP * GREEN_CONTEXT_SM_STEP)
                ctx = GreenContext.create(num_sms=sms, device_id=self.device.index or 0)
                self._contexts.append(ctx)
                self._streams[key] = ctx.Stream()
            else:
                self._streams[key] = torch.cuda.Stream(device=self.device)
        return self._streams[key]

    def submit(self, job, run: Callable[[object], list[int]]) -> None:
        key = (job.slot.spec.name, job.kind)
        if key not in self._workers:
            inbox: queue.Queue = queue.Queue()
            self._workers[key] = inbox
            threading.Thread(target=self._work, args=(inbox,), daemon=True, name=f"job-{key[0]}-{key[1]}").start()
        self._workers[key].put((job, run))

    def _work(self, inbox: queue.Queue) -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            job, run = item
            stream = self.stream(job.slot.spec.name, job.kind, job.sm_pct)
            with torch.cuda.stream(stream):
                tokens = run(job)  # sampling ends in .tolist(), which waits for this stream only
            self._done.put((job, tokens, time.monotonic()))

    def wait(self, timeout_s: float) -> list[tuple[object, list[int], float]]:
        """Finished jobs; blocks until one finishes, ``poke`` is called or ``timeout_s`` passes."""
        items = []
        try:
            items.append(self._done.get(timeout=timeout_s))
            while True:
                items.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return [item for item in items if item is not None]

    def poke(self) -> None:
        """Wake ``wait`` (a request arrived: the policy may start a job beside the running ones)."""
        self._done.put(None)

    def close(self) -> None:
        for inbox in self._workers.values():
            inbox.put(None)
