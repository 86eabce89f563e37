"""A multi-node Swarm on one machine, made and removed by the tests themselves.

Each node is a Docker engine of its own (its own data root, exec root, socket and pid file) in
a network namespace and a UTS namespace of its own, so it has its own addresses and host name.
The nodes are joined through a switch: a bridge in one more namespace, with a veth link to each
node. Their addresses (169.254.77.0/24, link-local) exist only inside those namespaces: no
traffic reaches the host's own interfaces or anything beyond them. Node 1 initialises the
Swarm and the others join it. Whatever talks to the nodes' addresses (optdse itself, when it
loads the replicas) runs in a node's network and UTS namespaces, `BedNode.enter()`.

How it is made, and why:
- `nsenter --net=/var/run/netns/NS` rather than `ip netns exec NS`: the latter mounts a fresh
  /sys for the namespace, which hides /sys/fs/cgroup, and dockerd then refuses to start
  ("Devices cgroup isn't mounted").
- dockerd runs with `--bridge=none --iptables=false`: the nodes' containers use the host
  network of their node's namespace (as optdse's swarm backend asks), so no bridge or NAT
  rules are needed, and none are added to the host's tables.
- `unshare --uts` and `hostname`, so each node reports a name of its own (Swarm and optdse's
  --swarm-engine tell nodes apart by it).
- Images: there is no registry. `Bed.start(seed=IMAGE)` gives each node the host engine's copy
  of IMAGE before its dockerd starts: the image's layer directories are hard-linked into the
  node's data root (image layers are only ever read, as overlay lower directories) with the
  image's metadata beside them, in about a second per node. A `docker save | docker load`
  of the 2.9 GB serving image into three engines took 159 s here. Hard links need one mount,
  so the bed's directory is made inside the host engine's data root where /tmp is another
  mount. `load_image` streams one `docker save` into `docker load` on every node still
  without the image: where seeding is impossible (another storage driver), or for other images.

Everything is stopped by the pid this module started, and removed by name of what it created
(its namespaces, links and directories), also when a step fails half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import stop_process

SUBNET = "169.254.77"
PREFIX = "optdse-bed"


class BedUnavailable(RuntimeError):
    """A step of making the bed is impossible here; the message says which and why."""


@dataclass
class BedNode:
    index: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """Its host name, and the name of its network namespace."""
        return f"{PREFIX}-n{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def socket_url(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def enter(self) -> list[str]:
        """The command prefix that runs a program as on this node: in its network namespace and
        its UTS namespace (its dockerd's), so the program's host name is the node's. optdse keys
        the host's measuring lock and a trial's host by it: a study run "on the manager" must
        not take this machine's lock (a test beside the bed holds it) nor record its name."""
        assert self.process is not None, "the node's dockerd is not running"
        return ["nsenter", f"--net=/var/run/netns/{self.name}", f"--uts=/proc/{self.process.pid}/ns/uts"]

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.socket_url, version="auto", timeout=60)


