"""The command line's grammar: every subcommand, its options and their checks, each bound to
the function in optdse/cli/ that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optdse.cli import measure as measure_command
from optdse.cli import stored, tools, trials
from optdse.cli.measure import DEFAULT_RULE
from optdse.config import ARRIVALS, GRACE_HEARTBEATS, HEARTBEAT_S, NETWORK_METHODS, PROTOCOLS


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
    parser.add_argument("--server", choices=["optdse-serve", "tensorflow-serving", "triton"],
                        help="what the replicas run (default: the study file's); the search space's server knobs "
                             "must be that server's")
    _add_swarm_engine_option(parser)
    parser.add_argument("--swarm-init", action="store_true",
                        help="swarm: initialise a single-node swarm on 127.0.0.1 if this engine is in none")
    parser.add_argument("--image", help="docker/swarm: the serving image (default: the study file's, host-python)")


def _add_knob_options(parser: argparse.ArgumentParser) -> None:
    """The server's own knobs (optdse/knobs.py), under TF Serving's flag names or Triton's
    model configuration names, with dashes; unset ones keep the server's default."""
    from optdse.knobs import KNOBS, SWITCH_KNOBS, TRITON_KNOBS

    parser.add_argument("--server", choices=["optdse-serve", "triton"], default="optdse-serve",
                        help="what the replicas run: optdse-serve (default) or NVIDIA Triton (local backend; "
                             "`optdse triton install` first)")
    groups = (("server knobs", "passed to every optdse-serve replica as its own flags or batching file", KNOBS),
              ("triton knobs", "written to the model configuration of every Triton replica (--max-batch-size too)",
               {k: v for k, v in TRITON_KNOBS.items() if k not in KNOBS}))
    for title, description, knobs in groups:
        group = parser.add_argument_group(title, description)
        for name, (what, minimum) in knobs.items():
            flag = "--" + name.replace("_", "-")
            if name in SWITCH_KNOBS:
                group.add_argument(flag, action="store_true", default=None, help=what.replace(" (0 or 1)", ""))
            else:
                group.add_argument(flag, type=_positive_int if minimum else _non_negative_int, metavar="N", help=what)


def build_parser() -> argparse.ArgumentParser:
    from optdse.models import BUILTINS

    parser = argparse.ArgumentParser(prog="optdse", description="Bayesian design-space optimizer for model serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or resume) the study defined in studies/NAME.yaml")
    study.add_argument("--trials", type=_positive_int, help="finished trials to reach (default: the study file's)")
    _add_trial_options(study)
    study.set_defaults(run=trials.study)

    worker = commands.add_parser("worker", help="run trials of study NAME in a shared storage, with workers on other "
                                                "hosts (creates the study if it does not exist)")
    worker.add_argument("--trials", type=_positive_int,
                        help="finished trials the study must reach, counting every worker's (default: the study file's)")
    _add_trial_options(worker)
    worker.set_defaults(run=trials.worker)

    grid = commands.add_parser("grid", help="measure the study's search space exhaustively (the baseline), "
                                            "as study NAME-grid in the same storage")
    grid.add_argument("--levels", type=_positive_int, default=3, help="values per varied parameter (default 3)")
    _add_trial_options(grid)
    grid.set_defaults(run=trials.grid)

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
    measure.set_defaults(run=measure_command.measure)

    export = commands.add_parser("export", help="write a study's Pareto front")
    export.add_argument("name")
    export.add_argument("--pareto", type=Path, required=True, metavar="FILE.csv")
    export.add_argument("--storage")
    export.set_defaults(run=stored.export)

    report = commands.add_parser("report", help="write a study's results as one offline HTML page")
    report.add_argument("name")
    report.add_argument("--output", type=Path, default=Path("report.html"), metavar="FILE.html")
    report.add_argument("--storage")
    report.set_defaults(run=stored.report)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    dashboard.add_argument("name")
    dashboard.add_argument("--storage")
    dashboard.add_argument("--port", type=_positive_int, default=8080)
    dashboard.set_defaults(run=stored.dashboard)

    clean = commands.add_parser("clean", help="stop and remove what killed optdse runs left behind")
    _add_swarm_engine_option(clean, "swarm: also the Docker engine of node NODE, whose containers of stopped runs "
                                    "are removed and waited for there (repeat the option per node)")
    clean.set_defaults(run=tools.clean)

    triton = commands.add_parser("triton", help="NVIDIA Triton Inference Server, the second server").add_subparsers(
        dest="action", required=True)
    triton_install = triton.add_parser("install", help="download tritonserver (the nvidia-pytriton wheel, PyPI) into "
                                                       "this environment, once")
    triton_install.set_defaults(run=tools.triton_install)

    from serving.models import EXPORTERS

    model = commands.add_parser("model", help="build servable models").add_subparsers(dest="action", required=True)
    model_export = model.add_parser("export", help="train/build a model and write it as a SavedModel (DIR/VERSION/)")
    model_export.add_argument("name", choices=sorted(EXPORTERS))
    model_export.add_argument("--output", type=Path, required=True, help="model base path; versions go inside")
    model_export.add_argument("--version", type=int, default=1, help="version directory name (default 1)")
    model_export.add_argument("--data", type=Path, default=None, help="mnist: MNIST IDX files (default: scikit-learn's digits)")
    model_export.add_argument("--weights", type=Path, default=None,
                              help="inception: a Keras weights file (default: random initialisation)")
    model_export.set_defaults(run=tools.model_export)
    return parser


__all__ = ["build_parser"]
