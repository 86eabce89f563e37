"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) on the stdlib server.

Routes: GET /v1/models/NAME[/versions/N] (status), GET .../metadata, POST .../NAME:predict in
the row ("instances" -> "predictions") and columnar ("inputs" -> "outputs") formats, with
{"b64": ...} for bytes. Errors are {"error": "..."} with the status of the ServingError.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from google.protobuf import json_format

from serving import codecs
from serving.errors import InvalidArgument, NotFound, RequestTooLarge, ServingError, Unimplemented
from serving.model_server import ModelServer, Prediction, parse_version
from serving.servable import Signature

log = logging.getLogger("optdse-serve")

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A reply leaves as soon as it is written, in one piece: headers and body are buffered
    # together (BaseHTTPRequestHandler flushes after each request) and Nagle is off. Written
    # unbuffered with Nagle on, the body waited for the client's delayed ACK of the headers:
    # 40 ms per request on a kept-alive connection.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: RestServer

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature, `format` and all
        log.debug("rest: " + format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    #: Set when a request's body is left unread: the connection then closes, lingering (below).
    body_unread = False

    def _give_up_on_body(self) -> None:
        self.close_connection = self.body_unread = True

    def finish(self) -> None:
        super().finish()  # the reply is out
        if self.body_unread:
            _linger(self.connection)

    def _method_not_allowed(self) -> None:
        self._give_up_on_body()  # any body stays unread
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} is not supported; use GET or POST"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed

    def _serve(self, method: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            status, payload = HTTPStatus.OK, self._route(method, body)
        except ServingError as error:
            status, payload = HTTPStatus(error.http_status), {"error": str(error)}
        except Exception as error:  # a bug must not take the server down
            log.exception("internal error serving %s %s", method, self.path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"}
        self._reply(status, payload)

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._give_up_on_body()
            raise InvalidArgument("POST needs a Content-Length header")
        try:
            length = int(length_header)
        except ValueError:
            self._give_up_on_body()
            raise InvalidArgument(f"bad Content-Length {length_header!r}") from None
        if length > self.server.max_body_bytes or length < 0:
            # The body stays unread, so this connection cannot carry another request.
            self._give_up_on_body()
            raise RequestTooLarge(f"request body of {length} bytes exceeds the limit of {self.server.max_body_bytes}")
        return self.rfile.read(length)

    def _route(self, method: str, body: bytes) -> dict[str, Any]:
        match = _ROUTE.match(self.path.split("?", 1)[0])
        if match is None:
            raise NotFound(f"Malformed request: {method} {self.path}")
        if match["label"] is not None:
            raise InvalidArgument(f"version labels are not configured on this server (got {match['label']!r})")
        name, verb = match["name"], match["verb"]
        version = parse_version(match["version"]) if match["version"] is not None else None
        model = self.server.model
        if method == "GET" and verb is None:
            return _metadata_json(model, name, version) if match["metadata"] else _status_json(model, name, version)
        if method == "POST" and verb == "predict" and not match["metadata"]:
            return _predict_json(model, name, version, body)
        if method == "POST" and verb in ("classify", "regress"):
            raise Unimplemented(f":{verb} is not implemented by optdse-serve; use :predict")
        raise NotFound(f"Malformed request: {method} {self.path}")

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _linger(connection: socket.socket, seconds: float = 2.0) -> None:
    """Half-close, then read and drop what the client is still sending before the close.

    Closing a socket with unread data makes the kernel reset the connection, and the reset
    can destroy the error reply (413) before the client, still sending its body, reads it:
    it saw a broken pipe instead, a few times in a hundred. Web servers linger the same way."""
    deadline = time.monotonic() + seconds
    try:
        connection.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(1 << 16):
                return
    except OSError:
        pass  # reset or timed out: nothing more to save


def _status_json(model: ModelServer, name: str, version: int | None) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state.name,
                "status": {"error_code": "INTERNAL" if status.error else "OK", "error_message": status.error},
            }
            for status in model.status(name, version)
        ]
    }


def _metadata_json(model: ModelServer, name: str, version: int | None) -> dict[str, Any]:
    servable = model.servable(name, version)
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": json_format.MessageToDict(servable.signature_def_map(),
                                                                  preserving_proto_field_name=True)},
    }


