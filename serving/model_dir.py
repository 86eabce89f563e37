"""TF Serving's model directory layout: BASE/VERSION/saved_model.pb, VERSION an integer."""

from __future__ import annotations

from pathlib import Path


def find_versions(base_path: Path) -> list[int]:
    """Integer-named version directories holding a SavedModel, ascending."""
    if not base_path.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in base_path.iterdir()
        if child.name.isdigit() and (child / "saved_model.pb").exists()
    )
