"""Every long-running command stops on SIGINT (Ctrl-C) and on SIGTERM (`kill`) at any moment of
its life: it exits with 128 + the signal's number and no traceback, records a trial it was
measuring as `interrupted`, and leaves nothing running (no process it started, no cgroup, no
container, no state record).

Each case starts the real command, waits until it has reached a named moment (opening a
storage that does not answer, deploying a replica, driving load, waiting for other workers,
serving a request), sends the signal to its pid alone (not its process group: the harder case,
where no child hears the signal too) and checks what it left. Servers (`optdse dashboard` once
it serves, `optdse-serve`, the network relay) end that way normally and exit 0.

Where a command has two moments, each gets one of the two signals (`each_moment`): both
signals go through one handler (optdse/signals.py), so every moment and every signal is
covered without the four runs per command that cost CI about 50 s more.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.base import free_port
from optdse.deploy.engine import LABEL_RUN, docker_client
from tests.optdse_tests.conftest import require_docker, write_study
from tests.serving_process import ServerProcess, optdse_command

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cgroup_driver")]  # the real-system layer

#: A generous bound on how long a command may take to stop: "within a few seconds" on a quiet
#: machine, with room for a loaded CI host. Not a timing claim: a command that hangs fails it.
STOP_BOUND_S = 30
#: How long a command may take to reach a moment (a first replica loads TensorFlow).
REACH_BOUND_S = 180
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def each_moment(first: str, second: str) -> pytest.MarkDecorator:
    """Parametrise (moment, signum): `first` with SIGINT, `second` with SIGTERM."""
    return pytest.mark.parametrize(("moment", "signum"), [pytest.param(first, signal.SIGINT, id=f"{first}-SIGINT"),
                                                          pytest.param(second, signal.SIGTERM, id=f"{second}-SIGTERM")])


@dataclass
class Command:
    """A command under test: its process, its output so far (read by a thread, so waiting for
    a moment never blocks on a pipe) and every descendant seen while it ran."""

    process: subprocess.Popen[str]
    project: Path
    seen: dict[int, float] = field(default_factory=dict)  # pid -> create time
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def look(self) -> list[psutil.Process]:
        """Its descendants now, remembered (replicas have sessions of their own, but are its children)."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                self.seen.setdefault(child.pid, child.create_time())
            except psutil.NoSuchProcess:
                pass
        return children

    def wait_for(self, moment: str, reached: Callable[[Command], bool]) -> None:
        deadline = time.monotonic() + REACH_BOUND_S
        while not reached(self):
            self.look()
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"never reached '{moment}' (exit {self.process.returncode}): {self.output[-3000:]}")
            time.sleep(0.1)  # each look scans every process of the machine; the moments last a second or more
        self.look()

    def signal_and_wait(self, signum: int) -> str:
        """Send `signum` to the command's pid; its whole output once it has exited."""
        self.look()
        self.process.send_signal(signum)
        try:
            self.process.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {STOP_BOUND_S} s after {signal.Signals(signum).name}: {self.output[-3000:]}")
        self.reader.join(10)
        return self.output

    def kill(self) -> None:
        """Kill what this test started (by pid), for a failing test's clean-up."""
        for pid in [self.process.pid, *self.seen]:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        self.process.wait(30)
        self.reader.join(10)

    def leftovers(self) -> list[str]:
        """What the command left: live descendants, state records, cgroups, containers."""
        left = []
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) < 0.5 and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"process {pid} ({' '.join(process.cmdline())[:120]})")
            except psutil.NoSuchProcess:
                pass
        state = self.project / "state"
        left += [f"state record {p}" for p in state.rglob("*") if p.is_file()] if state.is_dir() else []
        driver, _ = CgroupDriver.detect()
        if driver is not None:
            left += [f"cgroup {d}" for tree in driver.trees() for d in (tree / "optdse").glob(f"{self.process.pid}-*")]
        return left


