"""Importing optdse changes nothing global: no TensorFlow, no module registered by hand, no
warning filter or log level. Each check runs in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = '''
import importlib, logging, pkgutil, sys, warnings
for name in {third_party!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
filters = list(warnings.filters)
levels = {{name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}}
root = logging.getLogger().level
modules = set(sys.modules)
import optdse
names = [m.name for m in pkgutil.walk_packages(optdse.__path__, "optdse.")]
for name in names:
    importlib.import_module(name)
assert len(names) > 30, names
assert "tensorflow" not in sys.modules, "importing optdse registered or imported tensorflow"
assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]
changed = {{n: logging.getLogger(n).level for n in levels if logging.getLogger(n).level != levels[n]}}
assert not changed and logging.getLogger().level == root, changed
print("ok", len(names))
'''


def _third_party_imports() -> list[str]:
    """The top-level packages optdse's modules import (so they are loaded, with whatever they
    set themselves, before the snapshot)."""
    names: set[str] = set()
    for path in (ROOT / "optdse").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(names - {"optdse", "serving", "tensorflow", "tensorflow_serving", "__future__"})


def test_importing_every_optdse_module_changes_nothing_global() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK.format(third_party=_third_party_imports())],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


def test_grid_and_study_loop_do_not_import_each_other() -> None:
    """The grid builds on the study loop; both take the levels from optdse.levels."""
    study = ast.parse((ROOT / "optdse" / "study.py").read_text())
    imported = {node.module for node in ast.walk(study) if isinstance(node, ast.ImportFrom)}
    assert "optdse.grid" not in imported


def test_no_backend_imports_another_backends_module() -> None:
    """Backends share through optdse.deploy.base (the lifecycle) and optdse.deploy.engine
    (Docker engines), never through each other."""
    backends = {"local", "docker", "swarm"}
    for name in backends:
        tree = ast.parse((ROOT / "optdse" / "deploy" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {f"optdse.deploy.{other}" for other in backends - {name}}, (name, imported)
