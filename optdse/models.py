"""The models optdse can serve: one registry, the seed's four built-ins and any user SavedModel.

A `Model` is what every command passes around: the name the server serves (and each request
names in its ModelSpec), where its SavedModel is, which signature the requests call, where
the requests come from, and what a study's `file_size` counts for it.

- A built-in (`mnist`, `inception`, `nmt`, `deepspeech`) is exported to results/models/NAME
  on first use, in its own process (`optdse model export`): it needs TensorFlow, which the
  harness itself never imports (see optdse/protos.py). optdse/payloads.py builds its requests.
- A user's model is a TF Serving base path (version folders inside). Its requests are the
  lines of a request file (TF Serving REST predict bodies) or, without one, inputs generated
  from its signature. Its `file_size` is rows per request, or the size of another input axis
  (`size_axis`, e.g. a sequence length).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

RESULTS = Path("results")
#: TF Serving's default signature key.
DEFAULT_SIGNATURE = "serving_default"

#: The seed's four servables (serving/models/) and what `file_size` counts for each.
BUILTINS: dict[str, str] = {
    "mnist": "images per request",
    "inception": "JPEG edge in pixels (one image per request)",
    "nmt": "tokens in the source sentence",
    "deepspeech": "seconds of 16 kHz audio",
}
#: A name a server can serve and a REST URL can carry (/v1/models/NAME:predict).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ModelError(ValueError):
    """A user's model, its signature or its request file does not fit; str() is one line
    naming the file and what is wrong. `key` is the model block's field that gave it (path,
    name, signature, request_file, size_axis): the caller names it as a key or an option."""

    def __init__(self, message: str, key: str = "path") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Model:
    """One model as the harness knows it. `base_path` is None for a built-in (exported on first
    use by `ensure_model`); set, it is a user's model and the other fields apply."""

    name: str
    base_path: Path | None = None
    signature: str = DEFAULT_SIGNATURE
    request_file: Path | None = None
    size_axis: int = 0

    @property
    def builtin(self) -> bool:
        return self.base_path is None

    @property
    def unit(self) -> str:
        """What `file_size` counts for this model."""
        if self.builtin:
            return BUILTINS[self.name]
        return "rows per request" if self.size_axis == 0 else f"size of input axis {self.size_axis} (one row per line)"

    def describe(self) -> str:
        if self.builtin:
            return self.name
        requests = f"requests from {self.request_file}" if self.request_file else "inputs generated from its signature"
        return f"{self.name} ({self.base_path}, signature {self.signature}, {requests})"

    def record(self) -> dict[str, object]:
        """What a trial records of its model (user attrs)."""
        if self.builtin:
            return {"model": self.name, "model_path": "built-in"}
        return {"model": self.name, "model_path": str(self.base_path) if self.base_path else "built-in",
                "signature": self.signature, "request_file": str(self.request_file or ""),
                "size_axis": self.size_axis}


def builtin(name: str) -> Model:
    if name not in BUILTINS:
        raise ModelError(f"no built-in model {name!r}; built-ins: {', '.join(BUILTINS)}")
    return Model(name)


def user_model(path: Path, name: str | None = None, signature: str | None = None, request_file: Path | None = None,
               size_axis: int = 0) -> Model:
    """A user's SavedModel at base path `path`, checked: its signature exists, the request
    file fits it, `size_axis` is an axis its inputs can grow. Raises ModelError (with `key`
    set to the field that is wrong) before anything is deployed."""
    path = path.resolve()
    name = name or path.name
    if not NAME_PATTERN.fullmatch(name):
        raise ModelError(f"{name!r} cannot be served under that name: use letters, digits, '_', '.' and '-'",
                         key="name")
    model = Model(name, path, signature or DEFAULT_SIGNATURE, request_file.resolve() if request_file else None,
                  size_axis)
    check(model)
    return model


def check(model: Model) -> None:
    """Everything about a user's model that can be wrong, found now: raises ModelError."""
    if model.builtin:
        return
    from optdse.request_file import check_size_axis, read_request_file  # protobuf modules: only when needed
    from optdse.savedmodel import read_signature

    assert model.base_path is not None
    signature = read_signature(model.base_path, model.signature)
    check_size_axis(signature, model.size_axis)
    if model.request_file is not None:
        read_request_file(model.request_file, signature, model.size_axis)


def resolve(value: str, signature: str | None = None, request_file: Path | None = None,
            size_axis: int | None = None) -> Model:
    """`optdse measure --model NAME_OR_PATH`: a built-in's name, else a model base path."""
    if value in BUILTINS and not (signature or request_file or size_axis):
        return builtin(value)
    path = Path(value)
    if not path.exists():
        raise ModelError(f"{value}: not a built-in model ({', '.join(BUILTINS)}) and no such folder", key="path")
    return user_model(path, signature=signature, request_file=request_file, size_axis=size_axis or 0)


def model_base_path(model: str, results: Path = RESULTS) -> Path:
    return results / "models" / model


def ensure_model(model: Model | str, console: Console, results: Path = RESULTS) -> Path:
    """The model's base path (DIR with version subdirectories); a built-in (which may be given
    by name) is exported there on first use."""
    model = builtin(model) if isinstance(model, str) else model
    if model.base_path is not None:
        return model.base_path
    base = model_base_path(model.name, results)
    if any(p.name.isdigit() for p in base.glob("*")):
        return base.resolve()
    command = [sys.executable, "-m", "optdse.cli", "model", "export", model.name, "--output", str(base)]
    with console.status(f"exporting the {model.name} model to {base} (first use only) ..."):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"exporting {model.name} failed: {done.stderr.strip()[-2000:]}")
    console.print(done.stdout.strip())
    return base.resolve()


__all__ = ["BUILTINS", "DEFAULT_SIGNATURE", "RESULTS", "Model", "ModelError", "builtin", "check", "ensure_model", "model_base_path",
           "resolve", "user_model"]
