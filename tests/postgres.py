"""A throwaway PostgreSQL server for the worker tests and the storage benchmark: a cluster made
by initdb in a temporary directory, its postmaster a child of this process (run as the
`postgres` user, since PostgreSQL refuses root), listening on 127.0.0.1 only, stopped by its
pid and deleted afterwards. Uses Debian's server binaries (apt-get install postgresql), never
the package's own service."""

from __future__ import annotations

import glob
import itertools
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from optdse.deploy.base import free_port
from tests.processes import stop_process


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed."""


class PostgresServer:
    def __init__(self, root: Path, binaries: Path) -> None:
        self.root, self.bin = root, binaries
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = itertools.count()

    @classmethod
    def start(cls, timeout: float = 60) -> PostgresServer:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not found or shutil.which("runuser") is None:
            raise PostgresMissing("PostgreSQL is not installed (apt-get install postgresql)")
        # Not under pytest's basetemp: the postgres user must traverse every directory above
        # its cluster, and pytest makes its own 0700.
        root = Path(tempfile.mkdtemp(prefix="optdse-postgres-"))
        root.chmod(0o755)
        server = cls(root, Path(found[-1]))
        try:
            server._run(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, timeout: float) -> None:
        cluster = self.root / "cluster"
        cluster.mkdir(mode=0o700)
        shutil.chown(cluster, "postgres", "postgres")
        subprocess.run([self.bin / "initdb", "-D", cluster / "data", "-U", "optdse", "-A", "trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, user="postgres", group="postgres")
        self._start(timeout)

    def _start(self, timeout: float) -> None:
        cluster = self.root / "cluster"
        log = cluster / "log"
        with log.open("a") as stderr:  # the server keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [self.bin / "postgres", "-D", cluster / "data", "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={cluster}", "-c", "fsync=off"],
                user="postgres", group="postgres", stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        probe = [self.bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, check=False).returncode == 0

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL (psycopg 3)."""
        name = f"optdse_{next(self._databases)}"
        subprocess.run([self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "optdse", name],
                       check=True, capture_output=True)
        return f"postgresql+psycopg://optdse@127.0.0.1:{self.port}/{name}"

    def restart(self, down_s: float, timeout: float = 60) -> None:
        """Stop the server (fast shutdown: clients' connections are cut), keep it down for
        `down_s`, start it again on the same port with the same data."""
        self._shutdown()
        time.sleep(down_s)
        self._start(timeout)

    def _shutdown(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster this object started."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, grace_s=30)

    def stop(self) -> None:
        """Stop the postmaster this object started, then delete the cluster."""
        self._shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["PostgresMissing", "PostgresServer"]
