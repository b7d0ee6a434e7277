"""Runs one serving process so that nothing of it outlives it or its supervisor.

``python -m executor.guard FD -- ARGV...`` (the supervisor starts it in a new session, so the guard leads
a process group that the backend and its children join). The guard is a child subreaper, so descendants
orphaned by a crash (vLLM's EngineCore, multiprocessing's resource_tracker) come back to it. It ends the
whole group, TERM then KILL after GRACE_S, when:
- the backend exits (it crashed, or was killed): the guard then exits with the backend's status;
- the read end FD of the supervisor's pipe reaches EOF: the supervisor died, even by kill -9;
- it gets SIGTERM/SIGINT/SIGHUP (the supervisor stopping it).
Only the standard library is imported: it starts in a few tens of milliseconds.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 10.0


def descendants(root: int) -> list[int]:
    """Pids in ``root``'s process group or below it in the tree (from /proc), ``root`` excluded."""
    parent, group = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)], group[int(entry)] = int(fields[1]), int(fields[2])
    found = {p for p, g in group.items() if g == os.getpgid(root)} if root == os.getpid() else set()
    frontier = [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in found]
        found.update(kids)
        frontier = kids
    found.discard(root)
    return sorted(found)


def _signal_all(sig: int) -> int:
    pids = descendants(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def _reap(child: int) -> int | None:
    """Reap every exited child; the backend's exit status once it has exited."""
    status = None
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == child:
            status = os.waitstatus_to_exitcode(code)


def main(argv: list[str]) -> int:
    fd, command = int(argv[0]), argv[argv.index("--") + 1:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    def watch_supervisor():
        while os.read(fd, 1):
            pass
        stop.set()  # EOF: the supervisor is gone

    child = subprocess.Popen(command)  # same group and session as the guard; the pipe is not inherited
    threading.Thread(target=watch_supervisor, daemon=True).start()
    status = None
    while status is None and not stop.wait(0.2):
        status = _reap(child.pid)
    child.returncode = status if status is not None else -1  # we reap ourselves; keep Popen from trying
    if status is None:
        os.kill(child.pid, signal.SIGTERM)
    _signal_all(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        got = _reap(child.pid)
        status = got if got is not None else status
        if not descendants(os.getpid()):
            break
        time.sleep(0.1)
    _signal_all(signal.SIGKILL)
    time.sleep(0.05)
    _reap(child.pid)
    return status if status is not None and status >= 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
