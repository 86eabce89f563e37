"""optdse-serve's command line: tensorflow_model_server's flags, names and defaults.

Booleans accept TF's spellings (`--enable_batching`, `--enable_batching=true`). Where
optdse-serve differs from tensorflow_model_server it says so in the help:
--host (default 127.0.0.1, where TF Serving binds every interface), --grpc_max_threads
(a Python thread blocks per in-flight request, so the default is higher) and
--max_request_bytes (one limit for gRPC messages and REST bodies).
Unknown or contradictory flags end the process with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from serving.batching import BatchingParameters, read_batching_parameters
from serving.model_dir import find_versions

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerFlags:
    port: int
    rest_api_port: int
    host: str
    model_name: str
    model_base_path: Path
    batching: BatchingParameters | None
    intra_op_threads: int
    inter_op_threads: int
    grpc_max_threads: int
    max_request_bytes: int


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optdse-serve",
        description="A TensorFlow-Serving-compatible model server (gRPC PredictionService/ModelService and REST).",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--port", type=_non_negative, default=8500, help="gRPC port (default 8500; 0 picks a free port)")
    add("--rest_api_port", type=_non_negative, default=0, help="REST port; 0 turns REST off (default 0)")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; optdse extension)")
    add("--model_name", default="default", help="name clients use for the model (default 'default')")
    add("--model_base_path", default="", help="directory of integer version subdirectories; the highest is served")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False, help="merge concurrent requests")
    add("--batching_parameters_file", default="", help="BatchingParameters in text format; needs --enable_batching")
    add("--tensorflow_intra_op_parallelism", type=_non_negative, default=0, help="threads per op (0: TF decides)")
    add("--tensorflow_inter_op_parallelism", type=_non_negative, default=0, help="ops in parallel (0: TF decides)")
    add("--grpc_max_threads", type=_non_negative, default=64,
        help="gRPC handler threads (default 64; each in-flight request holds one)")
    add("--max_request_bytes", type=_non_negative, default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest gRPC message or REST body accepted (default {DEFAULT_MAX_REQUEST_BYTES})")
    return parser


def parse_flags(argv: list[str] | None = None) -> ServerFlags:
    """Parse and cross-check the flags; exits with code 2 and one line on any mistake."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_base_path:
        parser.error("--model_base_path is required")
    base_path = Path(args.model_base_path)
    if not base_path.is_dir():
        parser.error(f"--model_base_path {base_path} is not a directory")
    if not find_versions(base_path):
        parser.error(f"--model_base_path {base_path} holds no version directory (an integer name with saved_model.pb)")
    if not 0 <= args.port <= 65535 or not 0 <= args.rest_api_port <= 65535:
        parser.error("ports must be between 0 and 65535")
    if args.rest_api_port and args.rest_api_port == args.port:
        parser.error(f"--port and --rest_api_port must differ, both are {args.port}")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file is given but batching is off; add --enable_batching")
    if args.grpc_max_threads < 1:
        parser.error("--grpc_max_threads must be >= 1")
    if args.max_request_bytes < 1024:
        parser.error("--max_request_bytes must be at least 1024")
    batching = None
    if args.enable_batching:
        try:
            batching = (
                read_batching_parameters(Path(args.batching_parameters_file))
                if args.batching_parameters_file
                else BatchingParameters(num_batch_threads=os.cpu_count() or 1)
            )
        except (OSError, ValueError) as error:
            parser.error(f"--batching_parameters_file: {error}")
    return ServerFlags(
        port=args.port,
        rest_api_port=args.rest_api_port,
        host=args.host,
        model_name=args.model_name,
        model_base_path=base_path,
        batching=batching,
        intra_op_threads=args.tensorflow_intra_op_parallelism,
        inter_op_threads=args.tensorflow_inter_op_parallelism,
        grpc_max_threads=args.grpc_max_threads,
        max_request_bytes=args.max_request_bytes,
    )
