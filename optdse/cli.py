"""The `optdse` command line. Each subcommand is a thin layer over one module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _model_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from serving.models import export_model
    from serving.tensorflow_import import import_tensorflow

    import_tensorflow()

    console = Console(stderr=True)
    with console.status(f"training and exporting {args.name} ..."):
        try:
            result = export_model(args.name, args.output, version=args.version, data=args.data)
        except (ValueError, FileExistsError, FileNotFoundError) as error:
            print(f"optdse model export: error: {error}", file=sys.stderr)
            return 2
    print(f"exported {result.model} to {result.path}")
    print(f"  data set: {result.dataset} ({result.train_examples} train / {result.test_examples} held out)")
    print(f"  weights:  {result.weights}")
    if result.held_out_accuracy is not None:
        print(f"  held-out accuracy: {result.held_out_accuracy:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from serving.models import EXPORTERS

    parser = argparse.ArgumentParser(prog="optdse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="build servable models").add_subparsers(dest="action", required=True)
    export = model.add_parser("export", help="train/build a model and write it as a SavedModel (DIR/VERSION/)")
    export.add_argument("name", choices=sorted(EXPORTERS))
    export.add_argument("--output", type=Path, required=True, help="model base path; the version directory goes inside")
    export.add_argument("--version", type=int, default=1, help="version directory name (default 1)")
    export.add_argument("--data", type=Path, default=None, help="MNIST IDX files (default: scikit-learn's digits)")
    export.set_defaults(run=_model_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
