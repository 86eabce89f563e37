"""Model builders: each exports a SavedModel in TF Serving's layout (BASE/VERSION/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serving.models.export import ExportResult

Exporter = Callable[[Path, int, Path | None], ExportResult]


def _mnist(output: Path, version: int, data: Path | None) -> ExportResult:
    from serving.models import mnist

    return mnist.export(output, version, data)


# Imports stay inside each entry so exporting one model never loads another's code.
EXPORTERS: dict[str, Exporter] = {"mnist": _mnist}


def export_model(name: str, output: Path, version: int = 1, data: Path | None = None) -> ExportResult:
    """Export model `name` to output/version; refuses to overwrite an existing version."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(EXPORTERS))}")
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    target = output / str(version)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already holds a model; pick another --version or remove it")
    return EXPORTERS[name](output, version, data)


__all__ = ["EXPORTERS", "ExportResult", "export_model"]
