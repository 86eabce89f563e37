"""What a study file and a search space may say: the vocabulary of parameters and metrics, and
the pydantic models the files are validated against (their checks raise the messages a user
sees). optdse/study_file.py finds and reads the files and turns a mistake into one line that
names the file, the key and what is allowed (`SpecError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from optdse.knobs import KNOBS, SERVERS, SWITCH_KNOBS, TRITON_KNOBS, switches
from optdse.models import BUILTINS, DEFAULT_SIGNATURE, Model
from optdse.stability import StabilityRule

DEFAULT_RULE = StabilityRule()

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Parameters a search space may define, and what each means to the system.
PARAMETERS = {
    "threads": "closed-loop client threads (the seed's '# of threads')",
    "file_size": "what one request carries (MNIST images, Inception JPEG edge, NMT tokens, DeepSpeech seconds; "
                 "a user's model: rows per request, or its size_axis)",
    "replicas": "server replicas (the seed's '# of servers')",
    "cpus": "CPU cores per replica (a CFS quota)",
    "memory_mb": "memory limit per replica in MiB",
}
#: Instead of `threads`, a space may offer an open-loop rate (optdse/arrivals.py).
LOAD_PARAMETERS = {"rate_rps": "open loop: requests offered per second, latency counted from when each was due"}
#: The `network` block's parameters: impairment of the client-replica link (optdse/network.py).
NETWORK_PARAMETERS = {
    "delay_ms": "delay added to every round trip between client and replicas, ms",
    "jitter_ms": "random variation of that delay, +- ms",
    "loss_pct": "packets lost in each direction, %",
}
#: The `server` block's parameters: the server's own knobs, under TF Serving's flag names or Triton's
#: model configuration names (optdse/knobs.py); which apply depends on the study's `server`.
SERVER_PARAMETERS = {name: what for name, (what, _) in (TRITON_KNOBS | KNOBS).items()}
#: Figures a study may optimise, with the direction that makes sense for each.
METRICS = {
    "art_ms": "minimize", "p50_ms": "minimize", "p90_ms": "minimize", "p95_ms": "minimize",
    "p99_ms": "minimize", "p999_ms": "minimize", "acu_cores": "minimize", "energy_j": "minimize",
    "throughput_rps": "maximize",
    # What the operator pays for: the limits reserved (replicas x CPU, replicas x memory) and
    # what each answered request burnt (replica CPU, energy).
    "cost_cores": "minimize", "cost_memory_mb": "minimize", "cpu_ms_per_request": "minimize",
    "energy_j_per_request": "minimize",
}
INTEGER_PARAMETERS = {"threads", "file_size", "replicas", "memory_mb", *(k for k in SERVER_PARAMETERS if k not in SWITCH_KNOBS)}
#: Every parameter name a space or an enqueued point may use.
ALL_PARAMETERS = [*PARAMETERS, *LOAD_PARAMETERS, *NETWORK_PARAMETERS, *SERVER_PARAMETERS]


class SpecError(ValueError):
    """A study or search-space file is wrong; str() is the one line shown to the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A parameter the sampler varies between `low` and `high` (inclusive)."""

    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low:g}, high={self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0 (got low={self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna's rule)")
        return self


class Fixed(_Strict):
    """A parameter held at one value in this space."""

    value: float


class Choice(_Strict):
    """A parameter the sampler picks from a list (Optuna's categorical): server knobs only,
    e.g. `enable_batching: {choices: [0, 1]}`."""

    choices: Annotated[list[float], Field(min_length=2)]

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[float]) -> list[float]:
        if len(set(choices)) != len(choices):
            raise ValueError(f"must be distinct (got {', '.join(f'{c:g}' for c in choices)})")
        return choices


def _range_or_fixed(data: Any) -> str:
    if isinstance(data, dict) and "value" in data:
        return "fixed"
    return "choice" if isinstance(data, dict) and "choices" in data else "range"


Distribution = Annotated[Annotated[Range, Tag("range")] | Annotated[Fixed, Tag("fixed")],
                         Discriminator(_range_or_fixed)]
KnobDistribution = Annotated[Annotated[Range, Tag("range")] | Annotated[Fixed, Tag("fixed")]
                             | Annotated[Choice, Tag("choice")], Discriminator(_range_or_fixed)]


def _values(dist: Range | Fixed | Choice) -> list[float]:
    """The values a dimension's bounds name: low and high, its value, or its choices."""
    if isinstance(dist, Range):
        return [dist.low, dist.high]
    return [dist.value] if isinstance(dist, Fixed) else list(dist.choices)


class SearchSpace(_Strict):
    """search_spaces/NAME.yaml: the dimensions a study explores; `network` (optional) adds the
    link's delay, jitter and loss, sampled like the others."""

    parameters: dict[Literal["threads", "file_size", "replicas", "cpus", "memory_mb", "rate_rps"], Distribution]
    network: dict[Literal["delay_ms", "jitter_ms", "loss_pct"], Distribution] = Field(default_factory=dict)
    server: dict[Literal[tuple(SERVER_PARAMETERS)], KnobDistribution] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="the server's own knobs (batching, thread pools, instances); unset: its defaults")

    @property
    def dimensions(self) -> dict[str, Range | Fixed | Choice]:
        """Every parameter the space defines, the network's and the server's included;
        switches (enable_batching, dynamic_batching) before the parameters that depend on them."""
        server = dict(sorted(self.server.items(), key=lambda item: item[0] not in SWITCH_KNOBS))
        return {**self.parameters, **self.network, **server}

    @model_validator(mode="after")
    def _complete_and_in_bounds(self) -> SearchSpace:
        if "rate_rps" in self.parameters and "threads" in self.parameters:
            raise ValueError("parameters: threads (a closed loop) and rate_rps (an open loop) exclude each other; "
                             "give one")
        minimum = {"threads": 1, "file_size": 1, "replicas": 1, "cpus": 0.01, "memory_mb": 16, "rate_rps": 0.1}
        for name, dist in self.parameters.items():
            low = dist.low if isinstance(dist, Range) else dist.value
            if low < minimum[name]:
                raise ValueError(f"parameters.{name}: must be >= {minimum[name]:g} (got {low:g})")
            values = [dist.low, dist.high] if isinstance(dist, Range) else [dist.value]
            if name in INTEGER_PARAMETERS and any(not float(v).is_integer() for v in values):
                raise ValueError(f"parameters.{name}: takes whole numbers (got "
                                 f"{', '.join(f'{v:g}' for v in values)})")
        highest = {"delay_ms": 60_000.0, "jitter_ms": 60_000.0, "loss_pct": 100.0}
        for name, dist in self.network.items():
            low, high = (dist.low, dist.high) if isinstance(dist, Range) else (dist.value, dist.value)
            if low < 0 or high > highest[name]:
                raise ValueError(f"network.{name}: must lie in 0..{highest[name]:g} (got {low:g}..{high:g})")
        return self

    def knobs_problem(self, server: str) -> str | None:
        """What is wrong with the `server` block for `server` ("server.KNOB: ..."), or None."""
        vocabulary = SERVERS[server]
        for name, dist in self.server.items():
            if name not in vocabulary:
                return (f"server.{name}: not a knob of {server}; its knobs: {', '.join(vocabulary)} "
                        "(the study file's `server` chooses the server)")
            values, minimum = _values(dist), vocabulary[name][1]
            if any(v < minimum or not float(v).is_integer() for v in values):
                return f"server.{name}: takes whole numbers >= {minimum} (got {', '.join(f'{v:g}' for v in values)})"
            if name in SWITCH_KNOBS and (isinstance(dist, Range) or any(v not in (0, 1) for v in values)):
                return f"server.{name}: is on or off: value 0 or 1, or choices [0, 1]"
        for name, switch in switches(server).items():
            on = self.server.get(switch)
            if name in self.server and (on is None or not any(_values(on))):
                kind = "a dynamic batching" if switch == "dynamic_batching" else "a batching"
                return f"server.{name}: {kind} parameter; it needs {switch} in the block (value: 1, or choices: [0, 1])"
        return None


