"""One error hierarchy for both front ends: each error knows its HTTP status and gRPC code.

Request handling raises these; the gRPC servicer and the REST handler translate them in one
place each (MLServer's `errors.py` pattern), so a status code is never chosen ad hoc.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request that cannot be served; the message goes back to the client verbatim."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServingError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class RequestTooLarge(ServingError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    """Transient: the model is still loading or the batch queue is full; clients may retry."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ServingError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ServingError):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


# TensorFlow's error codes are numbered like gRPC's status codes (both follow absl::StatusCode).
_BY_GRPC_VALUE: dict[int, type[ServingError]] = {
    cls.grpc_code.value[0]: cls for cls in (InvalidArgument, NotFound, RequestTooLarge, Unavailable, Unimplemented)
}


def from_tf_error(code: int, message: str) -> ServingError:
    """Translate a TensorFlow OpError (by its numeric code) raised while running the model."""
    return _BY_GRPC_VALUE.get(code, Internal)(message)