@dataclass
class Bed:
    root: Path
    nodes: list[BedNode] = field(default_factory=list)
    made_netns: list[str] = field(default_factory=list)

    @property
    def manager(self) -> BedNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[BedNode]:
        return self.nodes[1:]

    @classmethod
    def start(cls, count: int = 2, timeout: float = 60, seed: str | None = None) -> Bed:
        """`count` engines joined in one Swarm (node 1 its manager); stopped again if any step
        fails. `seed`: an image of the host engine each node starts with, if it can be seeded."""
        for tool in ("ip", "nsenter", "unshare", "dockerd", "docker"):
            if shutil.which(tool) is None:
                raise BedUnavailable(f"{tool} is not installed (iproute2, util-linux, docker.io)")
        layers = ImageLayers.of(seed) if seed else None
        bed = cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir=layers.linkable_dir() if layers else None)))
        try:
            bed._switch()
            for index in range(1, count + 1):
                bed._node(index, timeout, layers)
            bed._swarm()
        except BaseException:
            bed.stop()
            raise
        return bed

    def _run(self, *command: str, what: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise BedUnavailable(f"{what}: `{' '.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _netns(self, name: str) -> None:
        self._run("ip", "netns", "add", name, what="making a network namespace")
        self.made_netns.append(name)
        self._run("ip", "-n", name, "link", "set", "lo", "up", what="bringing up loopback")

    def _switch(self) -> None:
        switch = f"{PREFIX}-switch"
        self._netns(switch)
        self._run("ip", "-n", switch, "link", "add", "br0", "type", "bridge", what="making the switch's bridge")
        self._run("ip", "-n", switch, "link", "set", "br0", "up", what="bringing up the switch's bridge")

    def _node(self, index: int, timeout: float, layers: ImageLayers | None) -> None:
        node = BedNode(index, self.root / f"n{index}")
        node.root.mkdir()
        self.nodes.append(node)
        if layers is not None:
            layers.seed(node.root / "data")
        switch = f"{PREFIX}-switch"
        self._netns(node.name)
        # The link is made inside the switch's namespace, so no interface ever appears on the host.
        port, end = f"sw{index}", f"eth-{index}"
        self._run("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", end, "netns", node.name,
                  what="linking a node to the switch")
        self._run("ip", "-n", switch, "link", "set", port, "master", "br0", "up", what="attaching the link")
        self._run("ip", "-n", node.name, "addr", "add", f"{node.address}/24", "dev", end, what="addressing a node")
        self._run("ip", "-n", node.name, "link", "set", end, "up", what="bringing up a node's link")
        dockerd = ["dockerd", f"--data-root={node.root / 'data'}", f"--exec-root={node.root / 'exec'}",
                   f"--pidfile={node.root / 'docker.pid'}", f"--host={node.socket_url}",
                   "--bridge=none", "--iptables=false", "--ip6tables=false"]
        # nsenter and unshare exec (no fork), and so does the shell: the pid held is dockerd's.
        command = ["nsenter", f"--net=/var/run/netns/{node.name}", "unshare", "--uts", "sh", "-c",
                   f'hostname {node.name} && exec "$@"', "sh", *dockerd]
        with (node.root / "dockerd.log").open("wb") as log:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                node.client().ping()
                return
            except Exception as error:  # noqa: BLE001  # not up yet: the socket appears when it is
                if node.process.poll() is not None or time.monotonic() > deadline:
                    tail = (node.root / "dockerd.log").read_text(errors="replace")[-1500:]
                    raise BedUnavailable(f"starting node {index}'s dockerd: {error}; its log ends: {tail}") from None
                time.sleep(0.3)

    def _swarm(self) -> None:
        manager = self.manager.client()
        manager.swarm.init(advertise_addr=self.manager.address, listen_addr=f"{self.manager.address}:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in self.nodes[1:]:
            node.client().swarm.join(remote_addrs=[f"{self.manager.address}:2377"], join_token=token,
                                     advertise_addr=node.address, listen_addr=f"{node.address}:2377")
        deadline = time.monotonic() + 60
        while sum(n.attrs["Status"]["State"] == "ready" for n in manager.nodes.list()) < len(self.nodes):
            if time.monotonic() > deadline:
                raise BedUnavailable("joining the swarm: the workers never became ready")
            time.sleep(0.5)

    def manager_command(self) -> list[str]:
        """The prefix that runs a program as on the manager host: in its network namespace,
        with its engine as DOCKER_HOST."""
        return [*self.manager.enter(), "env", f"DOCKER_HOST={self.manager.socket_url}"]

    def engine_options(self) -> list[str]:
        """`--swarm-engine NODE=URL` for each worker: how optdse on the manager reaches their engines."""
        return [option for worker in self.workers for option in ("--swarm-engine", f"{worker.name}={worker.socket_url}")]

    def label(self, node: BedNode, key: str, value: str) -> None:
        """Set a label on `node` (from the manager)."""
        (swarm_node,) = [n for n in self.manager.client().nodes.list()
                         if n.attrs["Description"]["Hostname"] == node.name]
        spec = swarm_node.attrs["Spec"]
        swarm_node.update({**spec, "Labels": {**spec.get("Labels", {}), key: value}})

    def load_image(self, reference: str, nodes: list[BedNode], source_url: str = "unix:///var/run/docker.sock") -> None:
        """`docker save` `reference` once from the engine at `source_url` and stream it into
        `docker load` on every node of `nodes` that does not have it yet (one save instead of
        one per node)."""
        import docker

        source_id = docker.DockerClient(base_url=source_url, version="auto").images.get(reference).id
        nodes = [node for node in nodes if not _has_image(node, reference, source_id)]
        if not nodes:
            return
        save = subprocess.Popen(["docker", "-H", source_url, "save", reference], stdout=subprocess.PIPE)
        loads = [subprocess.Popen(["docker", "-H", node.socket_url, "load", "--quiet"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for node in nodes]
        assert save.stdout is not None
        try:
            while chunk := save.stdout.read(1 << 20):
                for load in loads:
                    assert load.stdin is not None
                    load.stdin.write(chunk)
        except BrokenPipeError:
            pass  # a load failed: its error is reported below
        finally:
            for load in loads:
                assert load.stdin is not None
                try:
                    load.stdin.close()
                except BrokenPipeError:
                    pass
            save.stdout.close()
            save.wait(60)  # a save cut short by the closed pipe exits non-zero: only the loads' errors matter
        errors = [load.stderr.read().decode(errors="replace").strip() for load in loads]  # type: ignore[union-attr]
        for load in loads:
            load.wait(600)
        failed = [f"node {node.index}: {error}" for node, load, error in zip(nodes, loads, errors, strict=True)
                  if load.returncode != 0]
        if failed:
            raise BedUnavailable(f"loading {reference} into the nodes: {'; '.join(failed)}")

    def stop(self) -> None:
        """Leave the swarm, stop each dockerd by its pid, remove the namespaces and files."""
        for node in reversed(self.nodes):
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                node.client().swarm.leave(force=True)
            except Exception:  # noqa: BLE001, S110  # not in a swarm, or the engine is gone: stop it anyway
                pass
            stop_process(node.process, signal.SIGTERM, grace_s=60)
        # What a dockerd may leave mounted under its roots (the nsfs of its network namespace
        # at exec-root/netns/default): unmounted, deepest first, so the namespace can go too.
        mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1].startswith(f"{self.root}/")]
        for mount_point in sorted(mounted, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
        for name in reversed(self.made_netns):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _has_image(node: BedNode, reference: str, image_id: str) -> bool:
    import docker

    try:
        return node.client().images.get(reference).id == image_id
    except docker.errors.ImageNotFound:
        return False


@dataclass(frozen=True)
class ImageLayers:
    """Where one image of the host's engine lies in its overlay2 data root: what a node's data
    root needs to start with that image (see the module docstring)."""

    reference: str
    image_id: str  # sha256:...
    root: Path  # the host engine's data root
    chain: list[str]  # the layers' chain ids, lowest first (Docker's layer store keys)

    @classmethod
    def of(cls, reference: str) -> ImageLayers | None:
        """`reference` as the host engine stores it, or None where it cannot be seeded (no
        engine, no such image, another storage driver)."""
        import docker

        try:
            client = docker.from_env(version="auto")
            info, image = client.info(), client.images.get(reference)
        except docker.errors.DockerException:
            return None
        if info.get("Driver") != "overlay2":
            return None
        chain: list[str] = []
        for diff_id in image.attrs["RootFS"]["Layers"]:
            chain.append(diff_id if not chain else
                         "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
        return cls(reference, image.id, Path(info["DockerRootDir"]), chain)

    def linkable_dir(self) -> Path | None:
        """A directory for the bed in which files can be hard links to the engine's layers:
        the system's temporary directory if it is on their mount, else the engine's data root."""
        probe = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-probe-"))
        try:
            os.link(self._store / "repositories.json", probe / "link")
            return None
        except OSError:
            return self.root
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    @property
    def _store(self) -> Path:
        return self.root / "image" / "overlay2"

    def seed(self, data_root: Path) -> None:
        """Give the engine that will start on `data_root` this image: its layer directories
        hard-linked (`cp -al` keeps owners, modes and whiteouts), its metadata copied, its tag."""
        store = data_root / "image" / "overlay2"
        for chain_id in self.chain:
            layer = self._store / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")
            shutil.copytree(layer, store / "layerdb" / "sha256" / layer.name)
            cache = (layer / "cache-id").read_text()
            (data_root / "overlay2" / cache).mkdir(parents=True)
            names = [self.root / "overlay2" / cache / name for name in ("diff", "link", "lower", "committed")]
            subprocess.run(["cp", "-al", *map(str, filter(Path.exists, names)), str(data_root / "overlay2" / cache)],
                           check=True, capture_output=True)
            short = (self.root / "overlay2" / cache / "link").read_text()
            (data_root / "overlay2" / "l").mkdir(exist_ok=True)
            (data_root / "overlay2" / "l" / short).symlink_to(f"../{cache}/diff")
        digest = self.image_id.removeprefix("sha256:")
        for part in ("content", "metadata"):
            source = self._store / "imagedb" / part / "sha256" / digest
            if source.is_dir():
                shutil.copytree(source, store / "imagedb" / part / "sha256" / digest)
            elif source.exists():
                (store / "imagedb" / part / "sha256").mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, store / "imagedb" / part / "sha256" / digest)
        name = self.reference if ":" in self.reference.rsplit("/", 1)[-1] else f"{self.reference}:latest"
        (store / "repositories.json").write_text(json.dumps(
            {"Repositories": {name.rsplit(":", 1)[0]: {name: self.image_id}}}))


__all__ = ["Bed", "BedNode", "BedUnavailable", "ImageLayers"]