class _Load(_Strict):
    """The client side of a configuration, given by the study rather than searched."""

    threads: Annotated[int, Field(ge=1)] | None = Field(None, description="closed-loop client threads")
    rate_rps: Annotated[float, Field(gt=0)] | None = Field(None, description="open loop: requests offered per second")
    file_size: Annotated[int, Field(ge=1)] | None = Field(None, description="what one request carries")
    delay_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    jitter_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    loss_pct: Annotated[float, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _one_loop(self) -> _Load:
        if self.threads is not None and self.rate_rps is not None:
            raise ValueError("threads (a closed loop) and rate_rps (an open loop) exclude each other; give one")
        return self

    def values(self) -> dict[str, float]:
        """The parameters it sets."""
        return {key: getattr(self, key) for key in _Load.model_fields if getattr(self, key) is not None}


class Scenario(_Load):
    """One load a configuration must carry; what it leaves out comes from the workload block."""

    name: str | None = Field(None, description="how reports name it (default: its load)")


class Workload(_Load):
    """The load every configuration is measured under, apart from what the operator chooses:
    fixed values, or `scenarios` (each taking what it leaves out from here), whose figures are
    aggregated per objective: the worst scenario's (default) or their mean."""

    scenarios: Annotated[list[Scenario], Field(max_length=8)] = Field(
        default_factory=list, description="loads every configuration is measured under, in turn")
    aggregate: Literal["worst", "mean"] = Field(
        "worst", description="how the scenarios' figures become the trial's: each figure's worst, or the mean")

    def resolved(self) -> list[tuple[str, dict[str, float]]]:
        """Each scenario's name and parameters, what it leaves out taken from the block (a
        scenario's own threads or rate_rps replaces the block's loop); one unnamed scenario
        when there are none."""
        if not self.scenarios:
            return [("", self.values())]
        result = []
        for scenario in self.scenarios:
            own = scenario.values()
            base = {k: v for k, v in self.values().items()
                    if not ({"threads", "rate_rps"} & set(own) and k in ("threads", "rate_rps"))}
            values = base | own
            name = scenario.name or ", ".join(f"{k} {v:g}" for k, v in own.items())
            result.append((name, values))
        return result


class Objective(_Strict):
    """A measured figure to optimise, in the direction that makes sense for it (METRICS)."""

    metric: str
    direction: Literal["minimize", "maximize"]

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"must be one of {', '.join(METRICS)}")
        return metric

    @model_validator(mode="after")
    def _sensible_direction(self) -> Objective:
        if self.direction != METRICS[self.metric]:
            raise ValueError(f"{self.metric} is to {METRICS[self.metric]}, not {self.direction}")
        return self