def _predict_json(model: ModelServer, name: str, version: int | None, body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise InvalidArgument("the request body must be a JSON object with \"instances\" or \"inputs\"")
    if ("instances" in request) == ("inputs" in request):
        raise InvalidArgument("the request must have exactly one of \"instances\" (row format) or \"inputs\" (columnar format)")
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument("\"signature_name\" must be a string")
    signature = model.servable(name, version).signature(signature_name)
    row_format = "instances" in request
    if row_format:
        inputs = _rows_to_inputs(request["instances"], signature)
    else:
        inputs = _columns_to_inputs(request["inputs"], signature)
    prediction = model.predict(name, version, signature_name, inputs, ())
    return _rows_output(prediction) if row_format else _columns_output(prediction)


def _rows_to_inputs(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("\"instances\" must be a non-empty list")
    if all(isinstance(row, dict) and "b64" not in row for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise InvalidArgument("every instance must name the same inputs")
        return {alias: _to_array([row[alias] for row in instances], signature, alias) for alias in keys}
    return {_only_input(signature): _to_array(instances, signature, _only_input(signature))}


def _columns_to_inputs(columns: Any, signature: Signature) -> dict[str, np.ndarray]:
    if isinstance(columns, dict) and "b64" not in columns:
        return {alias: _to_array(value, signature, alias) for alias, value in columns.items()}
    return {_only_input(signature): _to_array(columns, signature, _only_input(signature))}


def _only_input(signature: Signature) -> str:
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"signature {signature.name} has inputs {{{', '.join(sorted(signature.inputs))}}}; "
            "name each input in the request"
        )
    return next(iter(signature.inputs))


# Which JSON number kinds each numpy kind accepts (ints may feed floats, not the reverse).
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def _to_array(value: Any, signature: Signature, alias: str) -> np.ndarray:
    spec = signature.input(alias)
    dtype = codecs.numpy_dtype(spec.dtype)
    if dtype == object:
        return _strings_array(value, alias)
    try:
        raw = np.asarray(value)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(f"input {alias}: not a rectangular array of numbers ({error})") from None
    if raw.dtype.kind not in _ACCEPTED_KINDS.get(dtype.kind, ""):
        raise InvalidArgument(f"input {alias}: expected numbers for {codecs.dtype_name(spec.dtype)}, got {_describe(raw)}")
    with np.errstate(over="raise", invalid="raise"):
        try:
            return raw.astype(dtype)
        except (FloatingPointError, OverflowError) as error:
            raise InvalidArgument(f"input {alias}: value out of range for {dtype} ({error})") from None


def _describe(array: np.ndarray) -> str:
    return "nested lists of different lengths or mixed types" if array.dtype == object else f"values of type {array.dtype}"


def _strings_array(value: Any, alias: str) -> np.ndarray:
    def decode(item: Any) -> Any:
        if isinstance(item, list):
            return [decode(x) for x in item]
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except binascii.Error as error:
                raise InvalidArgument(f"input {alias}: bad base64 ({error})") from None
        if isinstance(item, str):
            return item.encode()
        raise InvalidArgument(f"input {alias}: expected strings or {{\"b64\": ...}}, got {type(item).__name__}")

    array = np.array(decode(value), dtype=object)
    if not all(isinstance(item, bytes) for item in array.flat):
        raise InvalidArgument(f"input {alias}: nested lists of different lengths")
    return array


def _json_value(alias: str, array: np.ndarray) -> Any:
    if array.dtype == object:
        flat = [
            {"b64": base64.b64encode(v).decode()} if alias.endswith("_bytes") else v.decode("utf-8", "replace")
            for v in array.reshape(-1)
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _rows_output(prediction: Prediction) -> dict[str, Any]:
    outputs = prediction.outputs
    if len(outputs) == 1:
        (alias, array), = outputs.items()
        return {"predictions": _json_value(alias, array)}
    columns = {alias: _json_value(alias, array) for alias, array in outputs.items()}
    rows = {len(column) if isinstance(column, list) else -1 for column in columns.values()}
    if len(rows) != 1 or -1 in rows:
        raise InvalidArgument("outputs differ in their first dimension; use the columnar format (\"inputs\")")
    return {"predictions": [{alias: column[i] for alias, column in columns.items()} for i in range(rows.pop())]}


def _columns_output(prediction: Prediction) -> dict[str, Any]:
    outputs = {alias: _json_value(alias, array) for alias, array in prediction.outputs.items()}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


class RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: ModelServer, max_body_bytes: int) -> None:
        self.address_family = _family(address[0])
        super().__init__(address, _Handler)
        self.model = model
        self.max_body_bytes = max_body_bytes


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_rest(model: ModelServer, host: str, port: int, max_body_bytes: int) -> RestServer:
    server = RestServer((host, port), model, max_body_bytes)
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
