"""Reader for the IDX files MNIST is distributed in.

Format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): two zero bytes, a type code,
the number of dimensions, then one big-endian uint32 per dimension, then the data in C
order, big-endian. Files may be gzip-compressed, as the originals are shipped.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# Type codes from the format description; multi-byte types are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """The file is not a well-formed IDX file; the message says what is wrong."""


def read_idx(path: Path) -> np.ndarray:
    """Return the array stored in the IDX file at `path` (gzip-compressed or not)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw, source=str(path))


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes; raises IdxFormatError naming `source` on malformed input."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{source}: not an IDX file (magic number must start with two zero bytes)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IdxFormatError(f"{source}: unknown IDX type code 0x{type_code:02x}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise IdxFormatError(f"{source}: truncated header ({ndim} dimensions announced)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise IdxFormatError(
            f"{source}: shape {shape} needs {expected} data bytes, file has {len(raw) - header_end}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (used by tests and to make small fixtures)."""
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise IdxFormatError(f"dtype {array.dtype} has no IDX type code")
    big_endian = array.astype(_IDX_DTYPES[codes[native]], copy=False)
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(big_endian).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
