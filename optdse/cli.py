"""The `optdse` command line. Each subcommand is a thin layer over one module.

Heavy imports (optuna, pandas) happen inside the subcommands, so `optdse --help` and
`optdse clean` stay fast. TensorFlow is never imported here except by `model export`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from optdse import signals
from optdse.config import ARRIVALS, GRACE_HEARTBEATS, HEARTBEAT_S, NETWORK_METHODS, PROTOCOLS
from optdse.stability import StabilityRule

DEFAULT_RULE = StabilityRule()

if TYPE_CHECKING:
    from optdse.deploy.base import Backend
    from optdse.models import Model

console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped


def _warn(text: str) -> None:
    console.print(f"[yellow]warning:[/] {text}")


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"optdse {command}: error: {message}", file=sys.stderr)
    return code


def _model_export(args: argparse.Namespace) -> int:
    from serving.models import export_model
    from serving.tensorflow_import import import_tensorflow

    tf = import_tensorflow()
    with console.status(f"building and exporting {args.name} ..."):
        try:
            result = export_model(args.name, args.output, version=args.version, data=args.data, weights=args.weights)
        except (ValueError, OSError, tf.errors.OpError) as error:  # bad data or weights, a path it cannot write
            return _fail("model export", str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(f"exported {result.model} to {result.path}")
    print(f"  data set: {result.dataset} ({result.train_examples} train / {result.test_examples} held out)")
    print(f"  weights:  {result.weights}")
    if result.held_out_accuracy is not None:
        print(f"  held-out accuracy: {result.held_out_accuracy:.4f}")
    return 0


def _backend(name: str, model: Model, args: argparse.Namespace, image: str = "host-python") -> Backend:
    """The named backend, ready to deploy `model` (exported on first use) from `image`
    (docker and swarm only), with the command line's swarm options."""
    from optdse.models import ensure_model

    base_path = ensure_model(model, console)
    with signals.atomic():  # a backend records its run on disk as it starts: all of that, or none
        return _new_backend(name, base_path, args, image)


def _new_backend(name: str, base_path: Path, args: argparse.Namespace, image: str) -> Backend:
    if name == "swarm":
        from optdse.deploy.swarm import SwarmBackend

        return SwarmBackend(base_path, warn=_warn, swarm_init=args.swarm_init, image=image,
                            engines=dict(args.swarm_engine or []))
    if name == "docker":
        from optdse.deploy.docker import DockerBackend

        return DockerBackend(base_path, warn=_warn, image=image)
    from optdse.deploy.local import LocalBackend

    # OPTDSE_PARK_IDLE=0: stop replicas a trial no longer needs (gives their memory back)
    # instead of parking them for a later trial.
    return LocalBackend(base_path, warn=_warn, park_idle=os.environ.get("OPTDSE_PARK_IDLE", "1") != "0")


def _study(args: argparse.Namespace, command: str = "study") -> int:
    from optdse.study import open_study

    def prepare(study: Any, storage: Any) -> tuple[Any, int]:
        optuna_study = open_study(study, storage, seed=True)
        _resume(optuna_study)
        return optuna_study, args.trials or study.spec.trials

    return _run_trials(command, args, prepare)


def _grid(args: argparse.Namespace) -> int:
    from optdse.grid import grid_size, open_grid_study, retry_interrupted
    from optdse.levels import grid_space

    def prepare(study: Any, storage: Any) -> tuple[Any, int]:
        grid = open_grid_study(study, storage, args.levels)
        _resume(grid)
        retried = retry_interrupted(grid)
        if retried:
            console.print(f"resuming: {retried} interrupted grid point(s) will be measured again")
        space = grid_space(study, args.levels)
        size = grid_size(space)
        console.print(f"grid of {study.name} ({study.model.name}, file size: {study.model.unit}): {size} configurations ("
                      + " x ".join(f"{len(v)} {k}" for k, v in space.items()) + ")")
        return grid, size

    return _run_trials("grid", args, prepare)


