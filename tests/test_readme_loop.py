"""The README's CPU engine loop, run verbatim from the README text; `deploy` is tested elsewhere.

It runs in a scratch folder that mirrors the checkout (symlinked code, a copy of the Makefile and the tiny example), so
`make tiny-models`, `prof/` and `tiny-plan.json` land there and the checkout stays clean. `muxplan` on PATH is this
checkout's code (`python -m muxplan`), not whatever console script is installed.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

MARKER = "The whole loop runs on this CPU machine"


def readme_loop() -> list[str]:
    """The command lines of the first code block after MARKER in README.md."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, f"README.md: no code block after '{MARKER}'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_names_the_whole_loop():
    lines = readme_loop()
    assert lines[0] == "make tiny-models"
    assert [line.split()[1] for line in lines[1:]] == ["profile", "profile", "profile", "solve", "simulate", "deploy"]


def _scratch(tmp_path):
    for name in ("muxplan", "planner", "profiler", "executor", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    os.utime(tmp_path / "pyproject.toml", (0, 0))  # older than .venv/.full: make must not reinstall anything
    (tmp_path / "examples" / "tiny").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "tiny" / "workload.yaml", tmp_path / "examples" / "tiny" / "workload.yaml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "muxplan"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m muxplan "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.slow
def test_readme_cpu_loop_runs_as_written(tmp_path):
    env = _scratch(tmp_path)
    for line in readme_loop():
        if line.startswith("muxplan deploy"):
            continue  # serving is tested with the deploy tests
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "tiny-plan.json").is_file()
    assert "SLO attainment" in proc.stdout  # the last line run is simulate
