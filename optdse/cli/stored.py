"""The commands that read a stored study: `optdse export`, `report` and `dashboard`."""

from __future__ import annotations

import argparse
from typing import Any

from optdse import signals
from optdse.cli.output import cannot_open, console, fail, quiet_optuna, shown


def stored_study(command: str, args: argparse.Namespace) -> tuple[Any, str] | int:
    """The study NAME and the storage URL it is in (--storage or the default), or the exit
    code of a one-line error."""
    import optuna

    from optdse.spec import SpecError
    from optdse.study_file import find_study_file
    from optdse.storage import OPEN_ERRORS, default_storage

    try:
        name = find_study_file(args.name).stem
    except SpecError as error:
        return fail(command, str(error))
    storage = args.storage or default_storage()
    quiet_optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage), storage
    except KeyError:
        return fail(command, f"no study {name!r} in {shown(storage)}; run `optdse study {name}` first")
    except OPEN_ERRORS as error:  # a URL Optuna/SQLAlchemy cannot open
        return cannot_open(command, storage, error)


def export(args: argparse.Namespace) -> int:
    from optdse.export import write_pareto_csv

    found = stored_study("export", args)
    if isinstance(found, int):
        return found
    study, _ = found
    frame = write_pareto_csv(study, args.pareto)
    print(f"wrote {len(frame)} Pareto-optimal trials to {args.pareto}")
    return 0


def report(args: argparse.Namespace) -> int:
    import optuna

    from optdse.report import write_report

    found = stored_study("report", args)
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


def dashboard(args: argparse.Namespace) -> int:
    from optdse.dashboard import dashboard_server, save_hypervolume_plot

    found = stored_study("dashboard", args)
    if isinstance(found, int):
        return found
    study, storage = found
    save_hypervolume_plot(study)
    try:
        server = dashboard_server(storage, args.port)
    except OSError as error:  # a busy port is one line, not a server traceback
        return fail("dashboard", f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} ({error.strerror})")
    print(f"optuna-dashboard for {study.study_name} ({shown(storage)}): http://127.0.0.1:{args.port}/dashboard/", flush=True)
    console.print("  each trial's page has its figures as a note; the study's page has the hypervolume history."
                  "\n  Ctrl-C stops it.")
    with server:
        try:
            server.serve_forever(poll_interval=0.5)  # until a stop signal raises here
        except KeyboardInterrupt as interrupt:  # the way a server is meant to end: exit 0, like optdse-serve
            console.print(f"optdse dashboard: stopped by {signals.signal_name(interrupt)}")
    return 0


__all__ = ["dashboard", "export", "report", "stored_study"]
