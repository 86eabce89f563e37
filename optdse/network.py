"""The link between the load generator and the replicas: loopback, or loopback made worse.

A search space's `network` block (or `optdse measure --delay-ms --jitter-ms --loss-pct`) asks
for delay and jitter per round trip and loss per packet on that link. `open_link` builds it
with one of two methods, and every trial records which as `network_method`:

- netem: the kernel's network emulator, in two network namespaces this run creates,
  `optdse-<run id>-<n>c` (client) and `...s` (server), joined by a veth pair whose link-local
  addresses (169.254.213.1 and .2) exist only inside them. Each veth end gets netem with half
  the delay and jitter (so a round trip gets all of it) and the loss. In the server namespace
  a relay (optdse/relay.py, impairing nothing) forwards to the replicas' loopback ports in the
  host's namespace, so every backend works unchanged; the load workers enter the client
  namespace before they open a socket.
- proxy: where the kernel has no netem (this project's CI machine has no sch_netem), the same
  relay listens on 127.0.0.1 and impairs the byte stream itself; optdse/relay.py gives the model.
- none: nothing asked, the load generator talks to the replicas directly.

Traffic goes only to loopback and these namespaces. Namespaces are named after the run, so
`optdse clean` removes those of runs that are gone (`clean_stale_namespaces`); the relay is
recorded in the run's directory like a replica, and dies with the process that started it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from optdse import signals
from optdse.config import NetworkConfig
from optdse.deploy.base import DeployError
from optdse.deploy.runs import Run, run_owner_alive
from optdse.relay import Impairment

NETNS_DIR = Path("/run/netns")
PREFIX = "optdse-"
CLIENT_ADDRESS, SERVER_ADDRESS = "169.254.213.1", "169.254.213.2"
RELAY_START_TIMEOUT_S = 30.0


@dataclass
class Link:
    """An open link: the targets the load generator should use and, for netem, the client
    namespace its workers enter. `close` removes everything it made."""

    method: str  # "none", "netem" or "proxy"
    targets: tuple[str, ...]
    client_netns: str | None = None  # a path under /run/netns
    relay: subprocess.Popen[bytes] | None = None
    namespaces: list[str] = field(default_factory=list)
    run: Run | None = None

    def close(self) -> None:
        """Stop the relay and delete the namespaces (which takes their veth pair along)."""
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.terminate()
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
            if relay.stdout is not None:
                relay.stdout.close()
            if self.run is not None:
                self.run.forget_replica(f"relay-{relay.pid}")
        namespaces, self.namespaces = self.namespaces, []
        for name in reversed(namespaces):
            _delete_namespace(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delete_namespace(name: str) -> bool:
    """`ip netns del NAME` (its veth pair goes with it); False if it failed or was gone."""
    return subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False).returncode == 0


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError("network", f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def _netem(netns: str, device: str, network: NetworkConfig) -> None:
    _ip("netns", "exec", netns, "tc", "qdisc", "add", "dev", device, "root", "netem",
        "delay", f"{network.delay_ms / 2:g}ms", f"{network.jitter_ms / 2:g}ms", "loss", f"{network.loss_pct:g}%")


_link_count = 0


def _namespace_names(run: Run) -> tuple[str, str]:
    global _link_count
    _link_count += 1
    return f"{PREFIX}{run.run_id}-{_link_count}c", f"{PREFIX}{run.run_id}-{_link_count}s"


@functools.cache
def netem_support(run_id: str) -> str | None:
    """None where this kernel runs netem inside a namespace, else why not (probed once per run)."""
    name = f"{PREFIX}{run_id}-probe"
    try:
        _ip("netns", "add", name)
        _ip("netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
        return None
    except DeployError as error:
        return error.message.rsplit("failed: ", 1)[-1] or error.message
    except FileNotFoundError as error:  # no ip/tc binary
        return str(error)
    finally:
        _delete_namespace(name)


def _start_relay(link: Link, upstreams: list[str], listen_host: str, network: NetworkConfig,
                 netns: str | None = None) -> list[int]:
    """Start optdse/relay.py for `upstreams` (host:port); return the ports it listens on."""
    routes = [{"listen": [listen_host, 0], "upstream": [host, int(port)]}
              for host, _, port in (target.rpartition(":") for target in upstreams)]
    impairment = Impairment(network.delay_ms, network.jitter_ms, network.loss_pct)
    spec = {"routes": routes, "impairment": vars(impairment), "seed": None, "parent": os.getpid(),
            "listen_netns": netns}
    log_path = os.devnull if link.run is None else link.run.directory / "relay.log"
    # Started and recorded, or neither (optdse.signals): the run's end stops what it recorded.
    with signals.atomic(), open(log_path, "ab") as log:  # the relay keeps its own copy of the descriptor
        link.relay = subprocess.Popen([sys.executable, "-m", "optdse.relay", json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        if link.run is not None:
            link.run.record_process(f"relay-{link.relay.pid}", link.relay.pid)
    assert link.relay.stdout is not None
    ready, _, _ = select.select([link.relay.stdout], [], [], RELAY_START_TIMEOUT_S)
    line = link.relay.stdout.readline() if ready else b""
    try:
        return list(json.loads(line)["ports"])
    except (ValueError, KeyError):
        raise DeployError("network", f"the relay did not start (exit {link.relay.poll()}; "
                                     f"see {link.run and link.run.directory / 'relay.log'})") from None


_warned: set[str] = set()


def open_link(network: NetworkConfig, targets: tuple[str, ...], run: Run,
              warn: Callable[[str], None] = print) -> Link:
    """The link `network` asks for in front of `targets` (host:port on loopback)."""
    if network.method == "auto" and not network.impaired:
        return Link("none", targets)
    method = network.method
    if method in ("auto", "netem") and network.impaired:
        why_not = netem_support(run.run_id)
        if why_not and method == "netem":
            raise DeployError("network", f"network method netem: this kernel cannot run netem ({why_not}); "
                                         "use method proxy or auto")
        if why_not:
            if why_not not in _warned:
                _warned.add(why_not)
                warn(f"this kernel cannot run netem ({why_not}): network impairments go through optdse's "
                     "userspace relay on 127.0.0.1 instead (trials record network_method: proxy)")
            method = "proxy"
    link = Link("proxy" if method == "proxy" else "netem", targets, run=run)
    try:
        if link.method == "proxy":
            ports = _start_relay(link, list(targets), "127.0.0.1", network)
            link.targets = tuple(f"127.0.0.1:{port}" for port in ports)
            return link
        client, server = _namespace_names(run)
        for name in (client, server):
            _ip("netns", "add", name)
            link.namespaces.append(name)
            _ip("link", "set", "lo", "up", netns=name)
        # Created inside the client namespace with its peer in the server's: never in the host's.
        _ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", server, netns=client)
        for name, device, address in ((client, "veth0", CLIENT_ADDRESS), (server, "veth1", SERVER_ADDRESS)):
            _ip("addr", "add", f"{address}/30", "dev", device, netns=name)
            _ip("link", "set", device, "up", netns=name)
            if network.impaired:
                _netem(name, device, network)
        ports = _start_relay(link, list(targets), SERVER_ADDRESS, NetworkConfig(), netns=str(NETNS_DIR / server))
        link.targets = tuple(f"{SERVER_ADDRESS}:{port}" for port in ports)
        link.client_netns = str(NETNS_DIR / client)
        return link
    except BaseException:
        link.close()
        raise


#: The name of a namespace an optdse run made: `optdse-<pid>-<start ms>-<tag>` (the run id inside).
RUN_NAMESPACE = re.compile(rf"{PREFIX}(?P<run_id>\d+-\d+)-[a-z0-9]+")


def clean_stale_namespaces(live_runs: set[str]) -> list[str]:
    """Delete the namespaces of optdse runs that are gone. Only names of RUN_NAMESPACE's form
    are optdse's: another `optdse-...` namespace (a test bed's, a user's) is left alone."""
    removed = []
    for path in sorted(NETNS_DIR.glob(f"{PREFIX}*")) if NETNS_DIR.is_dir() else []:
        made = RUN_NAMESPACE.fullmatch(path.name)
        if made is None or made["run_id"] in live_runs or run_owner_alive(made["run_id"]):
            continue
        if _delete_namespace(path.name):
            removed.append(path.name)
    return removed


__all__ = ["RUN_NAMESPACE", "Link", "clean_stale_namespaces", "netem_support", "open_link"]
