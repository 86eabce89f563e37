"""What every command prints: the console (stderr, so stdout stays the command's result),
warnings, one-line errors with their exit code, and storage URLs without their password."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped


def warn(text: str) -> None:
    console.print(f"[yellow]warning:[/] {text}")


def fail(command: str, message: str, code: int = 2) -> int:
    print(f"optdse {command}: error: {message}", file=sys.stderr)
    return code


def cannot_open(command: str, storage: str, error: Exception) -> int:
    return fail(command, f"--storage {shown(storage)}: cannot open it ({type(error).__name__}: {error})")


def shown(url: str) -> str:
    """A storage URL as printed: without its password (optdse.storage imports optuna, so lazily)."""
    from optdse.storage import shown_url

    return shown_url(url)


def quiet_optuna() -> None:
    """Optuna logs each trial at INFO; the progress bar and tables say it instead. Set by the
    commands that open studies, not as a side effect of importing an optdse module."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


__all__ = ["cannot_open", "console", "fail", "quiet_optuna", "shown", "warn"]
