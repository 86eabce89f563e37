"""A user's requests: a file of TF Serving REST predict bodies, one JSON object a line.

Each line is what a TF Serving user already sends: `{"instances": [...]}` (row format: a list
of rows, each a value or an object of named inputs) or `{"inputs": ...}` (columnar: a value,
or an object of named inputs, each with the rows on its first axis), optionally with
`"signature_name"`, and bytes as `{"b64": "..."}`. The file is read once, checked against the
model's signature (every input there, no other, each dtype and fixed dimension as the
signature says) and kept as numpy arrays, from which optdse/payloads.py builds each trial's
requests in either protocol. A mistake is one ModelError line naming the file, the line and
the input.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from optdse.models import ModelError
from optdse.protos import protos
from optdse.savedmodel import InputSpec, Signature, numpy_dtypes

#: Lines read from a request file: enough variety for any trial, bounded memory.
MAX_LINES = 10_000


@dataclass(frozen=True)
class RequestLine:
    """One line's inputs as arrays (rows on axis 0, except rank-0 columnar inputs)."""

    number: int
    inputs: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return max((a.shape[0] for a in self.inputs.values() if a.ndim), default=1)


@dataclass(frozen=True)
class RequestFile:
    """A checked request file: its lines, and the REST form they were written in (kept when
    optdse sends them over REST): row or columnar, inputs named or the one input bare, and
    which inputs carried bytes as {"b64": ...}."""

    path: Path
    lines: tuple[RequestLine, ...]
    row_format: bool
    named: bool
    b64: frozenset[str]

    @property
    def rows(self) -> int:
        return sum(line.rows for line in self.lines)


def check_size_axis(signature: Signature, size_axis: int) -> None:
    """`size_axis` must be an axis of variable size in at least one input."""
    if size_axis < 0:
        raise ModelError(f"size_axis must be >= 0 (got {size_axis})", key="size_axis")
    growable = [alias for alias, spec in signature.inputs.items()
                if spec.shape is None or (len(spec.shape) > size_axis and spec.shape[size_axis] < 0)]
    if not growable:
        raise ModelError(f"size_axis {size_axis}: no input of signature {signature.name!r} has a variable-size axis "
                         f"{size_axis} (inputs: {signature.describe()})", key="size_axis")


@lru_cache(maxsize=8)
def read_request_file(path: Path, signature: Signature, size_axis: int = 0) -> RequestFile:
    """Read and check `path` against `signature`; ModelError (key request_file) if it does not fit."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})",
                         key="request_file") from None
    lines: list[RequestLine] = []
    forms: set[tuple[bool, bool]] = set()
    b64: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) == MAX_LINES:
            break
        where = f"{path}: line {number}"
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ModelError(f"{where}: not JSON ({error.msg} at column {error.colno}); a request file has one "
                             "REST predict body per line", key="request_file") from None
        inputs, row_format, named = _inputs(body, signature, where, b64)
        forms.add((row_format, named))
        lines.append(RequestLine(number, inputs))
    if not lines:
        raise ModelError(f"{path}: holds no requests (one REST predict body per line)", key="request_file")
    _check_same_rows(lines, path)
    row_format, named = sorted(forms)[0]
    return RequestFile(path, tuple(lines), row_format, named, frozenset(b64))


def _inputs(body: Any, signature: Signature, where: str, b64: set[str]) -> tuple[dict[str, np.ndarray], bool, bool]:
    """One predict body's inputs as checked arrays, and its form (row format?, named?)."""
    err = _error(where)
    if not isinstance(body, dict):
        raise err("must be a JSON object with \"instances\" or \"inputs\"")
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown or ("instances" in body) == ("inputs" in body):
        raise err("must have exactly one of \"instances\" (row format) or \"inputs\" (columnar), and may have "
                  "\"signature_name\"" + (f" (got key {unknown[0]!r})" if unknown else ""))
    named_signature = body.get("signature_name", signature.name)
    if named_signature != signature.name:
        raise err(f"signature_name {named_signature!r} is not the model's signature {signature.name!r} "
                  "(set the model's signature to use it)")
    only = next(iter(signature.inputs)) if len(signature.inputs) == 1 else None
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise err("\"instances\" must be a non-empty list of rows")
        named = all(isinstance(row, dict) and "b64" not in row for row in rows)
        if named:
            keys = set(rows[0])
            if any(set(row) != keys for row in rows):
                raise err("every row of \"instances\" must name the same inputs")
            values = {alias: [row[alias] for row in rows] for alias in keys}
        elif only is None:
            raise err(f"rows of \"instances\" must be objects naming the inputs ({signature.describe()})")
        else:
            values = {only: rows}
    else:
        columns = body["inputs"]
        named = isinstance(columns, dict) and "b64" not in columns
        if named:
            values = dict(columns)
        elif only is None:
            raise err(f"\"inputs\" must be an object naming the inputs ({signature.describe()})")
        else:
            values = {only: columns}
    for alias in values:
        if alias not in signature.inputs:
            raise err(f"input {alias!r}: signature {signature.name!r} has no such input; it has {signature.describe()}")
    missing = sorted(set(signature.inputs) - set(values))
    if missing:
        raise err(f"input {missing[0]!r} is missing; signature {signature.name!r} needs {signature.describe()}")
    arrays = {alias: _array(value, signature.inputs[alias], err, b64) for alias, value in values.items()}
    return arrays, "instances" in body, named


