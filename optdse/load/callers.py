"""How the load generator talks to a replica: one small client class per protocol.

Each opens its connections before the clock starts and gives every load thread a caller; the
timing loop in optdse/load/worker.py is the same for both.

- gRPC (`GrpcClient`): one channel per target, shared by a worker's threads (gRPC multiplexes
  calls), each request sent as pre-serialized bytes (bytes in, bytes out: no protobuf work
  per request but the one-row check).
- REST (`RestClient`): TF Serving's JSON predict, every thread with its own kept-alive
  HTTP/1.1 connection to each target (optdse/load/http1.py says why not http.client).

Both speak the plan's API: TF Serving's Predict, or the Open Inference Protocol (ModelInfer,
/v2/models/NAME/infer; optdse/oip.py) that Triton speaks. Only the method, the path and the
answer's one-row check differ.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from optdse.load.http1 import KeptAliveConnection, ProtocolError

if TYPE_CHECKING:
    from optdse.load.plan import LoadPlan

#: How long a gRPC load worker waits for its channels to connect before the load starts.
CONNECT_S = 5.0


class CallFailed(Exception):
    """One request failed; `code` is what the run records for it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Caller(Protocol):
    """What a load thread needs of a protocol."""

    def call(self, target: int, timeout: float, which: int) -> bytes:
        """Send the plan's request `which` to target `target` and return the answer's bytes, or raise
        CallFailed with a code: a gRPC status name (UNAVAILABLE, DEADLINE_EXCEEDED) or HTTP_<status>.
        gRPC gives up after `timeout` s; REST after the plan's deadline (a socket option)."""
        ...

    def rows(self, answer: bytes) -> set[int]:
        """The first dimension of every output in `answer` (one row per input is expected)."""
        ...


class Client(Protocol):
    """One worker's connections for a protocol, opened before the clock starts."""

    def caller(self) -> Caller:
        """A caller for one thread (threads may share one, where the protocol allows)."""
        ...

    def close(self) -> None: ...


class GrpcClient:
    """gRPC: one channel per target, shared by the worker's threads (gRPC multiplexes calls),
    the request sent as pre-serialized bytes."""

    def __init__(self, plan: LoadPlan) -> None:
        import grpc

        self._grpc = grpc
        # The API's method and its answers' row check, chosen once (the check runs per answer).
        self.rows: Callable[[bytes], set[int]]
        if plan.api == "v2":
            from optdse.oip import INFER_METHOD as method
            from optdse.oip import grpc_rows, service_pb2
            service_pb2()  # imported now, not in the first answer's check
            self.rows = grpc_rows
        else:
            from optdse.protos import PREDICT_METHOD as method
            from optdse.protos import protos
            self._response = protos().predict_pb2.PredictResponse
            self.rows = self._predict_rows
        self._bodies, self._deadline = plan.bodies, plan.deadline_s
        self._channels = [grpc.insecure_channel(t, options=[("grpc.max_receive_message_length", 256 << 20)])
                          for t in plan.targets]
        self._calls = [ch.unary_unary(method) for ch in self._channels]  # bytes in, bytes out
        # Connect before the clock starts, to all targets at once. The replicas answered their
        # readiness check just before; a target not connected within CONNECT_S is gone (its
        # requests record UNAVAILABLE) or behind a lossy link (its first requests connect).
        # Waiting 30 s per target, one after another, held every load with a dead replica 30 s.
        ready = [grpc.channel_ready_future(channel) for channel in self._channels]
        deadline = time.monotonic() + CONNECT_S
        for future in ready:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                future.cancel()

    def caller(self) -> GrpcClient:
        return self

    def call(self, target: int, timeout: float, which: int) -> bytes:
        try:
            return self._calls[target](self._bodies[which], timeout=timeout)
        except self._grpc.RpcError as error:
            raise CallFailed(error.code().name if error.code() else "UNKNOWN") from None

    def _predict_rows(self, answer: bytes) -> set[int]:
        outputs = self._response.FromString(answer).outputs
        return {o.tensor_shape.dim[0].size for o in outputs.values() if o.tensor_shape.dim}

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


class RestClient:
    """REST: every thread gets its own HTTP/1.1 connection to each target, kept open across
    requests and reopened after a connection error (optdse/load/http1.py says why not http.client)."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self._callers: list[RestCaller] = []

    def caller(self) -> RestCaller:
        caller = RestCaller(self.plan)
        self._callers.append(caller)
        return caller

    def close(self) -> None:
        for caller in self._callers:
            caller.close()


class RestCaller:
    """One thread's connections, each with its request's bytes built once."""

    def __init__(self, plan: LoadPlan) -> None:
        self._connections = []
        if plan.api == "v2":  # the row check, chosen once (it runs per answer)
            from optdse.oip import rest_rows

            self.rows: Callable[[bytes], set[int]] = rest_rows
        else:
            self.rows = self._predict_rows
        for target in plan.targets:
            host, _, port = target.rpartition(":")
            connection = KeptAliveConnection(host, int(port), plan.path, plan.bodies, "application/json",
                                             plan.deadline_s)
            try:
                connection.connect()  # before the clock starts; a refused one is retried per request
            except OSError:
                connection.close()
            self._connections.append(connection)

    def call(self, target: int, timeout: float, which: int) -> bytes:
        try:
            status, answer = self._connections[target].post(which)
        except TimeoutError:
            raise CallFailed("DEADLINE_EXCEEDED") from None
        except OSError:  # refused, reset, closed early: the next request reconnects
            raise CallFailed("UNAVAILABLE") from None
        except ProtocolError:
            raise CallFailed("BAD_RESPONSE") from None
        if status != 200:
            raise CallFailed(f"HTTP_{status}")
        return answer

    def _predict_rows(self, answer: bytes) -> set[int]:
        try:
            answer_json = json.loads(answer)
        except ValueError:
            return set()
        if isinstance(answer_json, dict) and isinstance(answer_json.get("predictions"), list):
            return {len(answer_json["predictions"])}  # the row format: one prediction per row
        outputs = answer_json.get("outputs") if isinstance(answer_json, dict) else None
        columns = outputs.values() if isinstance(outputs, dict) else [outputs]  # columnar: one output, or named
        return {len(column) for column in columns if isinstance(column, list)}

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


#: The client class of each protocol (LoadPlan.protocol).
CLIENTS: dict[str, Callable[[LoadPlan], Client]] = {"grpc": GrpcClient, "rest": RestClient}


__all__ = ["CLIENTS", "CallFailed", "Caller", "Client", "GrpcClient", "RestCaller", "RestClient"]
