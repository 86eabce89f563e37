"""The backend a command deploys replicas with, made from its name and the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from optdse import signals
from optdse.cli.output import console, warn

if TYPE_CHECKING:
    from optdse.deploy.base import Backend
    from optdse.models import Model


def backend_for(name: str, model: Model, args: argparse.Namespace, image: str = "host-python",
                server: str = "optdse-serve") -> Backend:
    """The named backend, ready to deploy `model` (exported on first use) from `image`
    (docker and swarm only), with the command line's swarm options; a DeployError before
    anything starts if `server` is Triton and it is not installed."""
    from optdse.deploy.base import DeployError
    from optdse.models import ensure_model

    if server == "triton":
        from optdse.triton.install import TritonMissing, find

        try:
            find()
        except TritonMissing as error:
            raise DeployError("triton", str(error)) from None

    base_path = ensure_model(model, console)
    with signals.atomic():  # a backend records its run on disk as it starts: all of that, or none
        return _new_backend(name, base_path, args, image)


def _new_backend(name: str, base_path: Path, args: argparse.Namespace, image: str) -> Backend:
    if name == "swarm":
        from optdse.deploy.swarm import SwarmBackend

        return SwarmBackend(base_path, warn=warn, swarm_init=args.swarm_init, image=image,
                            engines=dict(args.swarm_engine or []))
    if name == "docker":
        from optdse.deploy.docker import DockerBackend

        return DockerBackend(base_path, warn=warn, image=image)
    from optdse.deploy.local import LocalBackend

    # OPTDSE_PARK_IDLE=0: stop replicas a trial no longer needs (gives their memory back)
    # instead of parking them for a later trial.
    return LocalBackend(base_path, warn=warn, park_idle=os.environ.get("OPTDSE_PARK_IDLE", "1") != "0")


__all__ = ["backend_for"]
