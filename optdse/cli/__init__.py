"""The `optdse` command line. Each subcommand is a thin layer over one module of optdse:

- arguments.py: the grammar (subcommands, options, their checks);
- trials.py: study, worker, grid (the trial loop under the host's measuring lock);
- measure.py: measure (one configuration);
- stored.py: export, report, dashboard (a stored study);
- tools.py: clean, model export;
- backends.py, output.py: what they share (making a backend; printing and one-line errors).

Heavy imports (optuna, pandas) happen inside the subcommands, so `optdse --help` and
`optdse clean` stay fast. TensorFlow is never imported here except by `model export`.
"""

from __future__ import annotations

import sys

from optdse import signals
from optdse.cli.arguments import build_parser
from optdse.cli.output import console


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


__all__ = ["build_parser", "main"]