def _error(where: str) -> Any:
    def make(message: str) -> ModelError:
        return ModelError(f"{where}: {message}", key="request_file")

    return make


def _array(value: Any, spec: InputSpec, err: Any, b64: set[str]) -> np.ndarray:
    """`value` (nested JSON lists) as an array of `spec`'s dtype and shape, or err(...)."""
    wants = f"the signature wants {spec.describe()}"
    if spec.dtype == protos().types_pb2.DT_STRING:
        try:
            decoded = _bytes(value, spec.alias, b64)
            array = np.array(decoded, dtype=object)
            if array.ndim and isinstance(array.flat[0], list):  # ragged: numpy made a list of lists
                raise ValueError
        except (ValueError, binascii.Error, TypeError):
            raise err(f"input {spec.alias!r}: expected strings or {{\"b64\": ...}} in a rectangular array; "
                      f"{wants}") from None
    else:
        try:
            raw = np.array(value)
        except ValueError:
            raise err(f"input {spec.alias!r}: rows of different shapes; {wants}") from None
        target = numpy_dtypes()[spec.dtype]
        ok = (raw.dtype.kind == "b" if target.kind == "b" else
              raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and raw.size and np.all(np.mod(raw, 1) == 0))
              if target.kind in "iu" else raw.dtype.kind in "iuf")
        if raw.size == 0 and raw.ndim:
            ok = True
        if not ok:
            kinds = {"b": "booleans", "i": "integers", "u": "integers", "f": "fractional numbers", "U": "strings"}
            got = kinds.get(raw.dtype.kind, "mixed values")
            raise err(f"input {spec.alias!r}: got {got}; {wants}")
        array = raw.astype(target)
    if spec.shape is not None:
        fits = array.ndim == len(spec.shape) and all(want < 0 or want == got
                                                     for want, got in zip(spec.shape, array.shape))
        if not fits:
            raise err(f"input {spec.alias!r}: shape {list(array.shape)}; {wants}")
    return array


def _bytes(value: Any, alias: str, b64: set[str]) -> Any:
    if isinstance(value, list):
        return [_bytes(item, alias, b64) for item in value]
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        b64.add(alias)
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(type(value).__name__)


def _check_same_rows(lines: list[RequestLine], path: Path) -> None:
    """Within one line, every input with rows must have as many: they are one batch."""
    for line in lines:
        counts = {a.shape[0] for a in line.inputs.values() if a.ndim}
        if len(counts) > 1:
            raise ModelError(f"{path}: line {line.number}: inputs have different numbers of rows "
                             f"({', '.join(map(str, sorted(counts)))}); a request is one batch", key="request_file")


__all__ = ["MAX_LINES", "RequestFile", "RequestLine", "check_size_axis", "read_request_file"]
