"""A record on disk of what each optdse run started, so a SIGKILLed run can be cleaned up.

Each run owns `STATE_DIR/<run id>/`: `owner.json` (pid and start time of the optdse process)
one `replica-N.json` per live replica (its pid, start time, port, cgroup) and one
`relay-PID.json` per network relay (optdse/network.py). A run whose
owner is gone is stale; `clean_stale_runs` stops its replicas by their recorded pids (checked
against their start times, so a reused pid is never hit) and removes its cgroups.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from optdse.deploy.cgroups import CgroupDriver, remove_dir


def state_dir() -> Path:
    return Path(os.environ.get("OPTDSE_STATE_DIR", f"/tmp/optdse-{os.getuid()}"))


def live_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is still the one that started at `create_time`, else None."""
    try:
        process = psutil.Process(pid)
        same = abs(process.create_time() - create_time) < 0.5
        # A SIGKILLed process can linger as a zombie until its parent reaps it: it is gone.
        return process if same and process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


@dataclass
class Run:
    """This process's record; the run id names its state directory and its cgroups."""

    run_id: str
    directory: Path

    @classmethod
    def start(cls) -> Run:
        me = psutil.Process()
        run_id = f"{me.pid}-{int(me.create_time() * 1000)}"
        directory = state_dir() / run_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "owner.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
        return cls(run_id, directory)

    def record_process(self, name: str, pid: int, **details: object) -> None:
        """A process this run started and `optdse clean` must stop (a replica, the network
        relay), identified by pid and start time, with `details` for people reading the record."""
        info = {"pid": pid, "create_time": psutil.Process(pid).create_time(), **details}
        (self.directory / f"{name}.json").write_text(json.dumps(info))

    def record_replica(self, name: str, pid: int, port: int, cgroup: str | None) -> None:
        self.record_process(name, pid, port=port, cgroup=cgroup)

    def forget_replica(self, name: str) -> None:
        (self.directory / f"{name}.json").unlink(missing_ok=True)

    def finish(self) -> list[int]:
        """End the run: stop whatever it recorded and has not stopped yet (a replica started
        as Ctrl-C arrived, before its backend knew it), remove its record. Returns those pids."""
        stopped = stop_recorded(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)
        return stopped


def host_lock_path() -> Path:
    """The one lock file of this host for running trials, whoever runs them: not under a
    user's state directory, so two users (or two OPTDSE_STATE_DIRs) on one host still measure
    one at a time. Named after the host name, which is what a trial records as its host."""
    return Path("/tmp") / f"optdse-measuring-{socket.gethostname()}.lock"


@contextlib.contextmanager
def measuring_lock() -> Iterator[bool]:
    """This host's lock for running trials, held while the block runs: yields whether this
    process got it. Trials measured at the same time on one host share its CPUs, which
    falsifies both ART and ACU.

    An flock on `host_lock_path()`, which the kernel drops when its holder exits, however it
    exits, so a killed worker never leaves the host locked; the file (empty, readable by all
    so any user can lock it) stays. `other_live_runs` says who holds it."""
    path = host_lock_path()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # close-on-exec: replicas do not inherit it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def other_live_runs() -> list[int]:
    """The pids of the other optdse processes on this host that have replicas deployed (their
    runs in this state directory): a trial measured now shares the host with them."""
    root = state_dir()
    pids = []
    for directory in root.iterdir() if root.is_dir() else []:
        pid = directory.name.partition("-")[0]  # run ids are <pid>-<start time>
        if directory.is_dir() and pid.isdigit() and int(pid) != os.getpid() and _owner_alive(directory):
            pids.append(int(pid))
    return sorted(pids)


@dataclass
class CleanReport:
    runs: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    live: set[str] = field(default_factory=set)  # runs whose optdse process still runs: untouched


def _stop(process: psutil.Process, grace: float = 10.0) -> None:
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(grace)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(5)
    except psutil.NoSuchProcess:
        pass


def stop_recorded(directory: Path) -> list[int]:
    """Stop the processes recorded in a run's directory that still run (checked against their
    start times, so a reused pid is never hit); their pids."""
    stopped = []
    for record in directory.glob("*.json"):
        if record.name == "owner.json":
            continue
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):  # removed meanwhile, or cut short by a kill while written
            continue
        process = live_process(info["pid"], info["create_time"])
        if process is not None:
            _stop(process)
            stopped.append(info["pid"])
    return stopped


def run_owner_alive(run_id: str) -> bool:
    """Whether the optdse process a run id names (`<pid>-<start time in ms>`, see Run.start) runs."""
    pid, _, started_ms = run_id.partition("-")
    if not (pid.isdigit() and started_ms.isdigit()):
        return False
    return live_process(int(pid), int(started_ms) / 1000) is not None


def _owner_alive(directory: Path) -> bool:
    try:
        owner = json.loads((directory / "owner.json").read_text())
    except (OSError, ValueError):
        return False
    return live_process(owner["pid"], owner["create_time"]) is not None


def clean_stale_runs(driver: CgroupDriver | None) -> CleanReport:
    """Stop and remove what runs whose optdse process is gone left behind. Live runs are untouched."""
    report = CleanReport()
    live = report.live
    root = state_dir()
    for directory in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if _owner_alive(directory):
            live.add(directory.name)
            continue
        report.processes += stop_recorded(directory)
        shutil.rmtree(directory, ignore_errors=True)
        report.runs.append(directory.name)
    if driver is not None:
        for run_id in driver.run_dirs():
            # A run's cgroups are under its id, which names its owner: a run recorded in
            # another state directory (another user's OPTDSE_STATE_DIR) is live all the same.
            if run_id in live or run_owner_alive(run_id):
                live.add(run_id)
                continue
            stopped, groups = remove_run_groups(driver, run_id)
            report.processes += stopped
            report.cgroups += groups
            if run_id not in report.runs:
                report.runs.append(run_id)
    report.processes = sorted(set(report.processes))
    return report


def remove_run_groups(driver: CgroupDriver, run_id: str) -> tuple[list[int], list[str]]:
    """Remove optdse/<run_id>/ in every tree, stopping whatever is still inside.

    Anything in optdse/<run id>/ was put there by that optdse run, so stopping it is safe.
    Returns the pids stopped and the groups removed."""
    stopped: list[int] = []
    removed: list[str] = []
    for run_dir in driver.run_dirs().get(run_id, set()):
        try:
            groups = sorted(p for p in run_dir.iterdir() if p.is_dir())
        except FileNotFoundError:  # removed meanwhile (its run was closing, or another `optdse clean` ran)
            continue
        for group in groups:
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except FileNotFoundError:  # removed meanwhile (its run was closing)
                continue
            for pid in pids:
                try:
                    _stop(psutil.Process(pid))
                    stopped.append(pid)
                except psutil.NoSuchProcess:
                    pass
            remove_dir(group)
            removed.append(str(group))
        remove_dir(run_dir)
    return stopped, removed


__all__ = ["CleanReport", "Run", "clean_stale_runs", "live_process", "measuring_lock", "other_live_runs",
           "remove_run_groups", "run_owner_alive", "state_dir", "stop_recorded"]
