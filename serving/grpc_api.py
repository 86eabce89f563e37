"""TF Serving's gRPC API: PredictionService and ModelService over the shared ModelServer.

Errors are translated in one place (`_answer`): a ServingError becomes its gRPC code with its
message, anything else INTERNAL with the exception named, and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import codecs
from serving.errors import InvalidArgument, ServingError, Unimplemented
from serving.model_server import ModelServer

log = logging.getLogger("optdse-serve")
Request = TypeVar("Request")


def _answer(method: Callable[[Any, Request], Any]) -> Callable[[Any, Request, grpc.ServicerContext], Any]:
    """Run a handler; turn its errors into a gRPC status with a message."""

    @functools.wraps(method)
    def handler(self: Any, request: Request, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request)
        except ServingError as error:
            context.abort(error.grpc_code, str(error))
        except Exception as error:  # noqa: BLE001 - a bug must not take the server down
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    return handler


def _version(model_spec: Any) -> int | None:
    if model_spec.version_label:
        raise InvalidArgument(
            f"version labels are not configured on this server (got {model_spec.version_label!r}); "
            "name a version number or none"
        )
    return model_spec.version.value if model_spec.HasField("version") else None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    @_answer
    def Predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        inputs = {alias: codecs.to_ndarray(tensor) for alias, tensor in request.inputs.items()}
        prediction = self.server.predict(spec.name, _version(spec), spec.signature_name, inputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = prediction.servable.name
        response.model_spec.version.value = prediction.servable.version
        response.model_spec.signature_name = prediction.signature.name
        for alias, array in prediction.outputs.items():
            codecs.fill_tensor_proto(response.outputs[alias], array)
        return response

    @_answer
    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [name for name in fields if name != "signature_def"]
        if unsupported:
            raise InvalidArgument(f"Metadata field {unsupported[0]} is not supported")
        servable = self.server.servable(request.model_spec.name, _version(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_def_map())
        return response

    def _unimplemented(self, what: str) -> None:
        raise Unimplemented(f"{what} is not implemented by optdse-serve; use Predict")

    @_answer
    def Classify(self, request: Any) -> None:
        self._unimplemented("Classify")

    @_answer
    def Regress(self, request: Any) -> None:
        self._unimplemented("Regress")

    @_answer
    def MultiInference(self, request: Any) -> None:
        self._unimplemented("MultiInference")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    @_answer
    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.server.status(request.model_spec.name, _version(request.model_spec)):
            entry = response.model_version_status.add(version=status.version, state=int(status.state))
            if status.error:
                entry.status.error_code = 13  # tensorflow.error.INTERNAL
                entry.status.error_message = status.error
        return response

    @_answer
    def HandleReloadConfigRequest(self, request: Any) -> None:
        raise Unimplemented("HandleReloadConfigRequest is not implemented by optdse-serve (one model per server)")


def start_grpc(server: ModelServer, address: str, max_threads: int, max_message_bytes: int) -> tuple[grpc.Server, int]:
    """Start the gRPC server on `address` (host:port); returns it and the bound port."""
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(server), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(server), grpc_server)
    port = grpc_server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    grpc_server.start()
    return grpc_server, port
