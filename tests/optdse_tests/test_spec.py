"""Study and search-space files: the shipped ones load; every mistake is one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from optdse.models import BUILTINS
from optdse.payloads import BUILDERS
from optdse.space import distributions, fixed_values, scenarios, to_config
from optdse.spec import PROJECT_ROOT, SpecError
from optdse.study_file import load_study
from serving.models import EXPORTERS
from tests.optdse_tests.conftest import SPACE, optdse, write_study


def test_shipped_study_loads_with_the_issue_space() -> None:
    study = load_study("mnist-pareto")
    params = study.space.parameters
    assert (params["threads"].low, params["threads"].high, params["threads"].log) == (1, 64, True)
    assert (params["file_size"].low, params["file_size"].high, params["file_size"].log) == (1, 128, True)
    assert (params["replicas"].low, params["replicas"].high) == (1, 8)
    assert (params["cpus"].low, params["cpus"].high) == (0.1, 2.0)
    assert (params["memory_mb"].low, params["memory_mb"].high) == (128, 2048)
    assert study.spec.requests is None and study.spec.duration_s is None  # measured until its windows agree
    rule = to_config(fixed_values(study) | {"threads": 1, "file_size": 1, "replicas": 1, "cpus": 1.0,
                                            "memory_mb": 1000}, study).client.stop_rule()
    assert rule is not None and (rule.window_s, rule.windows, rule.tolerance, rule.max_s) == (2.0, 3, 0.1, 30)
    assert [o.metric for o in study.spec.objectives] == ["art_ms", "acu_cores"]
    assert study.spec.enqueue == [{"replicas": 1, "cpus": 1.0, "memory_mb": 1000, "file_size": 1}]


def test_every_model_has_an_exporter_a_payload_and_a_study_with_a_bounded_duration() -> None:
    assert set(BUILTINS) == set(EXPORTERS) == set(BUILDERS)  # one registry: optdse.models.BUILTINS
    for model in BUILTINS:
        study = load_study(f"{model}-pareto")
        assert study.spec.model == model == study.model.name and study.model.builtin and study.name == f"{model}-pareto"
        assert study.spec.stability.max_s <= 60  # every trial ends by time, slow configurations too


@pytest.mark.parametrize("name", sorted(path.stem for path in (Path(__file__).parents[2] / "studies").glob("*.yaml")))
def test_every_shipped_study_loads_and_an_slo_study_has_its_slo(name: str) -> None:
    study = load_study(name)
    assert study.spec.stability.max_s <= 60
    if name.endswith("-slo"):
        assert study.spec.constraints is not None and study.spec.constraints.p99_ms is not None
        assert study.spec.workload is not None and study.spec.workload.rate_rps  # a fixed open-loop load
        assert {"enable_batching", "max_batch_size", "batch_timeout_micros"} <= set(distributions(study))


def test_the_network_study_samples_the_link_with_the_other_parameters() -> None:
    study = load_study("mnist-network")
    assert set(study.space.network) == {"delay_ms", "jitter_ms", "loss_pct"}
    assert {"delay_ms", "jitter_ms", "loss_pct", "threads", "replicas"} <= set(distributions(study))
    config = to_config({"threads": 2, "replicas": 1, "delay_ms": 20, "jitter_ms": 1, "loss_pct": 0.5}
                       | fixed_values(study), study)
    assert (config.client.network.delay_ms, config.client.network.loss_pct) == (20, 0.5)
    assert config.client.deadline_s == 0.5 and config.client.retries == 1


def test_the_command_line_overrides_requests_and_duration() -> None:
    study = load_study("nmt-pareto")
    assert study.with_load() is study
    quick = study.with_load(requests=20, duration_s=2.5)
    assert (quick.spec.requests, quick.spec.duration_s) == (20, 2.5)
    assert (study.spec.requests, study.spec.duration_s) == (None, None)  # the loaded study is unchanged


BAD_STUDIES = [
    ({"model": "resnet"}, "model", "a built-in model (mnist, inception, nmt, deepspeech) or a block with path:"),
    ({"duration_s": 0}, "duration_s", "greater than 0"),
    ({"trials": 0}, "trials", "greater than or equal to 1"),
    ({"backend": "kubernetes"}, "backend", "'local', 'docker' or 'swarm'"),
    ({"image": "'Tensorflow Serving'"}, "image", "host-python or a Docker image reference"),
    ({"requests": "many"}, "requests", "valid integer"),
    ({"colour": "blue"}, "colour", "unknown key; allowed: model"),
    ({"model": "{path: m, signatures: x}"}, "model.signatures", "unknown key; allowed: path, name, signature"),
    ({"model": "{path: m, size_axis: -1}"}, "model.size_axis", "greater than or equal to 0"),
    ({"model": "{path: no-such-model}"}, "model.path", "no-such-model: no such folder"),
    ({"search_space": "nope.yaml"}, "search_space", "no file"),
    ({"objectives": "[{metric: speed, direction: minimize}]"}, "objectives.0.metric", "art_ms"),
    ({"objectives": "[{metric: art_ms, direction: maximize}]"}, "objectives.0", "art_ms is to minimize, not maximize"),
    ({"sampler": "{name: cmaes}"}, "sampler.name", "'tpe'"),
    ({"enqueue": "[{replicas: 99}]"}, "enqueue.0.replicas", "range 1..2"),
    ({"enqueue": "[{gpus: 1}]"}, "enqueue", "unknown parameter gpus; allowed: threads"),
    ({"trials": "[1"}, "line", "not valid YAML"),
    ({"deadline_ms": 0}, "deadline_ms", "greater than 0"),
    ({"retries": 11}, "retries", "less than or equal to 10"),
    ({"chaos": "{kill_after: 1}"}, "chaos.kill_after", "unknown key; allowed: kill_replica_after_s"),
    ({"network_method": "tc"}, "network_method", "'auto', 'netem' or 'proxy'"),
    ({"stability": "{window_s: 5, max_s: 10}"}, "stability", "max_s must leave room for warmup_s and 3 windows"),
    ({"stability": "{windows: 1}"}, "stability.windows", "greater than or equal to 2"),
    ({"constraints": "{p99: 5}"}, "constraints.p99", "unknown key; allowed: p99_ms, p95_ms, art_ms, error_rate"),
    ({"constraints": "{p99_ms: 0}"}, "constraints.p99_ms", "greater than 0"),
    ({"stability": "{tolerance: 10%}"}, "stability.tolerance", "valid number"),
    ({"enqueue": "[{delay_ms: 5}]"}, "enqueue.0.delay_ms", "the search space does not define delay_ms"),
    ({"workload": "{rate_rps: 100}"}, "workload.rate_rps",
     "the search space bad.yaml gives the load too (parameters.threads)"),
    ({"workload": "{file_size: 2}"}, "workload.file_size", "gives it too (parameters.file_size)"),
    ({"workload": "{threads: 2, rate_rps: 5}"}, "workload", "threads (a closed loop) and rate_rps (an open loop)"),
    ({"workload": "{scenarios: [{rate: 5}]}"}, "workload.scenarios.0.rate", "unknown key; allowed: threads, rate_rps"),
    ({"workload": "{aggregate: best}"}, "workload.aggregate", "'worst' or 'mean'"),
]

BAD_SPACES = [
    (SPACE.replace("high: 4}", "high: 0}"), "parameters.threads", "low must be below high"),
    (SPACE.replace("{low: 1, high: 4}", "{low: 0, high: 4}"), "parameters.threads", "must be >= 1 (got 0)"),
    (SPACE.replace("threads:", "gpus:"), "parameters.gpus", "'threads'"),
    (SPACE.replace("  replicas:  {low: 1, high: 2}\n", ""), "parameters", "missing replicas"),
    (SPACE.replace("{low: 1, high: 2}", "{low: 1.5, high: 2}"), "parameters.replicas", "whole numbers"),
    (SPACE.replace("step: 0.1", "log: true, step: 0.1"), "parameters.cpus", "log and step"),
    (SPACE.replace("{value: 1000}", "{value: 1000, high: 3}"), "parameters.memory_mb", "unknown key"),
    (SPACE + "network:\n  loss_pct: {low: 0, high: 150}\n", "network.loss_pct", "must lie in 0..100"),
    (SPACE + "network:\n  drop: {value: 1}\n", "network.drop", "'delay_ms', 'jitter_ms' or 'loss_pct'"),
    (SPACE + "  rate_rps:  {low: 10, high: 100}\n", "parameters", "threads (a closed loop) and rate_rps (an open loop)"),
    (SPACE.replace("  threads:   {low: 1, high: 4}\n", ""), "parameters", "missing threads"),
    (SPACE + "server:\n  max_batch_size: {low: 1, high: 64}\n", "server.max_batch_size",
     "a batching parameter; it needs enable_batching in the block"),
    (SPACE + "server:\n  enable_batching: {choices: [0, 2]}\n", "server.enable_batching", "value 0 or 1, or choices"),
    (SPACE + "server:\n  grpc_max_threads: {low: 0, high: 8}\n", "server.grpc_max_threads", "whole numbers >= 1"),
    (SPACE + "server:\n  batch_size: {value: 8}\n", "server.batch_size", "'enable_batching'"),
    (SPACE + "server:\n  num_batch_threads: {choices: [1, 1]}\n", "server.num_batch_threads.choices",
     "must be distinct"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_STUDIES)
def test_a_bad_study_file_is_one_line_naming_file_key_and_what_is_allowed(
        tmp_path: Path, overrides: dict[str, object], key: str, allowed: str) -> None:
    path = write_study(tmp_path, "bad", **overrides)
    with pytest.raises(SpecError) as caught:
        load_study(str(path))
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: {key}"), line
    assert allowed in line, line


@pytest.mark.parametrize(("space", "key", "allowed"), BAD_SPACES)
def test_a_bad_search_space_names_the_space_file(tmp_path: Path, space: str, key: str, allowed: str) -> None:
    path = write_study(tmp_path, "bad", space=space)
    with pytest.raises(SpecError) as caught:
        load_study(str(path))
    line = str(caught.value)
    assert line.startswith(f"{tmp_path / 'search_spaces' / 'bad.yaml'}: {key}"), line
    assert allowed in line, line


KNOBS_ONLY = """\
parameters:
  replicas:  {low: 1, high: 2}
  cpus:      {low: 0.2, high: 1.0, step: 0.1}
  memory_mb: {value: 1000}