def _worker(args: argparse.Namespace) -> int:
    """`optdse study` for one of several hosts sharing a storage: the same trial loop."""
    return _study(args, command="worker")


def _resume(optuna_study: Any) -> None:
    from optdse.study import fail_lost

    lost = fail_lost(optuna_study)
    if lost:
        console.print(f"resuming: trials {lost} were left RUNNING by a worker that is gone; "
                      "marked FAIL (abandoned) and enqueued again")


def _quiet_optuna() -> None:
    """Optuna logs each trial at INFO; the progress bar and tables say it instead. Set by the
    commands that open studies, not as a side effect of importing an optdse module."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _shown(url: str) -> str:
    """A storage URL as printed: without its password (optdse.storage imports optuna, so lazily)."""
    from optdse.storage import shown_url

    return shown_url(url)


def _run_trials(command: str, args: argparse.Namespace, prepare: Callable[[Any, Any], tuple[Any, int]]) -> int:
    """What `study`, `worker` and `grid` share: load the study file, open its storage, take
    this host's measuring lock, deploy, run the trials with a progress bar, stop everything on
    Ctrl-C, print the front."""
    from optdse.deploy.runs import measuring_lock, other_live_runs
    from optdse.spec import SpecError, load_study
    from optdse.storage import OPEN_ERRORS, default_storage, open_storage

    _quiet_optuna()
    try:
        study = load_study(args.name).with_load(args.requests, args.duration, args.repeats)
    except SpecError as error:
        return _fail(command, str(error))
    url = args.storage or default_storage()
    try:
        optuna_study, target = prepare(study, open_storage(url, args.heartbeat))
    except ValueError as error:  # objectives or grid levels differ from the stored study's
        return _fail(command, str(error))
    except OPEN_ERRORS as error:  # a URL Optuna/SQLAlchemy cannot open: say which, no traceback
        return _cannot_open(command, url, error)
    with measuring_lock() as alone:
        if not alone:
            others = other_live_runs()
            already = (f"optdse process {', '.join(map(str, others))}" if others else "another optdse process") + \
                " is already running trials on this host"
            if not args.share_host:
                return _fail(command, f"{already}; trials measured at the same time share the host's CPUs and "
                                      "falsify ART and ACU. Run one worker per host, or pass --share-host to run "
                                      "anyway (each trial then records host_shared_with)", code=1)
            _warn(f"{already} (--share-host): concurrent trials share the CPUs, so ART and ACU are not "
                  "those of the configuration alone; each trial records host_shared_with")
        return _measure_trials(command, args, study, url, optuna_study, target)


def _measure_trials(command: str, args: argparse.Namespace, study: Any, url: str, optuna_study: Any,
                    target: int) -> int:
    from optdse.deploy.base import DeployError, beyond_host
    from optdse.progress import StudyProgress
    from optdse.study import repeatability, run_study

    for warning in beyond_host(study.largest("cpus"), study.largest("memory_mb"), f"{study.path}: cpus up to",
                               f"{study.path}: memory_mb up to"):
        _warn(warning)
    try:
        backend = _backend(args.backend or study.spec.backend, study.model, args, args.image or study.spec.image)
    except DeployError as error:
        return _fail(command, error.message, code=1)
    try:
        with StudyProgress(console, optuna_study, study, target) as progress:
            run_study(optuna_study, study, backend, target, progress)
    except KeyboardInterrupt as interrupt:
        console.print(f"stopped by {signals.signal_name(interrupt)}: a trial being measured is recorded as FAIL "
                      "(interrupted); run the same command again to resume")
        return signals.exit_code(interrupt)
    finally:
        with signals.atomic():  # one more Ctrl-C waits for the replicas to stop; a third one does not
            backend.close()
    from optdse.export import pareto_frame

    name = optuna_study.study_name
    console.print(f"\nPareto front of {name} ({len(pareto_frame(optuna_study))} configurations; model "
                  f"{study.model.name}, file size = {study.model.unit}):")
    console.print(StudyProgress.pareto_table(optuna_study))
    noise = repeatability(optuna_study)
    if noise is not None:
        trials, repeats, art_cv, acu_cv = noise
        console.print(f"repeatability: {trials} trials measured {repeats} times in a row; median coefficient of "
                      f"variation ART {art_cv:.1%}, ACU {acu_cv:.1%} (differences smaller than a few CVs are noise)")
    option = f" --storage {_shown(url)}" if args.storage else ""
    console.print(f"storage: {_shown(url)}\n  optdse report {study.name} --output report.html{option}"
                  f"\n  optdse dashboard {study.name}{option}\n  optdse export {study.name} --pareto pareto.csv{option}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from optdse.config import ClientConfig, Config, NetworkConfig, ServerConfig
    from optdse.deploy.base import DeployError, beyond_host
    from optdse.knobs import KNOBS, KnobError, ServerKnobs
    from optdse.models import ModelError, resolve
    from optdse.objective import MeasureError, measure

    try:
        model = resolve(args.model, args.signature, args.request_file, args.size_axis)
    except ModelError as error:
        option = {"path": "--model", "name": "--model", "signature": "--signature", "request_file": "--request-file",
                  "size_axis": "--size-axis"}[error.key]
        return _fail("measure", f"{option}: {error}")
    network = NetworkConfig(args.delay_ms, args.jitter_ms, args.loss_pct, args.network_method)
    try:
        stability = replace(DEFAULT_RULE, window_s=args.window, max_s=args.max_duration)
    except ValueError:
        least = DEFAULT_RULE.warmup_s + DEFAULT_RULE.windows * args.window
        return _fail("measure", f"--max-duration: must leave room for the warm-up and {DEFAULT_RULE.windows} windows "
                                f"of --window (at least {least:g} s)")
    try:
        knobs = ServerKnobs.of({name: getattr(args, name) for name in KNOBS})
    except KnobError as error:
        return _fail("measure", f"--{error.knob.replace('_', '-')}: {error.message.replace('enable_batching', '--enable-batching')}")
    config = Config(ServerConfig(model, args.replicas, args.cpus, args.memory, knobs),
                    ClientConfig(args.threads, args.file_size, args.requests, args.warmup_fraction, args.duration,
                                 args.protocol, network=network, deadline_s=args.deadline_ms / 1e3,
                                 retries=args.retries, chaos_kill_after_s=args.kill_replica_after,
                                 rate_rps=args.rate, arrival=args.arrival, in_flight=args.in_flight,
                                 stability=stability))
    for warning in beyond_host(args.cpus, args.memory):
        _warn(warning)
    try:
        backend = _backend(args.backend, model, args, args.image)
    except DeployError as error:
        return _fail("measure", error.message, code=1)
    try:
        with console.status(f"measuring {config.describe()} ..."):
            result = measure(backend, config, warn=_warn)
    except (DeployError, MeasureError) as error:
        return _fail("measure", f"{error.reason}: {error.message}", code=1)
    finally:
        with signals.atomic():
            backend.close()
    figures = {"config": config.describe(), "protocol": config.client.protocol, **model.record(), **result.as_dict()}
    if args.json:
        print(json.dumps(figures))
        return 0
    figures["windows"] = ", ".join(f"{w['throughput_rps']:.0f} req/s {w['art_ms']:.3f} ms" for w in result.windows)
    for key, value in figures.items():
        if key not in ("timeseries", "latency_histogram"):  # too long to read; --json has them
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return 0


def _add_knob_options(parser: argparse.ArgumentParser) -> None:
    """The server's own knobs (optdse/knobs.py), under TF Serving's flag names with dashes;
    unset ones keep the server's default."""
    from optdse.knobs import KNOBS

    group = parser.add_argument_group("server knobs", "passed to every replica as its own flags or batching file")
    for name, (what, minimum) in KNOBS.items():
        flag = "--" + name.replace("_", "-")
        if name == "enable_batching":
            group.add_argument(flag, action="store_true", default=None, help=what.replace(" (0 or 1)", ""))
        else:
            group.add_argument(flag, type=_positive_int if minimum else _non_negative_int, metavar="N", help=what)


