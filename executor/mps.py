"""MPS control daemons of a deployment: one per node, with the deployment's own pipe and log directories.

A daemon is started with ``nvidia-cuda-mps-control -d`` under ``CUDA_MPS_PIPE_DIRECTORY`` /
``CUDA_MPS_LOG_DIRECTORY`` (and the node's GPUs visible), and stopped by writing ``quit`` to its control
program. No sudo is used: a deployment run as root may set exclusive compute mode itself beforehand; any
user can run a daemon with its own pipe directory. A daemon already listening on the pipe directory (another
unit of the same node started it) is used and left to its owner to stop.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
WAIT_S = 15.0


@dataclass
class MpsDaemon:
    pipe_dir: Path
    log_dir: Path
    devices: tuple[str, ...]
    owned: bool = field(default=False, compare=False)

    def env(self) -> dict[str, str]:
        env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return env

    def running(self) -> bool:
        return (self.pipe_dir / "control").exists()

    def start(self) -> None:
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.running():
            return
        if shutil.which(CONTROL) is None:
            raise RuntimeError(f"{CONTROL} is not on PATH: MPS needs the NVIDIA driver's MPS tools on this host")
        subprocess.run([CONTROL, "-d"], env={**os.environ, **self.env()}, check=True, timeout=WAIT_S, capture_output=True)
        self.owned = True
        if not _wait(self.running, True):
            raise RuntimeError(f"MPS daemon did not open {self.pipe_dir / 'control'}; see {self.log_dir / 'control.log'}")

    def stop(self) -> None:
        if not self.owned or not self.running():
            return
        subprocess.run([CONTROL], input="quit\n", text=True, env={**os.environ, **self.env()}, timeout=WAIT_S, capture_output=True)
        _wait(self.running, False)
        self.owned = False


def _wait(probe, want: bool) -> bool:
    deadline = time.monotonic() + WAIT_S
    while probe() != want:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def daemons_for(envs: list[dict[str, str]]) -> list[MpsDaemon]:
    """One daemon per MPS pipe directory named in the processes' environments, seeing their GPUs."""
    by_pipe: dict[str, tuple[str, list[str]]] = {}
    for env in envs:
        pipe = env.get("CUDA_MPS_PIPE_DIRECTORY")
        if not pipe:
            continue
        log, devices = by_pipe.setdefault(pipe, (env["CUDA_MPS_LOG_DIRECTORY"], []))
        for d in env.get("CUDA_VISIBLE_DEVICES", "").split(","):
            if d and d not in devices:
                devices.append(d)
    return [MpsDaemon(Path(pipe), Path(log), tuple(devices)) for pipe, (log, devices) in by_pipe.items()]


def local_gpu_uuids() -> list[str]:
    """UUIDs of this host's GPUs in index order (nvidia-smi); empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    rows = [line.split(",") for line in out.stdout.splitlines() if "," in line]
    return [uuid.strip() for _, uuid in sorted(rows, key=lambda r: int(r[0]))]
