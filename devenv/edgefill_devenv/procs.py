"""Stopping child processes the tests, benchmarks and demo started themselves.

Every harness that runs a cache node, the operator or a peer server as a
child process ends it the same way; these two functions are that way, so a
stuck child is always reaped and never left behind.
"""

from __future__ import annotations

import subprocess
from typing import Any

WAIT_SECONDS = 30.0


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = WAIT_SECONDS) -> None:
    """SIGTERM and wait; SIGKILL if it has not exited within ``timeout``. Always reaps."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=timeout)


def kill_process(proc: subprocess.Popen[Any] | None, timeout: float = WAIT_SECONDS) -> None:
    """SIGKILL (no cleanup at all, as when a node dies) and reap."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=timeout)