@pytest.fixture
def start(project: Path) -> Iterator[Callable[..., Command]]:
    """Start `optdse ARGS...` in the project (in a session of its own, as a terminal job)."""
    started: list[Command] = []

    def run(*args: str) -> Command:
        process = subprocess.Popen([*optdse_command(), *args], cwd=project, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        command = Command(process, project)
        started.append(command)
        return command

    yield run
    for command in started:
        if command.process.poll() is None:
            command.kill()


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A PostgreSQL URL whose "server" accepts connections and never answers: a command
    opening it is stuck in its start-up until it is stopped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"postgresql+psycopg://optdse:secret@127.0.0.1:{listener.getsockname()[1]}/silent"
    done.set()
    thread.join(5)
    for connection in held:
        connection.close()
    listener.close()


def _connected_to(url: str) -> Callable[[Command], bool]:
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    def reached(command: Command) -> bool:
        try:
            connections = psutil.Process(command.process.pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections)

    return reached


def _deploying(command: Command) -> bool:
    """A replica has been started and recorded (it is still importing TensorFlow then)."""
    return any((command.project / "state").glob("*/replica-*.json"))


def _loading(command: Command) -> bool:
    """Load workers (children of the load generator's fork server) are running."""
    for child in command.look():
        try:
            if "forkserver" in " ".join(child.cmdline()) and child.children():
                return True
        except psutil.Error:
            continue
    return False


def _stopped_cleanly(command: Command, output: str, signum: int, code: int | None = None) -> None:
    """Exit `code` (default 128 + the signal's number), no traceback, nothing left."""
    assert command.process.returncode == (128 + signum if code is None else code), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output, output[-3000:]
    assert not command.leftovers(), command.leftovers()


def _trials(project: Path, name: str, storage: str = "sqlite:///results/optdse.db") -> list[optuna.trial.FrozenTrial]:
    url = storage.replace("sqlite:///", f"sqlite:///{project}/") if storage.startswith("sqlite:///results") else storage
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _one_interrupted(trials: list[optuna.trial.FrozenTrial], signum: int) -> None:
    """No trial left RUNNING; the one being measured is FAIL `interrupted`, saying by what."""
    assert TrialState.RUNNING not in [t.state for t in trials]
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["fail_reason"] == "interrupted"
    assert failed.user_attrs["fail_message"] == f"stopped by {signal.Signals(signum).name}"


LONG_LOAD = ("--requests", "1000000", "--duration", "60")


@pytest.mark.parametrize("signum", SIGNALS)
def test_study_stops_while_opening_its_storage(start: Callable[..., Command], project: Path, silent_database: str,
                                               signum: int) -> None:
    write_study(project, "opening")
    command = start("study", "opening", "--storage", silent_database)
    command.wait_for("opening the storage", _connected_to(silent_database))
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)
    assert "secret" not in output


@each_moment("deploying", "loading")
def test_study_stops_while_measuring(start: Callable[..., Command], project: Path, moment: str, signum: int) -> None:
    write_study(project, "busy", trials=5)
    command = start("study", "busy", *LONG_LOAD)
    command.wait_for(moment, _deploying if moment == "deploying" else _loading)
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)
    _one_interrupted(_trials(project, "busy"), signum)
    assert "run the same command again to resume" in output


@each_moment("deploying", "loading")
def test_grid_stops_while_measuring(start: Callable[..., Command], project: Path, moment: str, signum: int) -> None:
    write_study(project, "gridded")
    command = start("grid", "gridded", "--levels", "2", *LONG_LOAD)
    command.wait_for(moment, _deploying if moment == "deploying" else _loading)
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)
    _one_interrupted(_trials(project, "gridded-grid"), signum)


@each_moment("waiting", "loading")
def test_worker_stops_while_waiting_or_measuring(start: Callable[..., Command], project: Path, moment: str,
                                                 signum: int) -> None:
    storage = f"sqlite:///{project}/results/shared.db"
    (project / "results").mkdir(exist_ok=True)
    write_study(project, "shared", trials=1)
    if moment == "waiting":  # the study's one trial is "being measured by another worker"
        study = optuna.create_study(study_name="shared", storage=storage, directions=["minimize", "minimize"])
        study.ask().set_user_attr("host", "elsewhere")
    command = start("worker", "shared", "--storage", storage, *LONG_LOAD)
    if moment == "waiting":
        command.wait_for(moment, lambda c: "waiting for 1 trial(s) of other workers" in c.output)
    else:
        command.wait_for(moment, _loading)
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)
    trials = _trials(project, "shared", storage)
    if moment == "waiting":  # the other worker's trial is theirs: left as it was
        assert [t.state for t in trials] == [TrialState.RUNNING]
    else:
        _one_interrupted(trials, signum)


@each_moment("deploying", "loading")
def test_measure_stops_at_any_moment(start: Callable[..., Command], moment: str, signum: int) -> None:
    command = start("measure", *LONG_LOAD)
    command.wait_for(moment, _deploying if moment == "deploying" else _loading)
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)


@pytest.mark.parametrize("signum", SIGNALS)
def test_dashboard_stops_while_opening_its_storage(start: Callable[..., Command], project: Path,
                                                   silent_database: str, signum: int) -> None:
    write_study(project, "watched")
    command = start("dashboard", "watched", "--storage", silent_database, "--port", str(free_port()))
    command.wait_for("opening the storage", _connected_to(silent_database))
    _stopped_cleanly(command, command.signal_and_wait(signum), signum)