class Sampler(_Strict):
    """Which Optuna sampler proposes configurations; see the README for why TPE is the default."""

    name: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int | None = None
    n_startup_trials: Annotated[int, Field(ge=1)] = 10
    #: one-factor: before the sampler proposes, the first enqueued configuration and each
    #: varied parameter over START_LEVELS of its values with the others held (the seed's own
    #: plan); benchmarks/sample_efficiency.py chose it. none: only the enqueued configurations.
    start: Literal["one-factor", "none"] = "one-factor"


class Chaos(_Strict):
    """Faults injected into every trial: one replica is killed (SIGKILL) this long into the load."""

    kill_replica_after_s: Annotated[float, Field(gt=0)]


class Stability(_Strict):
    """The stability rule (optdse/stability.py): windows by time until the last few agree."""

    window_s: Annotated[float, Field(gt=0, le=600)] = Field(DEFAULT_RULE.window_s, description="window length")
    windows: Annotated[int, Field(ge=2, le=10)] = Field(DEFAULT_RULE.windows, description="windows that must agree")
    tolerance: Annotated[float, Field(gt=0, lt=1)] = Field(
        DEFAULT_RULE.tolerance, description="largest relative spread of their throughput and mean latency")
    warmup_s: Annotated[float, Field(ge=0, le=600)] = Field(DEFAULT_RULE.warmup_s, description="before the first window")
    min_s: Annotated[float, Field(ge=0, le=3600)] = Field(DEFAULT_RULE.min_s, description="shortest load")
    max_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        DEFAULT_RULE.max_s, description="longest load; a run stopped here is recorded as not stable")
    min_requests: Annotated[int, Field(ge=1)] = Field(
        DEFAULT_RULE.min_requests, description="answers a window needs to be judged (else the windows double)")

    @model_validator(mode="after")
    def _room_for_windows(self) -> Stability:
        if self.max_s < self.warmup_s + self.windows * self.window_s:
            raise ValueError(f"max_s must leave room for warmup_s and {self.windows} windows of window_s "
                             f"(at least {self.warmup_s + self.windows * self.window_s:g} s)")
        return self

    def rule(self) -> StabilityRule:
        return StabilityRule(**self.model_dump())


