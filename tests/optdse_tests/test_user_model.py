"""A user's own SavedModel, end to end: exported here (not one of the seed's: three inputs of
three dtypes, its own signature names), measured and studied from a folder outside the
project, with and without a request file, on the local and docker backends; and every bad
input stopped before anything is deployed, with one line and exit 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from optdse.models import ModelError, user_model
from optdse.payloads import build_payload
from optdse.protos import protos
from tests.optdse_tests.conftest import SPACE, optdse, require_docker

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

STATION = Path(__file__).with_name("station_model.py")
REQUESTS = [  # row format, bytes both plain and as b64, numbers as ints for a float input
    {"signature_name": "estimate", "instances": [{"readings": [1.0, 2.0, 3.0], "station": 7, "tag": "north"},
                                                 {"readings": [0.5, 0.5, 0.5], "station": 2, "tag": {"b64": "c291dGg="}}]},
    {"instances": [{"readings": [4, 5, 6], "station": 1, "tag": "east"}]},
]
SERIES = [{"instances": [[1.0, 2.0, 3.0]]}, {"instances": [[4.0, 5.0]]}]  # sequences of two lengths


@pytest.fixture(scope="session")
def station_base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The station model, exported by TensorFlow in its own process (this one has the
    TensorFlow-free protos loaded)."""
    base = tmp_path_factory.mktemp("user-models") / "station"
    done = subprocess.run([sys.executable, str(STATION), str(base)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.fixture
def folder(tmp_path: Path, station_base_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's own folder, outside the project: the model, request files, studies/ and
    search_spaces/; its own state directory, so only this test's runs are seen in it."""
    shutil.copytree(station_base_path, tmp_path / "models" / "station")
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in REQUESTS))
    (tmp_path / "series.jsonl").write_text("".join(json.dumps(line) + "\n" for line in SERIES))
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _write_study(folder: Path, name: str, model: str, **overrides: object) -> None:
    (folder / "studies").mkdir(exist_ok=True)
    (folder / "search_spaces").mkdir(exist_ok=True)
    (folder / "search_spaces" / "station.yaml").write_text(SPACE.replace("{low: 1, high: 2}", "{value: 1}"))
    body = {"model": model, "search_space": "station.yaml", "trials": 3, "requests": 150,
            "sampler": "{name: tpe, n_startup_trials: 2, seed: 1, start: none}",
            "objectives": "[{metric: art_ms, direction: minimize}, {metric: acu_cores, direction: minimize}]",
            **overrides}
    (folder / "studies" / f"{name}.yaml").write_text("".join(f"{key}: {value}\n" for key, value in body.items()))


# --- requests, built without deploying anything -------------------------------------------------

def test_a_request_file_s_rows_are_cycled_to_the_file_size_and_sent_in_the_form_they_were_written(
        station_base_path: Path, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in REQUESTS))
    model = user_model(station_base_path, signature="estimate", request_file=requests)
    assert (model.name, model.unit) == ("station", "rows per request")

    grpc = build_payload(model, 2)  # 3 rows in the file: two requests, rows 1-2 then 3-1
    assert grpc.batches == (2, 2) and "requests.jsonl (3 rows in 2 lines)" in grpc.source
    first, second = (protos().predict_pb2.PredictRequest.FromString(body) for body in grpc.bodies)
    assert first.model_spec.name == "station" and first.model_spec.signature_name == "estimate"
    assert list(first.inputs["tag"].string_val) == [b"north", b"south"]
    assert list(second.inputs["tag"].string_val) == [b"east", b"north"]
    assert [d.size for d in second.inputs["readings"].tensor_shape.dim] == [2, 3]
    assert np.frombuffer(second.inputs["station"].tensor_content, np.int64).tolist() == [1, 7]

    rest = json.loads(build_payload(model, 4, "rest").body)  # row format, as the file has it
    assert rest["signature_name"] == "estimate" and len(rest["instances"]) == 4
    assert rest["instances"][2] == {"readings": [4.0, 5.0, 6.0], "station": 1, "tag": {"b64": "ZWFzdA=="}}


