"""Where the harness finds a model's SavedModel, exporting it on first use.

The export runs `optdse model export` in its own process: it needs TensorFlow, which the
harness itself never imports (see optdse/protos.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

RESULTS = Path("results")


def model_base_path(model: str, results: Path = RESULTS) -> Path:
    return results / "models" / model


def ensure_model(model: str, console: Console, results: Path = RESULTS) -> Path:
    """The model's base path (DIR with version subdirectories), exported if missing."""
    base = model_base_path(model, results)
    if any(p.name.isdigit() for p in base.glob("*")):
        return base.resolve()
    command = [sys.executable, "-m", "optdse.cli", "model", "export", model, "--output", str(base)]
    with console.status(f"exporting the {model} model to {base} (first use only) ..."):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"exporting {model} failed: {done.stderr.strip()[-2000:]}")
    console.print(done.stdout.strip())
    return base.resolve()


__all__ = ["RESULTS", "ensure_model", "model_base_path"]
