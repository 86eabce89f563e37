"""The network dimension and faults, on real replicas: injected delay shows in ART, injected
loss in the error rate, netem's namespaces exist only while used, and `optdse clean` removes
what a killed run left of them. Timing is compared side by side in one run, never against a
fixed threshold alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from optdse.config import ClientConfig, Config, NetworkConfig, ServerConfig
from optdse.deploy.base import DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.local import LocalBackend
from optdse.deploy.runs import Run
from optdse.load import LoadPlan, run_load
from optdse.models import builtin
from optdse.network import CLIENT_ADDRESS, NETNS_DIR, SERVER_ADDRESS, netem_support, open_link
from optdse.objective import measure
from optdse.payloads import build_payload
from tests.optdse_tests.conftest import optdse

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

DELAY_MS = 40.0


def this_machines_method(run: Run) -> str:
    """netem where this kernel runs it inside a namespace, else the relay: what `auto` picks."""
    return "netem" if netem_support(run.run_id) is None else "proxy"


def config(network: NetworkConfig, requests: int = 150, deadline_s: float = 30.0) -> Config:
    return Config(ServerConfig(builtin("mnist"), replicas=1, cpus=1.0, memory_mb=1000),
                  ClientConfig(threads=2, file_size=1, requests=requests, network=network, deadline_s=deadline_s))


def test_delay_raises_art_by_about_the_delay_and_loss_raises_the_error_rate(local: LocalBackend) -> None:
    """One replica, three links side by side: the same method unimpaired (so the relay's own
    hop is in the baseline too), with 40 ms per round trip, and with 10% loss under a 150 ms
    deadline (a lost packet costs at least a 200 ms retransmission timeout)."""
    method = this_machines_method(local.run)
    warnings: list[str] = []
    base = measure(local, config(NetworkConfig(method=method)), warn=warnings.append)
    delayed = measure(local, config(NetworkConfig(delay_ms=DELAY_MS, method=method)), warn=warnings.append)
    lossy = measure(local, config(NetworkConfig(loss_pct=10, method=method), requests=300, deadline_s=0.15),
                    warn=warnings.append)
    assert base.network_method == delayed.network_method == lossy.network_method == method
    added = delayed.art_ms - base.art_ms
    assert 0.8 * DELAY_MS < added < 1.5 * DELAY_MS, f"{DELAY_MS:g} ms of delay added {added:.1f} ms to ART"
    assert base.errors == delayed.errors == 0
    assert lossy.error_rate > 0.02 and set(lossy.error_codes) == {"DEADLINE_EXCEEDED"}, lossy.error_codes
    assert lossy.deadline_ms == 150


def test_netem_namespaces_carry_the_load_and_exist_only_while_used(local: LocalBackend) -> None:
    """The netem method's plumbing, whether or not this kernel has netem itself: two project
    namespaces, link-local addresses only inside them, load workers inside the client's."""
    endpoints = local.apply(ServerConfig(builtin("mnist"), replicas=1, cpus=1.0, memory_mb=1000))
    payload = build_payload("mnist", 1, "grpc")
    host_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    with open_link(NetworkConfig(method="netem"), (endpoints[0].target,), local.run) as link:
        names = [Path(path).name for path in link.namespaces]
        assert link.method == "netem" and len(names) == 2
        assert all((NETNS_DIR / name).exists() and local.run.run_id in name for name in names)
        inside = subprocess.run(["ip", "-n", names[0], "-o", "addr"], capture_output=True, text=True, check=True)
        assert CLIENT_ADDRESS in inside.stdout
        assert link.targets[0].startswith(f"{SERVER_ADDRESS}:")
        plan = LoadPlan(targets=link.targets, bodies=payload.bodies, batches=payload.batches, threads=2, requests=100,
                        netns=link.client_netns)
        result = run_load(plan)
        assert result.ok.all(), result.error_codes
    assert SERVER_ADDRESS not in host_addresses and CLIENT_ADDRESS not in host_addresses
    assert not any((NETNS_DIR / name).exists() for name in names)
    if netem_support(local.run.run_id) is not None:  # asked for netem where there is none: one clear error
        with pytest.raises(DeployError, match="cannot run netem"):
            open_link(NetworkConfig(delay_ms=5, method="netem"), (endpoints[0].target,), local.run)


KILLED_RUN = """
import sys, time
from optdse.config import NetworkConfig
from optdse.deploy.runs import Run
from optdse.network import open_link
run = Run.start()
netem = open_link(NetworkConfig(method="netem"), ("127.0.0.1:9",), run)
proxy = open_link(NetworkConfig(method="proxy", delay_ms=5), ("127.0.0.1:9",), run)
print(run.run_id, netem.relay.pid, proxy.relay.pid, *netem.namespaces, flush=True)
time.sleep(600)
"""


def test_clean_removes_the_namespaces_and_relays_of_a_killed_run(project: Path) -> None:
    """A run SIGKILLed with both kinds of link open: its relays die with it (or are stopped by
    `optdse clean`), and `optdse clean` deletes its namespaces; nothing else is touched."""
    owner = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, text=True,
                             env=os.environ.copy(), cwd=project)
    try:
        run_id, *rest = owner.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    relays, namespaces = [int(pid) for pid in rest[:2]], rest[2:]
    assert len(namespaces) == 2 and all((NETNS_DIR / name).exists() for name in namespaces)
    # A namespace named optdse-... that no optdse run made (the test bed's are optdse-bed-nN):
    # clean deleted those of a bed running beside it until it read the run id from the name.
    foreign = f"optdse-bed-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", foreign], check=True, capture_output=True)
    try:
        done = optdse(project, "clean")
        assert (NETNS_DIR / foreign).exists(), done.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", foreign], check=False, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert not any((NETNS_DIR / name).exists() for name in namespaces), done.stdout
    assert not [pid for pid in relays if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert "network namespaces ['" in done.stdout and run_id in done.stdout


def test_measure_json_reports_errors_and_the_network_method(project: Path, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--threads", "2", "--requests", "200", "--delay-ms", "10", "--jitter-ms", "2",
                  "--loss-pct", "5", "--deadline-ms", "150", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["network_method"] in ("netem", "proxy") and figures["deadline_ms"] == 150
    assert figures["errors"] == sum(figures["error_codes"].values()) and figures["requests_sent"] == 200
    assert "delay 10 ms, jitter 2 ms, loss 5%" in figures["config"]
    bad = optdse(project, "measure", "--loss-pct", "120")
    assert bad.returncode == 2 and "--loss-pct: must be a percentage from 0 to 100" in bad.stderr