def _cannot_open(command: str, storage: str, error: Exception) -> int:
    return _fail(command, f"--storage {_shown(storage)}: cannot open it ({type(error).__name__}: {error})")


def _stored_study(command: str, args: argparse.Namespace) -> tuple[Any, str] | int:
    """The study NAME and the storage URL it is in (--storage or the default), or the exit
    code of a one-line error."""
    import optuna

    from optdse.spec import SpecError, find_study_file
    from optdse.storage import OPEN_ERRORS, default_storage

    try:
        name = find_study_file(args.name).stem
    except SpecError as error:
        return _fail(command, str(error))
    storage = args.storage or default_storage()
    _quiet_optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage), storage
    except KeyError:
        return _fail(command, f"no study {name!r} in {_shown(storage)}; run `optdse study {name}` first")
    except OPEN_ERRORS as error:  # a URL Optuna/SQLAlchemy cannot open
        return _cannot_open(command, storage, error)


def _export(args: argparse.Namespace) -> int:
    from optdse.export import write_pareto_csv

    found = _stored_study("export", args)
    if isinstance(found, int):
        return found
    study, _ = found
    frame = write_pareto_csv(study, args.pareto)
    print(f"wrote {len(frame)} Pareto-optimal trials to {args.pareto}")
    return 0


