"""Shared test helpers: locate ../shared and run the CLI in a subprocess."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    for candidate in (ROOT.parent / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    pytest.skip("../shared is not present")


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "muxplan", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode:
        raise AssertionError(f"muxplan {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc
