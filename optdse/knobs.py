"""The server's own knobs: batching and thread pools, under TF Serving's flag names.

A knob left at None is not passed, so the server keeps its own default. optdse-serve and
tensorflow_model_server read the same flags and the same text-format BatchingParameters file,
so one `ServerKnobs` means the same on every backend:

- `enable_batching` -> `--enable_batching`;
- `max_batch_size`, `batch_timeout_micros`, `num_batch_threads`, `max_enqueued_batches` -> the
  batching parameters file (`--batching_parameters_file`), written by the backend and mounted
  read-only in containers; they mean something only with batching on, so a study suggests them
  only then (optdse/space.py) and they are an error without it;
- `tensorflow_intra_op_parallelism`, `tensorflow_inter_op_parallelism`, `grpc_max_threads` -> flags.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

#: Every knob, with what it does and its smallest allowed value.
KNOBS: dict[str, tuple[str, int]] = {
    "enable_batching": ("merge concurrent requests into one model call (0 or 1)", 0),
    "max_batch_size": ("most rows in one merged call", 1),
    "batch_timeout_micros": ("longest a request waits for others to join its batch, us", 0),
    "num_batch_threads": ("batches run at once", 1),
    "max_enqueued_batches": ("full batches that may wait before new requests are refused", 1),
    "tensorflow_intra_op_parallelism": ("threads one TensorFlow op may use (0: TensorFlow decides)", 0),
    "tensorflow_inter_op_parallelism": ("TensorFlow ops run at once (0: TensorFlow decides)", 0),
    "grpc_max_threads": ("gRPC handler threads (optdse-serve: each in-flight request holds one)", 1),
}
#: Column headers for tables a terminal must fit.
SHORT = {"enable_batching": "batching", "max_batch_size": "max_batch", "batch_timeout_micros": "timeout_us",
         "num_batch_threads": "batch_thr", "max_enqueued_batches": "max_queue", "tensorflow_intra_op_parallelism": "intra_op",
         "tensorflow_inter_op_parallelism": "inter_op", "grpc_max_threads": "grpc_thr"}
#: The knobs that live in the batching parameters file, and mean nothing with batching off.
BATCHING_KNOBS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")
#: Where containers find the batching parameters file (mounted read-only).
CONTAINER_BATCHING_FILE = "/models/batching_parameters.txt"  # beside /models/NAME, as TF Serving's docs put it


class KnobError(ValueError):
    """An impossible value or combination of knobs: `knob` is the one at fault."""

    def __init__(self, knob: str, message: str) -> None:
        super().__init__(f"{knob}: {message}")
        self.knob, self.message = knob, message


def _check(knobs: object, vocabulary: dict[str, tuple[str, int]], switched: tuple[str, ...], switch: str,
           kind: str) -> None:
    """KnobError for a knob below its smallest value, or a switched knob given with its switch off."""
    for name, (_, minimum) in vocabulary.items():
        value = getattr(knobs, name)
        if value is not None and int(value) < minimum:
            raise KnobError(name, f"must be >= {minimum} (got {value})")
    given = [name for name in switched if getattr(knobs, name) is not None]
    if given and not getattr(knobs, switch):
        raise KnobError(given[0], f"{kind}, it needs {switch}")


@dataclass(frozen=True)
class ServerKnobs:
    """One setting of the server's knobs; None: the server's own default."""

    enable_batching: bool = False
    max_batch_size: int | None = None
    batch_timeout_micros: int | None = None
    num_batch_threads: int | None = None
    max_enqueued_batches: int | None = None
    tensorflow_intra_op_parallelism: int | None = None
    tensorflow_inter_op_parallelism: int | None = None
    grpc_max_threads: int | None = None

    def __post_init__(self) -> None:
        _check(self, KNOBS, BATCHING_KNOBS, "enable_batching", "a batching parameter")

    @classmethod
    def of(cls, values: dict[str, float]) -> ServerKnobs:
        """The knobs among a configuration's values (other names are ignored)."""
        known = {name: values[name] for name in KNOBS if values.get(name) is not None}
        return cls(**{name: bool(value) if name == "enable_batching" else int(value) for name, value in known.items()})

    def set(self) -> dict[str, int | bool]:
        """The knobs given, by name (what a trial records)."""
        return {name: value for name, value in asdict(self).items()
                if value is not None and not (name == "enable_batching" and not value)}

    def batching_file(self) -> str | None:
        """The text-format BatchingParameters file these knobs need, or None (batching off, or
        on at the server's defaults)."""
        lines = [f"{name} {{ value: {getattr(self, name)} }}" for name in BATCHING_KNOBS
                 if getattr(self, name) is not None]
        return "\n".join(lines) + "\n" if lines else None

    def batching_file_name(self) -> str:
        """A file name unique to this file's content, so replicas of one setting share it."""
        digest = hashlib.sha256((self.batching_file() or "").encode()).hexdigest()[:12]
        return f"batching-{digest}.txt"

    def flags(self, batching_path: str) -> list[str]:
        """The server's flags for these knobs; `batching_path` is where the server will find
        the batching file (written by the backend) when there is one."""
        flags = []
        if self.enable_batching:
            flags.append("--enable_batching=true")
            if self.batching_file() is not None:
                flags.append(f"--batching_parameters_file={batching_path}")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name not in BATCHING_KNOBS and field.name != "enable_batching" and value is not None:
                flags.append(f"--{field.name}={value}")
        return flags

    def describe(self) -> str:
        """"batching (max 16 rows, timeout 500 us), intra-op 2, 8 gRPC threads" ("" for the
        server's defaults; intra-op "auto" is 0, TensorFlow decides)."""
        parts = []
        if self.enable_batching:
            details = [f"{label} {getattr(self, name)}{unit}" for name, label, unit in (
                ("max_batch_size", "max", " rows"), ("batch_timeout_micros", "timeout", " us"),
                ("num_batch_threads", "threads", ""), ("max_enqueued_batches", "queue", ""))
                if getattr(self, name) is not None]
            parts.append("batching" + (f" ({', '.join(details)})" if details else ""))
        for name, label in (("tensorflow_intra_op_parallelism", "intra-op"), ("tensorflow_inter_op_parallelism", "inter-op")):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{label} {value or 'auto'}")  # 0: TensorFlow decides
        if self.grpc_max_threads is not None:
            parts.append(f"{self.grpc_max_threads} gRPC threads")
        return ", ".join(parts)


