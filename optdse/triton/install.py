"""Triton Inference Server from PyPI, unpacked into the project's environment (`.venv/triton`).

NVIDIA publishes no `tritonserver` package for pip, but the nvidia-pytriton wheel carries one:
Triton 2.51.0 (NGC 24.10), its Python backend and a backend stub per Python version. It is a
GPU build that runs on CPU (it logs that CUDA and NVML are absent). pytriton itself requires
numpy < 2, which cannot live beside this project's numpy 2, so `install` downloads the wheel
(`pip download --no-deps`, PyPI only) and unpacks the server, its backend and its bundled
libraries; the pytriton package is never installed. The layout inside the wheel is kept, so
the binaries' RPATHs ($ORIGIN/../../../nvidia_pytriton.libs) resolve.

Two things the Python backend needs that this module sets up:

- the stub embeds CPython by linking `libpython3.X.so`: it must be the library of the
  interpreter whose standard library it then reads (Debian's 3.11.2 library under pyenv's
  3.11.7 standard library fails in `threading`), so LD_LIBRARY_PATH starts with this
  interpreter's LIBDIR;
- the 24.10 stub hands tensors over in numpy 1.x's C layout (under numpy 2 every response
  fails: "output tensor shape does not match size of output"), so the stub runs in an
  environment of its own holding numpy 1.26.4 (`stub-env`, first on PATH: the embedded
  interpreter takes its prefix from `python3` there). serving/triton_model.py then appends
  this environment's site-packages, for TensorFlow and optdse's own serving code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The wheel that carries tritonserver, and the Triton release inside it.
WHEEL = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
#: The numpy the 24.10 Python backend stub was built against (see the module docstring).
STUB_NUMPY = "numpy==1.26.4"
_SERVER_PREFIX = "pytriton/tritonserver/"
_LIBS_PREFIX = "nvidia_pytriton.libs/"


class TritonMissing(RuntimeError):
    """Triton is not installed in this environment, or cannot run here; str() says what to do."""


def home(prefix: Path | None = None) -> Path:
    """Where Triton lives: beside this environment's packages (`.venv/triton`)."""
    return (prefix or Path(sys.prefix)) / "triton"


@dataclass(frozen=True)
class TritonInstall:
    """An unpacked tritonserver and what its processes need to run."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / "server" / _SERVER_PREFIX / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        """--backend-directory: `python/` holds the backend, its utilities and the stub."""
        return self.root / "server" / _SERVER_PREFIX / "backends"

    @property
    def libraries(self) -> Path:
        return self.root / "server" / _LIBS_PREFIX

    @property
    def stub_env(self) -> Path:
        return self.root / "stub-env"

    @property
    def version(self) -> str:
        marker = self.root / "VERSION"
        return marker.read_text().strip() if marker.exists() else ""

    def environment(self) -> dict[str, str]:
        """tritonserver's environment: the stub's numpy-1 environment first on PATH, this
        interpreter's libpython first on the library path (the module docstring says why)."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.stub_env / "bin"), env.get("PATH", "/usr/bin:/bin")])
        library_path = [libpython_dir(), str(self.libraries), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(part for part in library_path if part)
        env.pop("PYTHONPATH", None)  # the stub's own numpy must come first; the model appends the rest
        return env


def libpython_dir() -> str:
    """The folder holding this interpreter's libpython3.X.so (its LIBDIR)."""
    return str(sysconfig.get_config_var("LIBDIR") or "")


def find(prefix: Path | None = None) -> TritonInstall:
    """The installed Triton, or TritonMissing saying how to install it."""
    install = TritonInstall(home(prefix))
    if install.version != TRITON_VERSION or not os.access(install.server, os.X_OK):
        raise TritonMissing(f"Triton {TRITON_VERSION} is not installed in {install.root}: run "
                            f"`{Path(sys.prefix) / 'bin' / 'optdse'} triton install` (downloads {WHEEL} from PyPI, "
                            "55 MB, once)")
    return install


def _check_python() -> str:
    """The Python version whose backend stub to unpack; TritonMissing where the stub cannot
    embed this interpreter (no shared libpython)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    library = Path(libpython_dir()) / f"libpython{version}.so.1.0"
    if not library.exists():
        raise TritonMissing(f"Triton's Python backend embeds CPython through {library.name}, and this Python "
                            f"({sys.executable}) has none in {libpython_dir() or 'its LIBDIR'}: use a Python "
                            "built with --enable-shared (Debian's, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)")
    return version


def install(prefix: Path | None = None, log: Callable[[str], None] = print) -> TritonInstall:
    """Download the wheel, unpack the server and make the stub's environment; a no-op when
    this release is already installed. Safe to interrupt: it unpacks beside the target and
    moves into place last."""
    try:
        return find(prefix)
    except TritonMissing:
        pass
    version = _check_python()
    target = home(prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optdse-triton-", dir=target.parent) as scratch:
        work = Path(scratch)
        log(f"downloading {WHEEL} from PyPI (55 MB; only its tritonserver is used) ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(work / "wheel"), WHEEL], check=True)
        wheel = next((work / "wheel").glob("*.whl"))
        staged = work / "triton"
        _unpack(wheel, staged / "server", version)
        log(f"making the backend stub's environment ({STUB_NUMPY}) ...")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staged / "stub-env")], check=True)
        site = staged / "stub-env" / "lib" / f"python{version}" / "site-packages"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--target", str(site), STUB_NUMPY], check=True)
        (staged / "VERSION").write_text(TRITON_VERSION + "\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    found = find(prefix)
    log(f"Triton {found.version} installed: {found.server}")
    return found


def _unpack(wheel: Path, destination: Path, version: str) -> None:
    """The server, its backends and libraries from `wheel`; of the backend stubs only this
    Python's, placed where the backend looks for it (backends/python/)."""
    stub = f"{_SERVER_PREFIX}python_backend_stubs/{version}/triton_python_backend_stub"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            wanted = member.startswith(_LIBS_PREFIX) or (
                member.startswith(_SERVER_PREFIX) and "/python_backend_stubs/" not in member)
            if wanted and not member.endswith("/"):
                archive.extract(member, destination)
        stub_path = destination / _SERVER_PREFIX / "backends" / "python" / "triton_python_backend_stub"
        with archive.open(stub) as source, stub_path.open("wb") as copy:
            shutil.copyfileobj(source, copy)
    for executable in (destination / _SERVER_PREFIX / "bin" / "tritonserver", stub_path):
        executable.chmod(0o755)


__all__ = ["STUB_NUMPY", "TRITON_VERSION", "WHEEL", "TritonInstall", "TritonMissing", "find", "home", "install",
           "libpython_dir"]