class Constraints(_Strict):
    """Service-level objectives: a trial that misses one is infeasible (an Optuna constraint
    that the samplers, the Pareto front and optuna-dashboard read)."""

    p99_ms: Annotated[float, Field(gt=0)] | None = Field(None, description="upper bound on p99 latency")
    p95_ms: Annotated[float, Field(gt=0)] | None = Field(None, description="upper bound on p95 latency")
    art_ms: Annotated[float, Field(gt=0)] | None = Field(None, description="upper bound on mean latency")
    error_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="upper bound on the share of failed requests (default: max_error_rate)")
    min_throughput_rps: Annotated[float, Field(gt=0)] | None = Field(
        None, description="lower bound on answered requests per second")

    #: The upper bounds, by the Measurement field each bounds.
    UPPER: ClassVar[tuple[str, ...]] = ("p99_ms", "p95_ms", "art_ms")

    def any(self) -> bool:
        return any(value is not None for value in self.model_dump().values())


class ModelBlock(_Strict):
    """A user's SavedModel (optdse/models.py). Relative paths resolve from the study file's folder."""

    path: str = Field(description="model base path: version folders inside, as TF Serving's --model_base_path")
    name: str | None = Field(None, description="the name served and sent in ModelSpec (default: the folder's name)")
    signature: str = DEFAULT_SIGNATURE
    request_file: str | None = Field(None, description="TF Serving REST predict bodies, one JSON object a line")
    size_axis: Annotated[int, Field(ge=0)] = Field(
        0, description="the input axis file_size sets: 0 rows per request, 1 e.g. a sequence length")


def _name_or_block(data: Any) -> str:
    return "block" if isinstance(data, dict | ModelBlock) else "built-in"


#: A built-in model's name, or a block naming a user's SavedModel.
ModelChoice = Annotated[Annotated[str, Tag("built-in")] | Annotated[ModelBlock, Tag("block")],
                        Discriminator(_name_or_block)]


