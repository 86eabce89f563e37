"""One configuration of the design space, split the way the system is: server and client.

The backend sees only `ServerConfig` (so a change of client parameters never redeploys), the
load generator only `ClientConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from optdse.knobs import ServerKnobs, TritonKnobs
from optdse.stability import StabilityRule

if TYPE_CHECKING:
    from optdse.models import Model

#: How the load generator talks to the replicas: TF Serving's gRPC Predict or its REST predict.
ProtocolName = Literal["grpc", "rest"]
PROTOCOLS: tuple[ProtocolName, ...] = ("grpc", "rest")
#: Which server the replicas run: optdse's own, TF Serving's image (docker, swarm) or NVIDIA Triton.
ServerName = Literal["optdse-serve", "tensorflow-serving", "triton"]
SERVER_NAMES: tuple[ServerName, ...] = ("optdse-serve", "tensorflow-serving", "triton")
#: The API a server speaks: TF Serving's (Predict over gRPC, /v1/models/NAME:predict over REST)
#: or the Open Inference Protocol (KServe v2: ModelInfer, /v2/models/NAME/infer).
ApiName = Literal["tfserving", "v2"]
#: How optdse/network.py impairs the link: netem where the kernel has it, else its relay.
NetworkMethod = Literal["auto", "netem", "proxy"]
#: Seconds between a running trial's heartbeats in an RDB storage (Optuna's heartbeat); a trial
#: that misses GRACE_HEARTBEATS in a row is failed as abandoned and measured again.
HEARTBEAT_S = 10
GRACE_HEARTBEATS = 3
NETWORK_METHODS: tuple[NetworkMethod, ...] = ("auto", "netem", "proxy")
#: How an open-loop run's requests arrive (optdse/arrivals.py): evenly spaced, or a Poisson process.
ArrivalName = Literal["constant", "poisson"]
ARRIVALS: tuple[ArrivalName, ...] = ("constant", "poisson")


@dataclass(frozen=True)
class NetworkConfig:
    """Impairment of the client-replica link: `delay_ms` and `jitter_ms` added per round trip,
    `loss_pct` of packets lost in each direction; `method` auto (netem where the kernel has it,
    else proxy), netem or proxy."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    method: NetworkMethod = "auto"

    @property
    def impaired(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    def describe(self) -> str:
        return f"delay {self.delay_ms:g} ms, jitter {self.jitter_ms:g} ms, loss {self.loss_pct:g}%"


@dataclass(frozen=True)
class ServerConfig:
    """What is deployed: `replicas` replicas of `server` serving `model` (under
    `model.name`), each limited to `cpus` cores (a CFS quota, not pinning) and `memory_mb` MiB,
    started with the server's own `knobs` (batching, thread pools, instances; optdse/knobs.py)."""

    model: Model
    replicas: int
    cpus: float
    memory_mb: int
    knobs: ServerKnobs | TritonKnobs = ServerKnobs()
    server: ServerName = "optdse-serve"

    def __post_init__(self) -> None:
        if isinstance(self.knobs, TritonKnobs) != (self.server == "triton"):
            raise ValueError(f"{type(self.knobs).__name__} are not {self.server}'s knobs")

    @property
    def api(self) -> ApiName:
        return "v2" if self.server == "triton" else "tfserving"


@dataclass(frozen=True)
class ClientConfig:
    """How it is loaded: `threads` closed-loop client threads (or an open-loop `rate_rps`) send
    Predict calls, each carrying `file_size` units of the model's input (MNIST: images).

    How long: by default until the stability rule is met (`stability`, or the default rule);
    with `requests` and/or `duration_s`, that many requests in total or that long, whichever
    ends first. `protocol` is a client parameter like the others: every replica serves both,
    so changing it never redeploys."""

    threads: int
    file_size: int
    requests: int | None = None
    warmup_fraction: float = 0.1
    duration_s: float | None = None
    protocol: ProtocolName = "grpc"
    network: NetworkConfig = NetworkConfig()
    deadline_s: float = 30.0            # per request; later answers are errors
    retries: int = 0                    # a refused request is sent again to another replica
    chaos_kill_after_s: float | None = None  # kill one replica this long into the load
    rate_rps: float | None = None       # open loop: requests offered per second (then `threads` is unused)
    arrival: ArrivalName = "constant"
    in_flight: int = 64                 # open loop: requests that may await answers at once
    stability: StabilityRule | None = None  # when neither requests nor duration_s is given (None: the default rule)

    def stop_rule(self) -> StabilityRule | None:
        """The stability rule this load runs under, or None for a fixed count or duration."""
        if self.requests is not None or self.duration_s is not None:
            return None
        return self.stability or StabilityRule()

    def describe_length(self) -> str:
        """A fixed count or duration, as `describe` says it ("" under the stability rule, which
        each measurement records as its `stop_rule`)."""
        return " or ".join(part for part in (f"{self.requests} requests" if self.requests else "",
                                             f"{self.duration_s:g} s" if self.duration_s else "") if part)


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    client: ClientConfig

    def server_describe(self) -> str:
        """"2 x mnist (0.5 CPU, 1000 MB, batching (max 16 rows))": what is deployed."""
        s = self.server
        knobs = s.knobs.describe()
        on = " on triton" if s.server == "triton" else ""
        return f"{s.replicas} x {s.model.name}{on} ({s.cpus:g} CPU, {s.memory_mb} MB{', ' + knobs if knobs else ''})"

    def describe(self) -> str:
        c = self.client
        return (f"{self.server_describe()}, "
                + (f"{c.threads} threads" if c.rate_rps is None else f"{c.rate_rps:g} req/s {c.arrival}")
                + f", file size {c.file_size}"
                + (f", {c.describe_length()}" if c.describe_length() else "")
                + (f", over {c.protocol.upper()}" if c.protocol != "grpc" else "")
                + (f", {c.network.describe()}" if c.network.impaired else "")
                + (f", one replica killed after {c.chaos_kill_after_s:g} s" if c.chaos_kill_after_s else ""))
