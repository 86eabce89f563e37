"""The server's own knobs (optdse/knobs.py): from a search space or the command line to the
server process's command line and batching file, on every backend, and the conditional
suggestion that keeps batching parameters away from trials without batching."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import optuna
import pytest

from optdse.config import ServerConfig
from optdse.deploy.docker import DockerBackend
from optdse.knobs import CONTAINER_BATCHING_FILE, KnobError, ServerKnobs
from optdse.models import builtin
from optdse.space import suggest
from optdse.study_file import load_study
from optdse.study import start_points
from serving.batching import parse_batching_parameters
from tests.optdse_tests.conftest import SPACE, optdse, write_study

#: Every knob set, each to a value that is no server's default.
ALL_KNOBS = ServerKnobs(enable_batching=True, max_batch_size=16, batch_timeout_micros=700, num_batch_threads=1,
                        max_enqueued_batches=3, tensorflow_intra_op_parallelism=1,
                        tensorflow_inter_op_parallelism=2, grpc_max_threads=7)
#: What optdse-serve logs as its settings in effect for ALL_KNOBS (serving/server.py).
ALL_SETTINGS = ("settings: enable_batching=true max_batch_size=16 batch_timeout_micros=700 num_batch_threads=1 "
                "max_enqueued_batches=3 tensorflow_intra_op_parallelism=1 tensorflow_inter_op_parallelism=2 "
                "grpc_max_threads=7")
KNOB_SPACE = SPACE + """\
server:
  max_batch_size: {low: 2, high: 64, log: true}
  batch_timeout_micros: {value: 500}
  enable_batching: {choices: [0, 1]}
  grpc_max_threads: {choices: [4, 16]}
"""


def test_the_batching_file_is_one_the_server_s_own_parser_reads_back() -> None:
    text = ALL_KNOBS.batching_file()
    assert text is not None
    parsed = parse_batching_parameters(text)  # serving/batching.py: protobuf's text format
    assert (parsed.max_batch_size, parsed.batch_timeout_micros, parsed.num_batch_threads,
            parsed.max_enqueued_batches) == (16, 700, 1, 3)
    assert ALL_KNOBS.flags("/b.txt") == ["--enable_batching=true", "--batching_parameters_file=/b.txt",
                                         "--tensorflow_intra_op_parallelism=1",
                                         "--tensorflow_inter_op_parallelism=2", "--grpc_max_threads=7"]
    assert ServerKnobs().flags("/b.txt") == [] and ServerKnobs().batching_file() is None
    assert ServerKnobs(enable_batching=True).flags("/b.txt") == ["--enable_batching=true"]  # the server's defaults
    with pytest.raises(KnobError, match="max_batch_size: a batching parameter, it needs enable_batching"):
        ServerKnobs(max_batch_size=8)
    with pytest.raises(KnobError, match="grpc_max_threads: must be >= 1"):
        ServerKnobs(grpc_max_threads=0)


def test_batching_parameters_are_suggested_only_when_batching_is_on(tmp_path: Path) -> None:
    """Optuna's conditional search space: a trial without batching has no batching parameter
    (not even the fixed one), a trial with it has them all, and the start points that vary a
    batching parameter turn batching on."""
    study = load_study(str(write_study(tmp_path, "knobs", space=KNOB_SPACE)))
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        trial = optuna_study.ask()
        knobs = suggest(trial, study).server.knobs
        seen.add(knobs.enable_batching)
        if knobs.enable_batching:
            assert {"max_batch_size", "enable_batching"} <= set(trial.params) and knobs.batch_timeout_micros == 500
            assert 2 <= knobs.max_batch_size <= 64
        else:
            assert "max_batch_size" not in trial.params and knobs.batching_file() is None
            assert knobs.max_batch_size is None and knobs.batch_timeout_micros is None
        assert knobs.grpc_max_threads in (4, 16)
        optuna_study.tell(trial, 1.0)
    assert seen == {False, True}
    for point in start_points(study):
        if "max_batch_size" in point and point["max_batch_size"] != 2:  # a varied batching parameter
            assert point["enable_batching"] is True


def test_bad_knobs_on_the_command_line_are_one_line(tmp_path: Path) -> None:
    done = optdse(tmp_path, "measure", "--max-batch-size", "16")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--max-batch-size: a batching parameter, it needs --enable-batching" in done.stderr
    done = optdse(tmp_path, "measure", "--enable-batching", "--num-batch-threads", "0")
    assert done.returncode == 2 and "--num-batch-threads" in done.stderr and "Traceback" not in done.stderr


def flag(command: list[str], name: str) -> str:
    return next(part.split("=", 1)[1] for part in command if part.startswith(f"--{name}="))


@pytest.mark.slow
def test_the_batching_file_is_mounted_read_only_where_the_container_s_flag_points(
        mnist_base_path: Path, serving_image: str) -> None:
    """(That every knob reaches every backend's replicas, in each image mode, is the backend
    contract's test in test_backends.py; this is the docker backend's mount itself.)"""
    backend = DockerBackend(mnist_base_path, image=serving_image, ready_timeout=120)
    try:
        backend.apply(ServerConfig(builtin("mnist"), replicas=1, cpus=1.0, memory_mb=1000, knobs=ALL_KNOBS))
        container = backend.replicas[0].container
        container.reload()
        args = container.attrs["Args"]
        assert flag(args, "batching_parameters_file") == CONTAINER_BATCHING_FILE
        mount = next(m for m in container.attrs["Mounts"] if m["Destination"] == CONTAINER_BATCHING_FILE)
        assert mount["RW"] is False and Path(mount["Source"]).read_text() == ALL_KNOBS.batching_file()
        assert ALL_SETTINGS in container.logs().decode()
        assert backend.server_command.endswith(shlex.join(args))
    finally:
        backend.close()


@pytest.mark.slow
def test_measure_takes_the_knobs_and_the_trial_records_the_server_command(tmp_path: Path, project: Path) -> None:
    done = optdse(project, "measure", "--enable-batching", "--max-batch-size", "16", "--batch-timeout-micros", "700",
                  "--num-batch-threads", "1", "--grpc-max-threads", "7", "--threads", "4", "--requests", "200",
                  "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["server_knobs"] == {"enable_batching": True, "max_batch_size": 16, "batch_timeout_micros": 700,
                                      "num_batch_threads": 1, "grpc_max_threads": 7}
    assert re.search(r"--enable_batching=true --batching_parameters_file=\S+batching-\w+\.txt "
                     r"--grpc_max_threads=7$", result["server_command"]), result["server_command"]
    assert parse_batching_parameters(result["batching_parameters"]).max_batch_size == 16
    assert "batching (max 16 rows, timeout 700 us, threads 1), 7 gRPC threads" in result["config"]
