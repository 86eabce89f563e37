"""TensorProto <-> numpy, without going through Python lists.

Numeric tensors travel as `tensor_content` (raw little-endian bytes): decoding is
`np.frombuffer(...).reshape(shape)` and encoding is `tobytes()`, as TF's MakeNdarray and
KServe do. The typed `*_val` fields are the fallback clients may use (TF's
make_tensor_proto writes `float_val` for small tensors, strings always go in `string_val`).
The client side of optdse uses the same functions to build requests.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import InvalidArgument

# DataType -> (numpy dtype, the TensorProto field that holds typed values).
# Half and bfloat16 travel as their 16-bit patterns in `half_val` (TF's convention).
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_BY_NUMPY: dict[np.dtype, int] = {np_dtype: enum for enum, (np_dtype, _) in _DTYPES.items()}

# Refuse shapes whose element count would not fit in memory before allocating anything.
MAX_ELEMENTS = 1 << 31


def dtype_name(enum: int) -> str:
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"DataType({enum})"


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype for a TF DataType; InvalidArgument for types optdse cannot carry."""
    if enum not in _DTYPES:
        raise InvalidArgument(f"unsupported tensor dtype {dtype_name(enum)}")
    return _DTYPES[enum][0]


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto; InvalidArgument names what is inconsistent."""
    dtype = numpy_dtype(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument("tensor shape must be fully defined, got unknown rank")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise InvalidArgument(f"tensor shape must be fully defined, got {list(shape)}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(f"tensor of shape {list(shape)} has too many elements")
    if proto.tensor_content and dtype != object:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidArgument(
                f"tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} of "
                f"{dtype_name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    return _from_typed_values(proto, dtype, shape, count)


def _from_typed_values(proto: tensor_pb2.TensorProto, dtype: np.dtype, shape: tuple[int, ...], count: int) -> np.ndarray:
    values = getattr(proto, _DTYPES[proto.dtype][1])
    if dtype == object:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if len(flat) == count:
        return flat.reshape(shape)
    # make_tensor_proto stores a constant-filled tensor as one value; TF repeats the last.
    if len(flat) and len(flat) < count:
        return np.concatenate([flat, np.full(count - len(flat), flat[-1], dtype=flat.dtype)]).reshape(shape)
    raise InvalidArgument(f"tensor has {len(flat)} values, shape {list(shape)} needs {count}")


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode a numpy array (numeric as tensor_content, strings as string_val)."""
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, array)
    return proto


def fill_tensor_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Encode `array` into an existing (empty) TensorProto, e.g. a response map entry."""
    array = np.asarray(array)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
        return
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _BY_NUMPY:
        raise InvalidArgument(f"cannot encode numpy dtype {array.dtype}")
    proto.dtype = _BY_NUMPY[dtype]
    proto.tensor_content = np.ascontiguousarray(array, dtype=dtype).tobytes()
