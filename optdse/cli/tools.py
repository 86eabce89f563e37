"""The commands that look after the machine rather than a study: `optdse clean` and
`optdse model export` (the only one that imports TensorFlow)."""

from __future__ import annotations

import argparse
import sys

from optdse.cli.output import console, fail


def clean(args: argparse.Namespace) -> int:
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


def model_export(args: argparse.Namespace) -> int:
    from serving.models import export_model
    from serving.tensorflow_import import import_tensorflow

    tf = import_tensorflow()
    with console.status(f"building and exporting {args.name} ..."):
        try:
            result = export_model(args.name, args.output, version=args.version, data=args.data, weights=args.weights)
        except (ValueError, OSError, tf.errors.OpError) as error:  # bad data or weights, a path it cannot write
            return fail("model export", str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(f"exported {result.model} to {result.path}")
    print(f"  data set: {result.dataset} ({result.train_examples} train / {result.test_examples} held out)")
    print(f"  weights:  {result.weights}")
    if result.held_out_accuracy is not None:
        print(f"  held-out accuracy: {result.held_out_accuracy:.4f}")
    return 0


def triton_install(args: argparse.Namespace) -> int:
    """`optdse triton install`: tritonserver and its backend stub's environment into .venv/triton."""
    import subprocess

    from optdse.triton.install import TritonMissing, install

    try:
        found = install(log=console.print)
    except TritonMissing as error:
        return fail("triton install", str(error), code=1)
    except subprocess.CalledProcessError as error:
        return fail("triton install", f"{' '.join(map(str, error.cmd[:4]))} ... failed with exit code {error.returncode} "
                                      "(is PyPI reachable?)", code=1)
    console.print(f"Triton {found.version}: {found.server}")
    return 0


__all__ = ["clean", "model_export", "triton_install"]
