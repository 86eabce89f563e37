"""The `optdse` command line. Each subcommand is a thin layer over one module.

Heavy imports (optuna, pandas) happen inside the subcommands, so `optdse --help` and
`optdse clean` stay fast. TensorFlow is never imported here except by `model export`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"optdse {command}: error: {message}", file=sys.stderr)
    return code


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM unwind as KeyboardInterrupt, so every `finally` that stops replicas
    runs. SIGINT is set explicitly: a process started from a background job inherits it
    ignored, and a study that ignored Ctrl-C would leave its trial half-measured."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _model_export(args: argparse.Namespace) -> int:
    from serving.models import export_model
    from serving.tensorflow_import import import_tensorflow

    import_tensorflow()
    with console.status(f"training and exporting {args.name} ..."):
        try:
            result = export_model(args.name, args.output, version=args.version, data=args.data)
        except (ValueError, FileExistsError, FileNotFoundError) as error:
            return _fail("model export", str(error))
    print(f"exported {result.model} to {result.path}")
    print(f"  data set: {result.dataset} ({result.train_examples} train / {result.test_examples} held out)")
    print(f"  weights:  {result.weights}")
    if result.held_out_accuracy is not None:
        print(f"  held-out accuracy: {result.held_out_accuracy:.4f}")
    return 0


def _backend(name: str, model: str, swarm_init: bool = False, image: str = "host-python") -> Any:
    """The named backend, ready to deploy `model` (exported on first use) from `image`
    (docker and swarm only)."""
    from optdse.models import ensure_model

    base_path = ensure_model(model, console)
    warn = lambda text: console.print(f"[yellow]warning:[/] {text}")  # noqa: E731
    if name == "swarm":
        from optdse.deploy.swarm import SwarmBackend

        return SwarmBackend(base_path, warn=warn, swarm_init=swarm_init, image=image)
    if name == "docker":
        from optdse.deploy.docker import DockerBackend

        return DockerBackend(base_path, warn=warn, image=image)
    from optdse.deploy.local import LocalBackend

    return LocalBackend(base_path, warn=warn)


def _study(args: argparse.Namespace) -> int:
    from optdse.deploy.base import DeployError
    from optdse.progress import StudyProgress
    from optdse.spec import SpecError, load_study
    from optdse.study import default_storage, enqueue_seed_points, fail_abandoned, open_study, run_study

    try:
        study = load_study(args.name)
    except SpecError as error:
        return _fail("study", str(error))
    storage = args.storage or default_storage()
    try:
        optuna_study = open_study(study, storage)
    except ValueError as error:  # objectives differ from the stored study's
        return _fail("study", str(error))
    except Exception as error:  # noqa: BLE001  # a URL Optuna/SQLAlchemy cannot open: say which, no traceback
        return _fail("study", f"--storage {storage}: cannot open it ({type(error).__name__}: {error})")
    abandoned = fail_abandoned(optuna_study)
    if abandoned:
        console.print(f"resuming: trials {abandoned} were left RUNNING by a killed run; marked FAIL (abandoned)")
    enqueue_seed_points(optuna_study, study)
    target = args.trials or study.spec.trials
    _interrupt_on_signals()
    try:
        backend = _backend(args.backend or study.spec.backend, study.spec.model, args.swarm_init,
                           args.image or study.spec.image)
    except DeployError as error:
        return _fail("study", error.message, code=1)
    try:
        with StudyProgress(console, optuna_study, study, target) as progress:
            run_study(study, storage, backend, trials=target, requests=args.requests,
                      on_trial=progress.trial_done, optuna_study=optuna_study)
    except KeyboardInterrupt:
        console.print("interrupted: the current trial is recorded as FAIL (interrupted); "
                      "run the same command again to resume")
        return 130
    finally:
        backend.close()
    from optdse.export import pareto_frame

    console.print(f"\nPareto front of {study.name} ({len(pareto_frame(optuna_study))} configurations):")
    console.print(StudyProgress.pareto_table(optuna_study))
    console.print(f"storage: {storage}\n  optuna-dashboard {storage}\n  optdse export {study.name} --pareto pareto.csv"
                  + (f" --storage {storage}" if args.storage else ""))
    return 0


def _measure(args: argparse.Namespace) -> int:
    from optdse.config import ClientConfig, Config, ServerConfig
    from optdse.deploy.base import DeployError
    from optdse.objective import MeasureError, measure

    config = Config(ServerConfig(args.model, args.replicas, args.cpus, args.memory),
                    ClientConfig(args.threads, args.file_size, args.requests, args.warmup_fraction))
    _interrupt_on_signals()
    try:
        backend = _backend(args.backend, args.model, args.swarm_init, args.image)
    except DeployError as error:
        return _fail("measure", error.message, code=1)
    try:
        with console.status(f"measuring {config.describe()} ..."):
            result = measure(backend, config)
    except (DeployError, MeasureError) as error:
        return _fail("measure", f"{error.reason}: {error.message}", code=1)
    except KeyboardInterrupt:
        return 130
    finally:
        backend.close()
    figures = {"config": config.describe(), **result.as_dict()}
    if args.json:
        print(json.dumps(figures))
        return 0
    for key, value in figures.items():
        if key != "timeseries":
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import optuna

    from optdse.export import write_pareto_csv
    from optdse.spec import SpecError, find_study_file
    from optdse.study import default_storage

    try:
        name = find_study_file(args.name).stem
    except SpecError as error:
        return _fail("export", str(error))
    storage = args.storage or default_storage()
    try:
        optuna_study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return _fail("export", f"no study {name!r} in {storage}; run `optdse study {name}` first")
    frame = write_pareto_csv(optuna_study, args.pareto)
    print(f"wrote {len(frame)} Pareto-optimal trials to {args.pareto}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from optdse.deploy.cgroups import CgroupDriver
    from optdse.deploy.docker import clean_stale_containers
    from optdse.deploy.runs import clean_stale_runs

    driver, _ = CgroupDriver.detect()
    report = clean_stale_runs(driver)
    containers = clean_stale_containers(report.live)
    if not report.runs and not containers:
        print("nothing to clean: no leftovers of stopped optdse runs")
        return 0
    print(f"cleaned {len(report.runs)} stopped run(s): stopped processes {report.processes or 'none'}, "
          f"removed {len(report.cgroups)} cgroup directories and services/containers {containers or 'none'}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _cpus(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 64 cores (got {value:g})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optdse", description="Bayesian design-space optimizer for model serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or resume) the study defined in studies/NAME.yaml")
    study.add_argument("name", help="study name (studies/NAME.yaml) or a path to a study file")
    study.add_argument("--storage", help="Optuna storage URL (default: sqlite:///results/optdse.db)")
    study.add_argument("--trials", type=_positive_int, help="finished trials to reach (default: the study file's)")
    study.add_argument("--requests", type=_positive_int, help="requests per trial (default: the study file's)")
    study.add_argument("--backend", choices=["local", "docker", "swarm"], help="where replicas run (default: the study file's)")
    study.add_argument("--swarm-init", action="store_true", help="swarm: initialise a single-node swarm on 127.0.0.1 "
                                                                  "if this engine is in none")
    study.add_argument("--image", help="docker/swarm: the serving image (default: the study file's, host-python)")
    study.set_defaults(run=_study)

    measure = commands.add_parser("measure", help="measure one configuration, as a trial would")
    measure.add_argument("--model", default="mnist", choices=["mnist"])
    measure.add_argument("--threads", type=_positive_int, default=1, help="closed-loop client threads")
    measure.add_argument("--file-size", type=_positive_int, default=1, help="images per request (MNIST)")
    measure.add_argument("--replicas", type=_positive_int, default=1)
    measure.add_argument("--cpus", type=_cpus, default=1.0, help="CPU cores per replica")
    measure.add_argument("--memory", type=_positive_int, default=1000, help="memory per replica, MB")
    measure.add_argument("--requests", type=_positive_int, default=1000)
    measure.add_argument("--warmup-fraction", type=float, default=0.1)
    measure.add_argument("--backend", choices=["local", "docker", "swarm"], default="local")
    measure.add_argument("--swarm-init", action="store_true", help="swarm: initialise a single-node swarm on 127.0.0.1")
    measure.add_argument("--image", default="host-python",
                         help="docker/swarm: host-python, an optdse.serve image or tensorflow/serving")
    measure.add_argument("--json", action="store_true", help="print one JSON object")
    measure.set_defaults(run=_measure)

    export = commands.add_parser("export", help="write a study's Pareto front")
    export.add_argument("name")
    export.add_argument("--pareto", type=Path, required=True, metavar="FILE.csv")
    export.add_argument("--storage")
    export.set_defaults(run=_export)

    clean = commands.add_parser("clean", help="stop and remove what killed optdse runs left behind")
    clean.set_defaults(run=_clean)

    from serving.models import EXPORTERS

    model = commands.add_parser("model", help="build servable models").add_subparsers(dest="action", required=True)
    model_export = model.add_parser("export", help="train/build a model and write it as a SavedModel (DIR/VERSION/)")
    model_export.add_argument("name", choices=sorted(EXPORTERS))
    model_export.add_argument("--output", type=Path, required=True, help="model base path; versions go inside")
    model_export.add_argument("--version", type=int, default=1, help="version directory name (default 1)")
    model_export.add_argument("--data", type=Path, default=None, help="MNIST IDX files (default: scikit-learn's digits)")
    model_export.set_defaults(run=_model_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