#: Triton's knobs, under the names of its model configuration (config.pbtxt); optdse/triton/repository.py writes them.
TRITON_KNOBS: dict[str, tuple[str, int]] = {
    "instance_count": ("model instances, each a backend process with its own TF session (instance_group count)", 1),
    "max_batch_size": ("most rows in one request or dynamic batch (0: the model takes whole requests, no batching)", 0),
    "dynamic_batching": ("let Triton's scheduler merge queued requests into one model call (0 or 1)", 0),
    "max_queue_delay_microseconds": ("longest a request waits in the queue for others to join its batch, us", 0),
    "preferred_batch_size": ("batch size the scheduler sends as soon as it has it", 1),
}
#: The servers optdse can deploy, each with its knobs.
SERVERS: dict[str, dict[str, tuple[str, int]]] = {"optdse-serve": KNOBS, "tensorflow-serving": KNOBS,
                                                  "triton": TRITON_KNOBS}
#: Knobs that turn something on or off (0 or 1), of any server.
SWITCH_KNOBS = ("enable_batching", "dynamic_batching")
SHORT |= {"instance_count": "instances", "dynamic_batching": "dyn_batch", "max_queue_delay_microseconds": "delay_us",
          "preferred_batch_size": "preferred"}


def switches(server: str) -> dict[str, str]:
    """The knobs of `server` that mean something only when another is on: {knob: its switch}."""
    if server == "triton":
        return {"max_queue_delay_microseconds": "dynamic_batching", "preferred_batch_size": "dynamic_batching"}
    return dict.fromkeys(BATCHING_KNOBS, "enable_batching")


@dataclass(frozen=True)
class TritonKnobs:
    """One setting of Triton's model configuration knobs; None: optdse's default for Triton
    (one instance, max_batch_size 0: requests go to the model whole, as they come)."""

    instance_count: int | None = None
    max_batch_size: int | None = None
    dynamic_batching: bool = False
    max_queue_delay_microseconds: int | None = None
    preferred_batch_size: int | None = None

    def __post_init__(self) -> None:
        _check(self, TRITON_KNOBS, tuple(switches("triton")), "dynamic_batching", "a dynamic batching parameter")
        if self.dynamic_batching and not self.max_batch_size:
            raise KnobError("dynamic_batching", "needs max_batch_size >= 1 (the rows a merged call may hold)")
        if self.preferred_batch_size is not None and self.preferred_batch_size > (self.max_batch_size or 0):
            raise KnobError("preferred_batch_size", f"must be <= max_batch_size (got {self.preferred_batch_size} > "
                                                    f"{self.max_batch_size})")

    @classmethod
    def of(cls, values: dict[str, float]) -> TritonKnobs:
        """The knobs among a configuration's values (other names are ignored)."""
        known = {name: values[name] for name in TRITON_KNOBS if values.get(name) is not None}
        return cls(**{name: bool(value) if name == "dynamic_batching" else int(value) for name, value in known.items()})

    @property
    def instances(self) -> int:
        return self.instance_count or 1

    def set(self) -> dict[str, int | bool]:
        """The knobs given, by name (what a trial records)."""
        return {name: value for name, value in asdict(self).items()
                if value is not None and not (name == "dynamic_batching" and not value)}

    def describe(self) -> str:
        """"2 instances, max batch 16, dynamic batching (delay 100 us, preferred 8)"."""
        parts = [f"{self.instances} instance{'s' if self.instances > 1 else ''}"]
        if self.max_batch_size:
            parts.append(f"max batch {self.max_batch_size}")
        if self.dynamic_batching:
            details = [f"{label} {getattr(self, name)}{unit}" for name, label, unit in (
                ("max_queue_delay_microseconds", "delay", " us"), ("preferred_batch_size", "preferred", ""))
                if getattr(self, name) is not None]
            parts.append("dynamic batching" + (f" ({', '.join(details)})" if details else ""))
        return ", ".join(parts)


def knobs_of(server: str, values: dict[str, float]) -> ServerKnobs | TritonKnobs:
    """`server`'s knobs among a configuration's values."""
    return TritonKnobs.of(values) if server == "triton" else ServerKnobs.of(values)


__all__ = ["BATCHING_KNOBS", "CONTAINER_BATCHING_FILE", "KNOBS", "SERVERS", "SHORT", "SWITCH_KNOBS", "TRITON_KNOBS",
           "KnobError", "ServerKnobs", "TritonKnobs", "knobs_of", "switches"]