class StudySpec(_Strict):
    """studies/NAME.yaml: one study; its name is the file's stem."""

    model: ModelChoice
    search_space: str = Field(description="file name under search_spaces/")
    objectives: Annotated[list[Objective], Field(min_length=1)]
    trials: Annotated[int, Field(ge=1)] = 50
    requests: Annotated[int, Field(ge=10)] | None = Field(
        None, description="a fixed request count per trial instead of the stability rule")
    duration_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="a fixed load duration per trial instead of the stability rule (with requests: "
                          "whichever ends first)")
    stability: Stability = Field(default_factory=lambda: Stability(),
                                 description="how long a trial's load runs when neither requests nor duration_s is given")
    warmup_fraction: Annotated[float, Field(ge=0, lt=0.9)] = 0.1
    repeats: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="measure each configuration this many times in a row; objectives are the mean, "
                       "and the trial records the coefficient of variation of ART and ACU")
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01, description="trials with a higher error rate are infeasible (an Optuna constraint)")
    constraints: Constraints = Field(default_factory=lambda: Constraints(),
                                     description="service-level objectives a feasible trial meets")
    workload: Workload | None = Field(None, description="the load (and file size, network) every configuration "
                                                        "must carry; the search space then holds only knobs")
    deadline_ms: Annotated[float, Field(gt=0, le=3_600_000)] = Field(
        30_000, description="per-request deadline; a later answer is an error (DEADLINE_EXCEEDED)")
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        0, description="times the client sends a refused request again to another replica")
    chaos: Chaos | None = None
    network_method: Literal["auto", "netem", "proxy"] = Field(
        "auto", description="how the network block's impairment is made: netem where the kernel has it, else proxy")
    backend: Literal["local", "docker", "swarm"] = "local"
    server: Literal["optdse-serve", "tensorflow-serving", "triton"] = Field(
        "optdse-serve", description="what the replicas run: optdse's server, TF Serving's image (docker/swarm with "
                                    "image: tensorflow/serving), or NVIDIA Triton (local; `optdse triton install`)")
    arrival: Literal["constant", "poisson"] = Field(
        "constant", description="open loop (a space with rate_rps): evenly spaced or Poisson arrivals")
    in_flight: Annotated[int, Field(ge=1, le=4096)] = Field(
        64, description="open loop: requests that may await answers at once")
    protocol: Literal["grpc", "rest"] = Field(
        "grpc", description="how the load generator sends Predict: gRPC, or TF Serving's REST API (JSON)")
    image: str = Field("host-python", description="docker/swarm: host-python, an optdse.serve image "
                                                  "(serving/Dockerfile) or tensorflow/serving")
    sampler: Sampler = Sampler()
    enqueue: list[dict[str, float]] = Field(default_factory=list,
                                            description="configurations tried first (partial ones allowed)")

    @field_validator("model")
    @classmethod
    def _builtin_or_block(cls, model: str | ModelBlock) -> str | ModelBlock:
        if isinstance(model, str) and model not in BUILTINS:
            raise ValueError(f"must be a built-in model ({', '.join(BUILTINS)}) or a block with path: (a user's "
                             "SavedModel)")
        return model

    @field_validator("image")
    @classmethod
    def _image_reference(cls, image: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", image):
            raise ValueError("must be host-python or a Docker image reference such as optdse/serving "
                             "or tensorflow/serving:2.19.0")
        return image

    @property
    def error_limit(self) -> float:
        """The error rate above which a trial is infeasible: constraints.error_rate, else max_error_rate."""
        return self.constraints.error_rate if self.constraints.error_rate is not None else self.max_error_rate

    @model_validator(mode="after")
    def _server_runs_on_backend(self) -> StudySpec:
        problem = server_problem(self.server, self.backend, self.image, self.protocol)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _enqueued_names_known(self) -> StudySpec:
        for point in self.enqueue:
            unknown = sorted(set(point) - set(ALL_PARAMETERS))
            if unknown:
                raise ValueError(f"enqueue: unknown parameter {unknown[0]}; allowed: {', '.join(ALL_PARAMETERS)}")
        return self


def server_problem(server: str, backend: str, image: str, protocol: str = "grpc") -> str | None:
    """Why `server` cannot run on `backend` with `image` (None: it can), as `server: ...`."""
    if server == "triton" and backend != "local":
        return (f"server: triton runs on the local backend only (tritonserver processes in cgroups), not {backend}; "
                "use backend: local")
    if server == "tensorflow-serving" and (backend == "local" or image == "host-python"):
        return ("server: tensorflow-serving runs from a TF Serving image on the docker or swarm backend "
                "(backend: docker, image: tensorflow/serving)")
    return None


class Study(BaseModel):
    """A loaded study: its name, spec, and resolved search space."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    path: Path
    spec: StudySpec
    space: SearchSpace
    model: Model

    def with_load(self, requests: int | None = None, duration_s: float | None = None,
                  repeats: int | None = None) -> Study:
        """This study with the command line's --requests/--duration/--repeats in place of the file's."""
        update = {key: value for key, value in (("requests", requests), ("duration_s", duration_s),
                                                ("repeats", repeats)) if value}
        return self.model_copy(update={"spec": self.spec.model_copy(update=update)}) if update else self

    def largest(self, name: str) -> float:
        """The largest value parameter `name` takes in this space (0 if it has none)."""
        dimension = self.space.dimensions.get(name)
        if isinstance(dimension, Range):
            return dimension.high
        return dimension.value if isinstance(dimension, Fixed) else 0.0


__all__ = ["server_problem", "ALL_PARAMETERS", "INTEGER_PARAMETERS", "LOAD_PARAMETERS", "METRICS", "NETWORK_PARAMETERS", "PARAMETERS",
           "PROJECT_ROOT", "SERVER_PARAMETERS", "Chaos", "Choice", "Constraints", "Fixed", "ModelBlock", "Range", "Sampler",
           "Scenario", "SearchSpace", "SpecError", "Stability", "Study", "StudySpec", "Workload"]
