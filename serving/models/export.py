"""What every model exporter returns, and where it records how the model was made.

The provenance file lives in the version directory's `assets.extra/`, the folder TF Serving
reserves for files that travel with a model but are not part of the graph, so the real
tensorflow_model_server serves these exports unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PROVENANCE_FILE = Path("assets.extra") / "optdse_model.json"


@dataclass(frozen=True)
class ExportResult:
    model: str
    path: Path
    dataset: str
    weights: str
    held_out_accuracy: float | None
    train_examples: int
    test_examples: int


def write_provenance(result: ExportResult) -> None:
    target = result.path / PROVENANCE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(result) | {"path": str(result.path)}
    target.write_text(json.dumps(record, indent=2) + "\n")


def read_provenance(version_dir: Path) -> dict[str, object] | None:
    """The provenance record of an export, or None for models optdse did not make."""
    try:
        return json.loads((version_dir / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def save_servable(module: object, signature: str, function: object, target: Path) -> None:
    """tf.saved_model.save `module` with `function` under its own signature name and as
    `serving_default`, so clients that name no signature get it too (as TF Serving's examples)."""
    import tensorflow as tf

    tf.saved_model.save(module, str(target), signatures={signature: function, "serving_default": function})


def record_untrained(model: str, target: Path, weights: str) -> ExportResult:
    """The provenance of a model exported without training (`weights` says where they came
    from), written next to it."""
    result = ExportResult(model=model, path=target, dataset="none (no training)", weights=weights,
                          held_out_accuracy=None, train_examples=0, test_examples=0)
    write_provenance(result)
    return result