def test_without_a_request_file_inputs_come_from_the_signature_and_size_axis_grows_a_sequence(
        station_base_path: Path, tmp_path: Path) -> None:
    generated = json.loads(build_payload(user_model(station_base_path, signature="estimate"), 5, "rest").body)
    assert [len(row) for row in generated["inputs"]["readings"]] == [3] * 5  # the fixed dimension kept
    assert len(generated["inputs"]["station"]) == 5 and all(v in (0, 1) for v in generated["inputs"]["station"])

    series = tmp_path / "series.jsonl"
    series.write_text("".join(json.dumps(line) + "\n" for line in SERIES))
    model = user_model(station_base_path, signature="smooth", request_file=series, size_axis=1)
    payload = build_payload(model, 5, "rest")
    assert payload.batches == (1, 1) and model.unit.startswith("size of input axis 1")
    assert [json.loads(body)["instances"] for body in payload.bodies] == [[[1.0, 2.0, 3.0, 1.0, 2.0]],
                                                                           [[4.0, 5.0, 4.0, 5.0, 4.0]]]
    made = build_payload(user_model(station_base_path, signature="smooth", size_axis=1), 7)
    request = protos().predict_pb2.PredictRequest.FromString(made.body)
    assert [d.size for d in request.inputs["series"].tensor_shape.dim] == [1, 7]


BAD_REQUEST_LINES = [
    ("readings,station\n", "line 1: not JSON"),
    ('{"instances": [{"readings": [1, 2], "station": 1, "tag": "n"}]}\n',
     "line 1: input 'readings': shape [1, 2]; the signature wants float [?, 3]"),
    ('{"instances": [{"readings": ["a", "b", "c"], "station": 1, "tag": "n"}]}\n',
     "input 'readings': got strings; the signature wants float [?, 3]"),
    ('{"instances": [{"readings": [1, 2, 3], "station": 1.5, "tag": "n"}]}\n',
     "input 'station': got fractional numbers; the signature wants int64 [?]"),
    ('{"instances": [{"readings": [1, 2, 3], "station": 1}]}\n', "input 'tag' is missing"),
    ('{"instances": [{"readings": [1, 2, 3], "station": 1, "tag": "n", "wind": 3}]}\n',
     "input 'wind': signature 'estimate' has no such input; it has readings (float [?, 3]), station (int64 [?])"),
    ('{"signature_name": "smooth", "inputs": {"series": [[1.0]]}}\n', "signature_name 'smooth' is not"),
]


@pytest.mark.parametrize(("line", "message"), BAD_REQUEST_LINES)
def test_a_request_file_that_does_not_fit_the_signature_says_which_input_and_what_it_wants(
        station_base_path: Path, tmp_path: Path, line: str, message: str) -> None:
    requests = tmp_path / "bad.jsonl"
    requests.write_text(line)
    with pytest.raises(ModelError) as caught:
        user_model(station_base_path, signature="estimate", request_file=requests)
    assert caught.value.key == "request_file" and str(caught.value).startswith(f"{requests}: ")
    assert message in str(caught.value)


# --- the commands: bad input stops before anything runs -----------------------------------------

