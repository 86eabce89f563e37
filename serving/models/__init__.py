"""Model builders: each exports a SavedModel in TF Serving's layout (BASE/VERSION/).

The seed's four servables. Only MNIST is trained (on data that ships with scikit-learn);
the other three are random-initialised because no weights or data can be downloaded here,
and their latency depends on input shapes, not on weight values. Each records how it was
made in the export's assets.extra/optdse_model.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.models.export import ExportResult


@dataclass(frozen=True)
class Exporter:
    """How to build one model; `source` names what the optional input path is, if any."""

    build: Callable[[Path, int, Path | None], ExportResult]
    source: str | None  # "data" (a training set), "weights" (a weights file) or None


def _mnist(output: Path, version: int, data: Path | None) -> ExportResult:
    from serving.models import mnist

    return mnist.export(output, version, data)


def _inception(output: Path, version: int, weights: Path | None) -> ExportResult:
    from serving.models import inception

    return inception.export(output, version, weights)


def _nmt(output: Path, version: int, _: Path | None) -> ExportResult:
    from serving.models import nmt

    return nmt.export(output, version)


def _deepspeech(output: Path, version: int, _: Path | None) -> ExportResult:
    from serving.models import deepspeech

    return deepspeech.export(output, version)


# Imports stay inside each entry so exporting one model never loads another's code.
EXPORTERS: dict[str, Exporter] = {
    "mnist": Exporter(_mnist, source="data"),
    "inception": Exporter(_inception, source="weights"),
    "nmt": Exporter(_nmt, source=None),
    "deepspeech": Exporter(_deepspeech, source=None),
}


def export_model(name: str, output: Path, version: int = 1, data: Path | None = None,
                 weights: Path | None = None) -> ExportResult:
    """Export model `name` to output/version; refuses to overwrite an existing version and
    an input path the model does not take (MNIST takes --data, Inception --weights)."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(EXPORTERS))}")
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    exporter = EXPORTERS[name]
    for flag, given in (("data", data), ("weights", weights)):
        if given is not None and exporter.source != flag:
            takers = [n for n, e in EXPORTERS.items() if e.source == flag]
            raise ValueError(f"--{flag}: model {name} takes none; only {', '.join(takers)} does")
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    target = output / str(version)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already holds a model; pick another --version or remove it")
    return exporter.build(output, version, data if exporter.source == "data" else weights)


__all__ = ["EXPORTERS", "ExportResult", "Exporter", "export_model"]
