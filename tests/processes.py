"""Stopping the processes a test session started: by the pid it holds, never by name."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], sig: signal.Signals, grace_s: float) -> int:
    """Stop a process this test session started, by its pid: `sig`, then SIGKILL after
    `grace_s`. Returns its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


__all__ = ["stop_process"]