def _one_line_exit_2(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


def test_bad_model_inputs_are_one_line_and_exit_2_with_nothing_started(folder: Path) -> None:
    (folder / "models" / "empty").mkdir()
    (folder / "bad.jsonl").write_text('{"instances": [{"readings": [1, 2, 3], "station": 1}]}\n')
    (folder / "table.csv").write_text("readings,station,tag\n1 2 3,1,n\n")
    (folder / "short.jsonl").write_text('{"instances": [{"readings": [1, 2], "station": 1, "tag": "n"}]}\n')
    (folder / "words.jsonl").write_text('{"inputs": {"readings": [[1, 2, 3]], "station": ["one"], "tag": ["n"]}}\n')
    measure = ("measure", "--requests", "20")
    estimate = ["--model", "models/station", "--signature", "estimate", "--request-file"]
    cases = [
        (["--model", "models/nowhere"], "--model: models/nowhere: not a built-in model"),
        (["--model", "models/empty"], "--model: ", "empty: no SavedModel in an integer version folder"),
        (["--model", "models/station/1"], "it is a SavedModel itself: move it into a version folder"),
        (["--model", "models/station"], "--signature: ", "no signature 'serving_default'; it has estimate, smooth"),
        ([*estimate, "bad.jsonl"], "--request-file: ", "bad.jsonl: line 1: input 'tag' is missing"),
        ([*estimate, "table.csv"], "--request-file: ", "table.csv: line 1: not JSON"),
        ([*estimate, "short.jsonl"], "line 1: input 'readings': shape [1, 2]; the signature wants float [?, 3]"),
        ([*estimate, "words.jsonl"], "line 1: input 'station': got strings; the signature wants int64 [?]"),
        (["--model", "models/station", "--signature", "estimate", "--size-axis", "1"],
         "--size-axis: size_axis 1: no input of signature 'estimate' has a variable-size axis 1"),
    ]
    for args, *expected in cases:
        _one_line_exit_2(optdse(folder, *measure, *args), "optdse measure: error: ", *expected)
    _write_study(folder, "typo", "{path: ../models/station, signature: estimat}")
    _one_line_exit_2(optdse(folder, "study", "typo"), "studies/typo.yaml: model.signature: ", "it has estimate, smooth")
    _write_study(folder, "lines", "{path: ../models/station, signature: estimate, request_file: ../bad.jsonl}")
    _one_line_exit_2(optdse(folder, "study", "lines"), "studies/lines.yaml: model.request_file: ", "input 'tag'")
    assert not (folder / "results").exists() or not list((folder / "results").rglob("*.db"))  # no study was made
    assert not (folder / "state").exists() or not [p for p in (folder / "state").rglob("*") if p.is_file()]


# --- the commands: measured for real -----------------------------------------------------------

def _measure(folder: Path, backend: str, *args: str) -> dict[str, object]:
    done = optdse(folder, "measure", "--model", "models/station", "--signature", "estimate", "--backend", backend,
                  "--threads", "2", "--file-size", "3", "--requests", "150", "--json", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["errors"] == 0 and figures["requests_sent"] == 150, figures["error_codes"]
    assert figures["model"] == "station" and figures["signature"] == "estimate"
    assert figures["model_path"] == str((folder / "models" / "station").resolve())
    assert figures["file_size_unit"] == "rows per request" and figures["rows_per_request"] == 3
    assert figures["request_bytes"] > 0 and figures["art_ms"] > 0 and figures["acu_cores"] > 0
    return figures


@pytest.mark.usefixtures("cgroup_driver")
@pytest.mark.parametrize("backend", ["local", "docker"])
def test_optdse_measure_serves_a_user_model_with_and_without_a_request_file(folder: Path, backend: str,
                                                                             request: pytest.FixtureRequest) -> None:
    image: tuple[str, ...] = ()
    if backend == "docker":  # the model mounted read-only at /models/station in serving/Dockerfile's image
        image = ("--image", request.getfixturevalue("serving_image"))
    from_file = _measure(folder, backend, "--request-file", "requests.jsonl")
    assert from_file["request_source"] == "requests.jsonl (3 rows in 2 lines)"
    generated = _measure(folder, backend, "--protocol", "rest", *image)  # answers in the columnar format
    assert generated["request_source"].startswith("generated from signature estimate")


@pytest.mark.usefixtures("cgroup_driver")
def test_the_request_file_over_rest_is_answered_row_for_row(folder: Path) -> None:
    figures = _measure(folder, "local", "--request-file", "requests.jsonl", "--protocol", "rest")
    assert figures["protocol"] == "rest"  # "instances" in, "predictions" out: each answer's rows checked


@pytest.mark.usefixtures("cgroup_driver")
@pytest.mark.parametrize(("backend", "requests"), [("local", "requests.jsonl"), ("docker", None)])
def test_optdse_study_runs_on_a_user_model_from_the_user_s_folder(folder: Path, backend: str,
                                                                   requests: str | None) -> None:
    if backend == "docker":
        require_docker()
    block = ("{path: ../models/station, signature: estimate" + (f", request_file: ../{requests}" if requests else "")
             + "}")
    _write_study(folder, "station", block, backend=backend)
    done = optdse(folder, "study", "station" if backend == "local" else str(folder / "studies" / "station.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model station, file size = rows per request" in done.stderr
    study = optuna.load_study(study_name="station", storage=f"sqlite:///{folder}/results/optdse.db")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 3, [t.user_attrs.get("fail_message") for t in study.trials]
    for trial in completed:
        attrs = trial.user_attrs
        assert attrs["model"] == "station" and attrs["errors"] == 0
        assert attrs["rows_per_request"] == trial.params.get("file_size", attrs.get("fixed_file_size"))
        assert ("requests.jsonl" in attrs["request_source"]) == (requests is not None)
    assert optdse(folder, "export", "station", "--pareto", "front.csv").returncode == 0
    front = pd.read_csv(folder / "front.csv")
    assert (front["model"] == "station").all() and (front["file_size_unit"] == "rows per request").all()
    assert optdse(folder, "report", "station", "--output", "report.html").returncode == 0
    assert "Model station (" in (folder / "report.html").read_text()
