"""One configuration of the design space, split the way the system is: server and client.

The backend sees only `ServerConfig` (so a change of client parameters never redeploys), the
load generator only `ClientConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How the load generator talks to the replicas: TF Serving's gRPC Predict or its REST predict.
ProtocolName = Literal["grpc", "rest"]
PROTOCOLS: tuple[ProtocolName, ...] = ("grpc", "rest")


@dataclass(frozen=True)
class ServerConfig:
    """What is deployed: `replicas` optdse-serve replicas of `model`, each limited to
    `cpus` cores (a CFS quota, not pinning) and `memory_mb` MiB."""

    model: str
    replicas: int
    cpus: float
    memory_mb: int


@dataclass(frozen=True)
class ClientConfig:
    """How it is loaded: `threads` closed-loop client threads send `requests` Predict calls in
    total, each carrying `file_size` units of the model's input (MNIST: images), and stop
    early once `duration_s` has passed if one is set. `protocol` is a client parameter like
    the others: every replica serves both, so changing it never redeploys."""

    threads: int
    file_size: int
    requests: int
    warmup_fraction: float = 0.1
    duration_s: float | None = None
    protocol: ProtocolName = "grpc"


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    client: ClientConfig

    def describe(self) -> str:
        s, c = self.server, self.client
        return (f"{s.replicas} x {s.model} ({s.cpus:g} CPU, {s.memory_mb} MB), "
                f"{c.threads} threads, file size {c.file_size}, {c.requests} requests"
                + (f" or {c.duration_s:g} s" if c.duration_s else "")
                + (f", over {c.protocol.upper()}" if c.protocol != "grpc" else ""))
