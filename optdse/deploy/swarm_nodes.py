"""The swarm around the swarm backend's service: its nodes, the engine-stats meter for nodes
whose cgroups this host cannot read, and port blocks free on every serving node."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any

from optdse.deploy.base import HOST, DeployError
from optdse.deploy.engine import docker_errors

PORT_RANGE = range(20000, 30000, 100)  # a base port per service; slots take base+1 .. base+49 (gRPC)
REST_OFFSET = 50                       # and base+51 .. base+99 (REST)
SERVE_LABEL = "optdse.serve"           # `docker node update --label-add optdse.serve=true NODE`: replicas go there


@dataclass(frozen=True)
class Node:
    """A swarm node that can run tasks: its id, hostname, the address its tasks listen on and
    whether it carries the serving label."""

    id: str
    hostname: str
    address: str
    serving: bool


def swarm_nodes(client: Any) -> list[Node]:
    """The ready, active nodes. A node's address is the one it joined the swarm with (a
    manager may report 0.0.0.0 there; its manager address then says it)."""
    nodes = []
    for node in client.nodes.list():
        attrs = node.attrs
        if attrs["Status"].get("State") != "ready" or attrs["Spec"].get("Availability") != "active":
            continue
        address = attrs["Status"].get("Addr", "")
        if address in ("", "0.0.0.0"):  # noqa: S104  # what Docker reports, not a bind
            address = attrs.get("ManagerStatus", {}).get("Addr", "").rpartition(":")[0]
        serving = attrs["Spec"].get("Labels", {}).get(SERVE_LABEL) == "true"
        nodes.append(Node(attrs["ID"], attrs["Description"]["Hostname"], address, serving))
    return nodes


class EngineStats:
    """A task's CPU and memory read through the Docker engine of the node it runs on (the
    stats API, the same cgroup counters `docker stats` shows), for nodes whose cgroups this
    host cannot read. The peak is the largest usage seen since `reset_peak`."""

    def __init__(self, engine: Any, container_id: str) -> None:
        self.engine, self.container_id = engine, container_id
        self._cpu, self._memory, self._peak = 0.0, 0, 0

    def _read(self) -> None:
        try:
            stats = self.engine.api.stats(self.container_id, stream=False, one_shot=True)
        except docker_errors().NotFound:
            self._memory = 0  # killed and removed: keeps what it used until then, as Cgroup does
            return
        usage = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        if usage is None:  # an engine answers without figures for a container that just stopped
            return
        self._cpu, self._memory = usage / 1e9, int(stats.get("memory_stats", {}).get("usage", 0))
        self._peak = max(self._peak, self._memory)

    def cpu_seconds(self) -> float:
        self._read()
        return self._cpu

    def memory_bytes(self) -> int:
        return self._memory  # as of the cpu_seconds just read: one API call per sample

    def memory_peak(self) -> int:
        return self._peak

    def reset_peak(self) -> None:
        self._peak = self._memory


def ensure_swarm(client: Any, init: bool) -> bool:
    """True if this call initialised the swarm; DeployError if there is none and `init` is off."""
    state = client.info().get("Swarm", {}).get("LocalNodeState")
    if state == "active":
        return False
    if not init:
        raise DeployError("swarm", "this Docker engine is not in a swarm; pass --swarm-init to let optdse "
                                   "initialise a single-node swarm bound to 127.0.0.1")
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    return True


def block_ports(base: int) -> list[int]:
    """Every port a service with base port `base` may use: gRPC and REST for each of the
    REST_OFFSET - 1 replicas a service can have (the largest count `apply` allows)."""
    return [*range(base + 1, base + REST_OFFSET), *range(base + REST_OFFSET + 1, base + 2 * REST_OFFSET)]


def answering_ports(address: str, ports: list[int], timeout: float = 1.0) -> set[int]:
    """The ports at `address` that accept a TCP connection: how a port on another node is found
    taken, since this host cannot bind there. All are tried at once (non-blocking connects),
    so a firewall that drops them costs `timeout` once; a port that neither accepts nor
    refuses by then counts as free, as the load generator could not reach it either."""
    pending: dict[socket.socket, int] = {}
    answering: set[int] = set()
    with selectors.DefaultSelector() as selector:
        try:
            for port in ports:
                sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
                sock.setblocking(False)
                sock.connect_ex((address, port))
                pending[sock] = port
                selector.register(sock, selectors.EVENT_WRITE)
            deadline = time.monotonic() + timeout
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                    selector.unregister(key.fileobj)
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                        answering.add(pending[key.fileobj])  # type: ignore[index]
        finally:
            for sock in pending:
                sock.close()
    return answering


def free_base_port(remote_addresses: tuple[str, ...] = ()) -> int:
    """The first base port whose whole block is free: on this host's loopback (checked by
    binding each port) and at each of `remote_addresses`, the other serving nodes (nothing
    answers there), so that a later update to more replicas cannot land on a port something
    else holds on any node."""
    for base in PORT_RANGE:
        try:
            for port in block_ports(base):
                with socket.socket() as sock:
                    sock.bind((HOST, port))
        except OSError:
            continue
        if not any(answering_ports(address, block_ports(base)) for address in remote_addresses):
            return base
    raise DeployError("swarm", "no block of ports free on every serving node for the service's tasks")


__all__ = ["PORT_RANGE", "REST_OFFSET", "SERVE_LABEL", "EngineStats", "Node", "answering_ports", "block_ports",
           "ensure_swarm", "free_base_port", "swarm_nodes"]