def _report(args: argparse.Namespace) -> int:
    import optuna

    from optdse.report import write_report

    found = _stored_study("report", args)
    if isinstance(found, int):
        return found
    study, storage = found
    grid_name = f"{study.study_name}-grid"
    names = {summary.study_name for summary in optuna.get_all_study_summaries(storage)}
    grid = optuna.load_study(study_name=grid_name, storage=storage) if grid_name in names else None
    with console.status(f"computing the report of {study.study_name} ..."):
        data = write_report(study, args.output, grid)
    print(f"wrote {args.output}: {len(data.study.trials)} trials, {len(data.study.pareto)} Pareto-optimal"
          + (f", grid {grid_name} ({len(data.grid.trials)} trials)" if data.grid is not None else ""))
    for note in data.notes:
        console.print(f"[yellow]note:[/] {note}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from optdse.dashboard import dashboard_server, save_hypervolume_plot

    found = _stored_study("dashboard", args)
    if isinstance(found, int):
        return found
    study, storage = found
    save_hypervolume_plot(study)
    try:
        server = dashboard_server(storage, args.port)
    except OSError as error:  # a busy port is one line, not a server traceback
        return _fail("dashboard", f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} ({error.strerror})")
    print(f"optuna-dashboard for {study.study_name} ({_shown(storage)}): http://127.0.0.1:{args.port}/dashboard/", flush=True)
    console.print("  each trial's page has its figures as a note; the study's page has the hypervolume history."
                  "\n  Ctrl-C stops it.")
    with server:
        try:
            server.serve_forever(poll_interval=0.5)  # until a stop signal raises here
        except KeyboardInterrupt as interrupt:  # the way a server is meant to end: exit 0, like optdse-serve
            console.print(f"optdse dashboard: stopped by {signals.signal_name(interrupt)}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from optdse.deploy.base import DeployError
    from optdse.deploy.cgroups import CgroupDriver
    from optdse.deploy.engine import clean_stale_containers
    from optdse.deploy.runs import clean_stale_runs
    from optdse.network import clean_stale_namespaces

    driver, _ = CgroupDriver.detect()
    report = clean_stale_runs(driver)  # first: a relay keeps its namespace alive
    try:
        containers = clean_stale_containers(report.live, [url for _, url in args.swarm_engine or []])
    except DeployError as error:
        print(f"optdse clean: {error}", file=sys.stderr)
        return 1
    namespaces = clean_stale_namespaces(report.live)
    if not report.runs and not containers and not namespaces:
        print("nothing to clean: no leftovers of stopped optdse runs")
        return 0
    print(f"cleaned {len(report.runs)} stopped run(s): stopped processes {report.processes or 'none'}, "
          f"removed {len(report.cgroups)} cgroup directories, services/containers {containers or 'none'} "
          f"and network namespaces {namespaces or 'none'}")
    return 0


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: `convert` the text, and refuse a value that is not `ok` with "rule (got text)"."""
    def parse(text: str) -> Any:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule} (got {text})")
        return value

    parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'" names the type
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "must be >= 1")
_non_negative_int = _checked(int, lambda v: v >= 0, "must be >= 0")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "must be a number > 0")
_non_negative = _checked(float, lambda v: 0 <= v < float("inf"), "must be a number >= 0")
_percent = _checked(float, lambda v: 0 <= v <= 100, "must be a percentage from 0 to 100")
_cpus = _checked(float, lambda v: 0.01 <= v <= 64, "must be between 0.01 and 64 cores")


def _node_engine(text: str) -> tuple[str, str]:
    node, _, url = text.partition("=")
    if not node or not url:
        raise argparse.ArgumentTypeError(f"must be NODE=URL, e.g. worker-1=ssh://root@worker-1 (got {text})")
    return node, url


def _add_swarm_engine_option(parser: argparse.ArgumentParser, help_text: str = "") -> None:
    parser.add_argument("--swarm-engine", type=_node_engine, action="append", metavar="NODE=URL",
                        help=help_text or "swarm: the Docker engine of node NODE (its hostname), e.g. ssh://root@NODE, "
                                          "through which the CPU of its tasks is read; needed for every serving node "
                                          "but this one (repeat the option per node)")


def _add_trial_options(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that run trials (study, worker, grid)."""
    parser.add_argument("name", help="study name (studies/NAME.yaml) or a path to a study file")
    worker = parser.prog.endswith(" worker")
    parser.add_argument("--storage", required=worker,
                        help="Optuna storage URL, e.g. postgresql://user:password@db-host/optdse to share the study "
                             "with workers on other hosts" + ("" if worker else " (default: sqlite:///results/optdse.db)"))
    parser.add_argument("--heartbeat", type=_positive_int, default=HEARTBEAT_S, metavar="SECONDS",
                        help=f"seconds between a running trial's heartbeats in the storage; a trial without one for "
                             f"{GRACE_HEARTBEATS} heartbeats is failed and measured again (default {HEARTBEAT_S})")
    parser.add_argument("--share-host", action="store_true",
                        help="run trials even if another optdse process is running trials on this host (they share "
                             "its CPUs, which falsifies ART and ACU; the trials record it)")
    parser.add_argument("--requests", type=_positive_int, help="requests per trial (default: the study file's)")
    parser.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                        help="stop each trial's load after this long (default: the study file's duration_s)")
    parser.add_argument("--repeats", type=_positive_int, metavar="N",
                        help="measure each configuration N times in a row: objectives are the means, and each "
                             "trial records the coefficient of variation of ART and ACU (default: the study file's, 1)")
    parser.add_argument("--backend", choices=["local", "docker", "swarm"],
                        help="where replicas run (default: the study file's)")
    _add_swarm_engine_option(parser)
    parser.add_argument("--swarm-init", action="store_true",
                        help="swarm: initialise a single-node swarm on 127.0.0.1 if this engine is in none")
    parser.add_argument("--image", help="docker/swarm: the serving image (default: the study file's, host-python)")


def build_parser() -> argparse.ArgumentParser:
    from optdse.models import BUILTINS

    parser = argparse.ArgumentParser(prog="optdse", description="Bayesian design-space optimizer for model serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or resume) the study defined in studies/NAME.yaml")
    study.add_argument("--trials", type=_positive_int, help="finished trials to reach (default: the study file's)")
    _add_trial_options(study)
    study.set_defaults(run=_study)

    worker = commands.add_parser("worker", help="run trials of study NAME in a shared storage, with workers on other "
                                                "hosts (creates the study if it does not exist)")
    worker.add_argument("--trials", type=_positive_int,
                        help="finished trials the study must reach, counting every worker's (default: the study file's)")
    _add_trial_options(worker)
    worker.set_defaults(run=_worker)

    grid = commands.add_parser("grid", help="measure the study's search space exhaustively (the baseline), "
                                            "as study NAME-grid in the same storage")
    grid.add_argument("--levels", type=_positive_int, default=3, help="values per varied parameter (default 3)")
    _add_trial_options(grid)
    grid.set_defaults(run=_grid)

    measure = commands.add_parser("measure", help="measure one configuration, as a trial would")
    measure.add_argument("--model", default="mnist", metavar="NAME_OR_PATH",
                         help=f"a built-in model ({', '.join(BUILTINS)}; default mnist) or a SavedModel base path "
                              "(version folders inside, as TF Serving's --model_base_path)")
    measure.add_argument("--signature", help="a SavedModel's signature to call (default serving_default)")
    measure.add_argument("--request-file", type=Path, metavar="FILE.jsonl",
                         help="a SavedModel's requests: TF Serving REST predict bodies, one JSON object a line "
                              "(default: inputs generated from the signature)")
    measure.add_argument("--size-axis", type=_non_negative_int, metavar="AXIS",
                         help="a SavedModel's input axis that --file-size sets (default 0: rows per request)")
    measure.add_argument("--threads", type=_positive_int, default=1, help="closed-loop client threads")
    measure.add_argument("--rate", type=_positive_float, metavar="RPS",
                         help="open loop: offer this many requests per second whatever the replicas do, latency "
                              "counted from when each was due (instead of --threads)")
    measure.add_argument("--arrival", choices=ARRIVALS, default="constant",
                         help="open loop: constant gaps, or a Poisson process (seeded: reproducible)")
    measure.add_argument("--in-flight", type=_positive_int, default=64, metavar="N",
                         help="open loop: requests that may await answers at once (default 64)")
    measure.add_argument("--file-size", type=_positive_int, default=1,
                         help="MNIST: images per request; Inception: JPEG edge (px); NMT: tokens; DeepSpeech: "
                              "seconds; a SavedModel: rows per request (or the size of --size-axis)")
    measure.add_argument("--replicas", type=_positive_int, default=1)
    measure.add_argument("--cpus", type=_cpus, default=1.0, help="CPU cores per replica")
    measure.add_argument("--memory", type=_positive_int, default=1000, help="memory per replica, MB")
    _add_knob_options(measure)
    measure.add_argument("--requests", type=_positive_int,
                         help="a fixed request count instead of the stability rule")
    measure.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                         help="a fixed load duration instead of the stability rule (with --requests: whichever "
                              "ends first)")
    measure.add_argument("--warmup-fraction", type=float, default=0.1,
                         help="with --requests or --duration: the share of requests cut as warm-up (default 0.1)")
    measure.add_argument("--window", type=_positive_float, default=DEFAULT_RULE.window_s, metavar="SECONDS",
                         help=f"the stability rule: load runs until {DEFAULT_RULE.windows} windows this long agree "
                              f"within {DEFAULT_RULE.tolerance * 100:.0f}%% (default {DEFAULT_RULE.window_s:g})")
    measure.add_argument("--max-duration", type=_positive_float, default=DEFAULT_RULE.max_s, metavar="SECONDS",
                         help=f"the stability rule: stop after this long, recorded as not stable (default "
                              f"{DEFAULT_RULE.max_s:g})")
    measure.add_argument("--protocol", choices=PROTOCOLS, default="grpc",
                         help="how Predict is sent: gRPC (default) or TF Serving's REST API (JSON over HTTP/1.1)")
    measure.add_argument("--delay-ms", type=_non_negative, default=0.0,
                         help="delay added to every round trip between client and replicas (ms)")
    measure.add_argument("--jitter-ms", type=_non_negative, default=0.0, help="random variation of that delay (+- ms)")
    measure.add_argument("--loss-pct", type=_percent, default=0.0, help="packets lost in each direction (%%)")
    measure.add_argument("--network-method", choices=NETWORK_METHODS, default="auto",
                         help="how the link is impaired: netem in namespaces where the kernel has it, else a "
                              "userspace relay on 127.0.0.1 (proxy); the JSON says which was used")
    measure.add_argument("--deadline-ms", type=_positive_float, default=30_000.0,
                         help="per-request deadline; later answers count as errors (default 30000)")
    measure.add_argument("--retries", type=_non_negative_int, default=0,
                         help="times a refused request is sent again to another replica (default 0)")
    measure.add_argument("--kill-replica-after", type=_positive_float, metavar="SECONDS",
                         help="chaos: kill one replica this long into the load")
    measure.add_argument("--backend", choices=["local", "docker", "swarm"], default="local")
    measure.add_argument("--swarm-init", action="store_true", help="swarm: initialise a single-node swarm on 127.0.0.1")
    _add_swarm_engine_option(measure)
    measure.add_argument("--image", default="host-python",
                         help="docker/swarm: host-python, an optdse.serve image or tensorflow/serving")
    measure.add_argument("--json", action="store_true", help="print one JSON object")
    measure.set_defaults(run=_measure)

    export = commands.add_parser("export", help="write a study's Pareto front")
    export.add_argument("name")
    export.add_argument("--pareto", type=Path, required=True, metavar="FILE.csv")
    export.add_argument("--storage")
    export.set_defaults(run=_export)

    report = commands.add_parser("report", help="write a study's results as one offline HTML page")
    report.add_argument("name")
    report.add_argument("--output", type=Path, default=Path("report.html"), metavar="FILE.html")
    report.add_argument("--storage")
    report.set_defaults(run=_report)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    dashboard.add_argument("name")
    dashboard.add_argument("--storage")
    dashboard.add_argument("--port", type=_positive_int, default=8080)
    dashboard.set_defaults(run=_dashboard)

    clean = commands.add_parser("clean", help="stop and remove what killed optdse runs left behind")
    _add_swarm_engine_option(clean, "swarm: also the Docker engine of node NODE, whose containers of stopped runs "
                                    "are removed and waited for there (repeat the option per node)")
    clean.set_defaults(run=_clean)

    from serving.models import EXPORTERS

    model = commands.add_parser("model", help="build servable models").add_subparsers(dest="action", required=True)
    model_export = model.add_parser("export", help="train/build a model and write it as a SavedModel (DIR/VERSION/)")
    model_export.add_argument("name", choices=sorted(EXPORTERS))
    model_export.add_argument("--output", type=Path, required=True, help="model base path; versions go inside")
    model_export.add_argument("--version", type=int, default=1, help="version directory name (default 1)")
    model_export.add_argument("--data", type=Path, default=None, help="mnist: MNIST IDX files (default: scikit-learn's digits)")
    model_export.add_argument("--weights", type=Path, default=None,
                              help="inception: a Keras weights file (default: random initialisation)")
    model_export.set_defaults(run=_model_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    signals.install()  # before anything starts: a signal at any moment stops the command cleanly
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt as interrupt:  # stopped before or after the part that says more
        console.print(f"optdse {args.command}: stopped by {signals.signal_name(interrupt)}")
        return signals.exit_code(interrupt)
    finally:
        if "optdse.load" in sys.modules:  # it ran load: its helper processes end before the command does
            try:
                sys.modules["optdse.load"].stop_helpers()
            except KeyboardInterrupt:  # one more signal: they end by themselves a moment later
                pass


if __name__ == "__main__":
    sys.exit(main())