server:
  enable_batching: {choices: [0, 1]}
"""


def test_a_workload_gives_the_load_and_the_space_only_knobs(tmp_path: Path) -> None:
    """The operator's study: every configuration carries each scenario, what a scenario leaves
    out comes from the block, and a scenario missing what neither gives is one line."""
    path = write_study(tmp_path, "slo", space=KNOBS_ONLY, enqueue=None,
                       workload="{file_size: 1, rate_rps: 200, scenarios: [{name: base}, {name: peak, rate_rps: 400}, "
                                "{threads: 4, file_size: 8}]}")
    study = load_study(str(path))
    configs = scenarios({"replicas": 2, "cpus": 0.5, "memory_mb": 1000, "enable_batching": True}, study)
    assert [name for name, _ in configs] == ["base", "peak", "threads 4, file_size 8"]
    assert [(c.client.rate_rps, c.client.threads, c.client.file_size) for _, c in configs] == [
        (200, 1, 1), (400, 1, 1), (None, 4, 8)]
    assert all(c.server.replicas == 2 and c.server.knobs.enable_batching for _, c in configs)
    bad = write_study(tmp_path, "short", space=KNOBS_ONLY, workload="{scenarios: [{rate_rps: 5}]}")
    with pytest.raises(SpecError, match=r"short.yaml: workload.scenarios.0: file_size is neither in it nor in the "
                                        r"search space short.yaml"):
        load_study(str(bad))


@pytest.mark.slow
def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write_study(tmp_path, "bad", trials=-3)
    done = optdse(tmp_path, "study", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{path}: trials:" in done.stderr


@pytest.mark.slow
def test_an_unknown_study_name_lists_the_known_ones(tmp_path: Path) -> None:
    done = optdse(tmp_path, "study", "no-such-study")
    assert done.returncode == 2
    known = ", ".join(sorted(path.stem for path in (PROJECT_ROOT / "studies").glob("*.yaml")))
    assert "mnist-pareto" in known and f"no-such-study.yaml: file not found; known studies: {known}" in done.stderr


@pytest.mark.slow
def test_a_storage_url_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    done = optdse(tmp_path, "study", "mnist-pareto", "--storage", "nosuch://nowhere")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("optdse study: error: --storage nosuch://nowhere: cannot open it")


def test_an_open_loop_space_offers_a_rate_instead_of_threads(tmp_path: Path) -> None:
    space = SPACE.replace("threads:   {low: 1, high: 4}", "rate_rps:  {low: 50, high: 200, log: true}")
    study = load_study(str(write_study(tmp_path, "open", space=space, arrival="poisson",
                                       enqueue="[{replicas: 1, rate_rps: 100}]")))
    config = to_config({"rate_rps": 120.0, "file_size": 2, "replicas": 1, "cpus": 0.5, "memory_mb": 1000}, study)
    assert config.client.rate_rps == 120.0 and config.client.arrival == "poisson" and config.client.in_flight == 64
    assert "120 req/s poisson" in config.describe()
