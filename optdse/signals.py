"""How optdse's commands stop when asked: SIGINT (Ctrl-C) and SIGTERM (`kill`, systemd, a
container runtime) both unwind the main thread as `Interrupted`, a KeyboardInterrupt, so every
`finally` that stops replicas runs and the trial being measured is recorded as interrupted.

An exception can land on any bytecode, and a few steps must not be cut in half: a write to
the study storage (Optuna's ask and tell) and starting a process or container together with
writing down its id (otherwise `close` and `optdse clean` could not find it). Such a step runs
inside `atomic()`: a signal arriving there is held until the step ends, then raised. A second
signal during the same step raises at once, so a step that hangs (a storage that stopped
answering) never makes the command unstoppable.

The exit code says which signal stopped the command: 128 + its number (130 for Ctrl-C, 143 for
SIGTERM), what a shell reports for a process the signal killed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal, as the exception that unwinds the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number; a KeyboardInterrupt raised by Python's own handler is SIGINT."""
    return 128 + (interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT)


def signal_name(interrupt: KeyboardInterrupt) -> str:
    return signal.Signals(interrupt.signum).name if isinstance(interrupt, Interrupted) else "SIGINT"


class _State:
    depth = 0                  # nesting of atomic() in the main thread
    held: int | None = None    # a signal that arrived inside atomic(), raised when it ends


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.depth and _State.held is None:
        _State.held = signum
        return
    _State.held = None
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise `Interrupted` in the main thread. SIGINT is set even if it
    was ignored: a process started from a shell's background job inherits SIGINT ignored, and a
    study that ignored Ctrl-C would leave its trial half-measured."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)


@contextlib.contextmanager
def atomic() -> Iterator[None]:
    """Hold a stop signal that arrives inside the block until it ends (see the module
    docstring). Only the main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.held is not None:
            signum, _State.held = _State.held, None
            raise Interrupted(signum)


__all__ = ["STOP_SIGNALS", "Interrupted", "atomic", "exit_code", "install", "signal_name"]