@pytest.mark.parametrize("signum", SIGNALS)
def test_dashboard_stops_while_serving_requests(start: Callable[..., Command], project: Path, signum: int) -> None:
    """With a request half-sent (its handler is waiting for the rest) and others being answered."""
    write_study(project, "watched")
    storage = f"sqlite:///{project}/results/watched.db"
    (project / "results").mkdir(exist_ok=True)
    study = optuna.create_study(study_name="watched", storage=storage, directions=["minimize", "minimize"])
    for i in range(20):
        study.add_trial(optuna.trial.create_trial(values=[i, 20 - i], params={"x": i},
                                                  distributions={"x": optuna.distributions.IntDistribution(0, 20)}))
    port = free_port()
    command = start("dashboard", "watched", "--storage", storage, "--port", str(port))
    command.wait_for("serving", lambda c: "http://127.0.0.1" in c.output)
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /api/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the request goes on
    answered = []
    stop = threading.Event()

    def ask() -> None:
        for _ in range(2000):  # bounded: at most a few hundred are sent before the stop
            if stop.is_set():
                return
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    answered.append(answer.status)
            except OSError:
                return

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    deadline = time.monotonic() + 60
    while not answered and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        output = command.signal_and_wait(signum)
    finally:
        stop.set()
        asking.join(10)
        half.close()
    assert answered, "the dashboard answered no request"
    _stopped_cleanly(command, output, signum, code=0)  # a server's normal end, as optdse-serve's


@each_moment("loading the model", "serving")
def test_optdse_serve_stops_at_any_moment(mnist_base_path: Path, moment: str, signum: int) -> None:
    """The model server exits 0 (a stop it was asked for) without a traceback, loading or serving."""
    server = ServerProcess(mnist_base_path, "mnist", True)
    try:
        if moment == "serving":
            server.wait_available()
            requests = _predict_in_a_loop(server)
        else:
            deadline = time.monotonic() + REACH_BOUND_S
            while "gRPC on" not in server.log():  # ports bound, the model not loaded yet
                assert server.process.poll() is None and time.monotonic() < deadline, server.log()
                time.sleep(0.01)
        server.process.send_signal(signum)
        assert server.process.wait(STOP_BOUND_S) == 0, server.log()
        if moment == "serving":
            requests.join(10)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def _predict_in_a_loop(server: ServerProcess) -> threading.Thread:
    """REST predicts, one after another, until the server stops answering (bounded)."""
    body = json.dumps({"instances": [[0.0] * 784]}).encode()

    def run() -> None:
        for _ in range(5000):
            request = urllib.request.Request(f"{server.rest_url}/v1/models/mnist:predict", data=body)
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)  # requests are flowing
    return thread


@each_moment("listening", "relaying")
def test_the_network_relay_stops_at_any_moment(moment: str, signum: int) -> None:
    """optdse/relay.py (the userspace network impairment) exits 0 without a traceback, idle or
    with a connection open through it, delayed."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(1)
    spec = {"routes": [{"listen": ["127.0.0.1", 0], "upstream": ["127.0.0.1", upstream.getsockname()[1]]}],
            "impairment": {"delay_ms": 50.0, "jitter_ms": 0.0, "loss_pct": 0.0}, "seed": 1,
            "parent": os.getpid(), "listen_netns": None}
    relay = subprocess.Popen([sys.executable, "-m", "optdse.relay", json.dumps(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    client = held = None
    try:
        assert relay.stdout is not None
        (port,) = json.loads(relay.stdout.readline())["ports"]
        if moment == "relaying":
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"x" * 100_000)  # on its way through the relay's delay queue
            upstream.settimeout(10)
            held = upstream.accept()[0]  # the relay's upstream connection, kept open
        relay.send_signal(signum)
        _, errors = relay.communicate(timeout=STOP_BOUND_S)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(10)
        for connection in (client, held, upstream):
            if connection is not None:
                connection.close()
    assert relay.returncode == 0 and "Traceback" not in errors, errors


@pytest.mark.parametrize("signum", SIGNALS)
def test_measure_on_docker_stops_while_its_container_starts(start: Callable[..., Command], signum: int) -> None:
    """A container created as the signal arrives is removed too (the backend sweeps its run's label)."""
    require_docker()
    client = docker_client()
    command = start("measure", "--backend", "docker", *LONG_LOAD)

    def containers() -> list[object]:
        return [c for c in client.containers.list(all=True, filters={"label": LABEL_RUN}, ignore_removed=True)
                if c.labels[LABEL_RUN].startswith(f"{command.process.pid}-")]

    command.wait_for("a container exists", lambda c: bool(containers()))
    output = command.signal_and_wait(signum)
    _stopped_cleanly(command, output, signum)
    assert not containers()
