"""Replicas as the tasks of one Docker Swarm service: the seed's compose `deploy:` section.

One service per run: `replicas`, `resources.limits` (cpus, memory) and `restart_policy:
on-failure`, as in serving/docker-compose.yml. Tasks join the host network; each task's
optdse-serve listens on 127.0.0.1 at base port + its slot ({{.Task.Slot}}) for gRPC and at
base port + 50 + its slot for REST, so every replica has its own loopback ports and nothing
leaves the machine. Limits and the replica count change with `service update` (Swarm
replaces tasks to apply new limits; optdse waits for the update to complete and every slot to
answer AVAILABLE).

Swarm is initialised by optdse only when asked (`--swarm-init`), bound to 127.0.0.1, and left
again when the run ends.
Unlike the local and docker backends, the CPU limit holds from the task's start (it is part
of the service spec), so replicas with a small CPU share take longer to become ready.

Several nodes (docs/scaling-out.md): tasks go only to nodes labelled `optdse.serve=true`
(a placement constraint, required once the swarm has more than one node, so the load
generator's host is chosen by the user) and each task listens on its node's swarm address
instead of loopback, since the load generator must reach it. A one-node swarm keeps
127.0.0.1. ACU is measured per node: the replicas' CPU is read from the cgroups of this host,
or, for a node given with `--swarm-engine NODE=URL`, through that node's Docker engine (the
stats API); a task on another node without an engine is a DeployError, never a silent zero.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from optdse.config import ServerConfig
from optdse.deploy.base import HOST, Backend, DeployError, Endpoint, ResourceSample, wait_available
from optdse.deploy.cgroups import Cgroup
from optdse.deploy.engine import LABEL_RUN, ServingImage, container_cgroup, docker_client, docker_errors, remove_labelled
from optdse.deploy.runs import Run
from optdse.deploy.swarm_nodes import (REST_OFFSET, SERVE_LABEL, EngineStats, Node, answering_ports, block_ports,
                                       ensure_swarm, free_base_port, swarm_nodes)
from optdse.knobs import CONTAINER_BATCHING_FILE, ServerKnobs


class SwarmBackend(Backend):
    name = "swarm"
    limits_enforced = True

    @property
    def accounting(self) -> str:
        read = sorted({f"{node.hostname}: " + ("docker engine stats API" if isinstance(meter, EngineStats) else
                                               "docker cgroup") for (_, _, meter), node in zip(self._tasks, self._task_nodes,
                                                                                         strict=True)})
        return "; ".join(read) or "docker cgroup"

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print, swarm_init: bool = False,
                 ready_timeout: float = 240.0, image: str = "host-python", engines: Mapping[str, str] | None = None) -> None:
        self.client = docker_client()
        self.warn = warn
        self.engine_urls = dict(engines or {})  # node hostname -> its Docker engine's URL
        self._engines: dict[str, Any] = {}
        self.image = ServingImage.resolve(self.client, image, model_base_path)
        if not self.image.loopback_bind:
            raise DeployError("image", f"the swarm backend cannot run {image} on loopback only: TensorFlow "
                                       "Serving binds every interface and Swarm publishes ports on every interface; "
                                       "use the docker backend for it, or an optdse.serve image (serving/Dockerfile)")
        self.initialised_swarm = ensure_swarm(self.client, swarm_init)
        self.own_node_id = self.client.info()["Swarm"]["NodeID"]  # the node this host's engine is
        self.model_base_path = model_base_path
        self.ready_timeout = ready_timeout
        self.run = Run.start()
        self.service: Any = None
        self._server_command = ""  # as each task runs it, with the slot's arithmetic in its ports
        self.current: ServerConfig | None = None
        self.base_port = 0
        self._tasks: list[tuple[int, str, Cgroup | EngineStats]] = []  # (slot, container id, meter) of running tasks
        self._task_nodes: list[Node] = []  # the node of each of _tasks
        self.nodes: list[Node] = []  # the serving nodes, as of the last create or update
        self._said_nodes: list[Node] = []  # the nodes the last warning named
        self._killed: list[tuple[int, frozenset[str]]] = []  # (slot, task ids) killed by kill_replica
        self._lost: set[str] = set()  # task ids killed since the last apply: wait for their replacements
        self._last_oom_check = 0.0
        # Reads the tasks' engine stats side by side (see usage); threads start as needed.
        self._stats_reader = ThreadPoolExecutor(max_workers=REST_OFFSET - 1, thread_name_prefix="optdse-engine-stats")

    def _spec(self, server: ServerConfig) -> dict[str, Any]:
        """Everything a service create or update needs (the SDK's update replaces the whole spec)."""
        from docker.types import Mount, Resources, RestartPolicy, ServiceMode, UpdateConfig

        serve = shlex.join([self.image.executable,
                            *self.image.serve_args("PORT", "REST_PORT", server.model.name, server.knobs)])
        self._server_command = serve
        serve = "exec " + serve.replace("--port=PORT", f"--port=$(({self.base_port} + SLOT))").replace(
            "--rest_api_port=REST_PORT", f"--rest_api_port=$(({self.base_port + REST_OFFSET} + SLOT))").replace(
            f"--host={HOST}", "--host=$BIND")
        # Each task binds the address listed for its node (NODE_ID is Swarm's template).
        pick = 'BIND=127.0.0.1; for pair in $NODE_ADDRESSES; do [ "${pair%%=*}" = "$NODE_ID" ] && BIND="${pair#*=}"; done; '
        addresses = " ".join(f"{node.id}={self._bind_address(node)}" for node in self.nodes)
        serving = any(node.serving for node in self.nodes)
        mounts = [Mount(target=bind["bind"], source=source, type="bind", read_only=True)
                  for source, bind in self.image.mounts(server.model.name).items()]
        memory = server.memory_mb * 2**20
        return {
            "image": self.image.reference, "command": ["/bin/sh", "-c", pick + serve], "name": f"optdse-{self.run.run_id}",
            "labels": {LABEL_RUN: self.run.run_id}, "container_labels": {LABEL_RUN: self.run.run_id},
            "env": ["SLOT={{.Task.Slot}}", "NODE_ID={{.Node.ID}}", f"NODE_ADDRESSES={addresses}",
                    "PYTHONDONTWRITEBYTECODE=1"], "mounts": mounts, "workdir": "/",
            "configs": self._batching_config(server.knobs),
            "constraints": [f"node.labels.{SERVE_LABEL}==true"] if serving else [],
            "networks": ["host"], "mode": ServiceMode("replicated", replicas=server.replicas),
            "resources": Resources(cpu_limit=int(server.cpus * 1e9), mem_limit=memory),
            "restart_policy": RestartPolicy(condition="on-failure", max_attempts=0),
            # Between trials nothing is serving: replace every task at once, with a short grace.
            "update_config": UpdateConfig(parallelism=0, delay=0, order="stop-first"),
            "stop_grace_period": 2 * 10**9,
        }

    def _batching_config(self, knobs: ServerKnobs) -> list[Any]:
        """The batching parameters file as a Swarm config (labelled with the run), which Swarm
        hands to tasks on any node at CONTAINER_BATCHING_FILE; [] when the knobs need none."""
        from docker.types import ConfigReference

        text = knobs.batching_file()
        if text is None:
            return []
        name = f"optdse-{self.run.run_id}-{knobs.batching_file_name().removesuffix('.txt')}"
        found = self.client.configs.list(filters={"name": name})
        config = found[0] if found else self.client.configs.create(name=name, data=text.encode(),
                                                                    labels={LABEL_RUN: self.run.run_id})
        return [ConfigReference(config.id, name, filename=CONTAINER_BATCHING_FILE)]

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        if server.replicas >= REST_OFFSET:
            raise DeployError("swarm", f"at most {REST_OFFSET - 1} replicas fit in a service's block of "
                                       f"loopback ports (asked for {server.replicas})")
        replaced: set[str] = set()
        nodes_changed = False
        self._note_killed()  # in case the trial failed before its check
        try:
            if server != self.current:  # also with no service yet (no current configuration)
                # Nodes labelled (or joined) since the service was made get their bind address
                # too; if the service's block of ports is taken on one of them, a new service
                # takes a block free everywhere.
                nodes = self._serving_nodes()
                added = self._remote_addresses([node for node in nodes if node not in self.nodes])
                if self.service is not None and any(answering_ports(address, block_ports(self.base_port))
                                                    for address in added):
                    self._remove_service()
                nodes_changed, self.nodes = nodes != self.nodes, nodes
            if self.service is None:
                self.base_port = free_base_port(self._remote_addresses(self.nodes))
                self._say_where(self.nodes)
                self.service = self.client.services.create(**self._spec(server))
            elif self._lost and server == self.current:
                replaced = set(self._lost)
            elif server != self.current:
                self._say_where(self.nodes)
                self.service.reload()
                if nodes_changed or self.current is None or replace(self.current, replicas=server.replicas) != server:
                    # New limits (or nodes' addresses) replace every task; until Swarm starts
                    # doing so, the service still shows the last update "completed" and the
                    # old tasks answering.
                    replaced = {t["ID"] for t in self.service.tasks()}
                self.service.update(**self._spec(server))
        except docker_errors().APIError as error:
            raise DeployError("swarm", f"service create/update refused: {error.explanation or error}") from None
        self.current = server
        self._lost.clear()
        self._wait_ready(server, replaced)
        return [Endpoint(replica=slot, host=self._bind_address(node), port=self.base_port + slot,
                         rest_port=self.base_port + REST_OFFSET + slot)
                for (slot, _, _), node in zip(self._tasks, self._task_nodes, strict=True)]

    def _serving_nodes(self) -> list[Node]:
        """The nodes tasks may run on. One node: itself, labelled or not. Several: those
        labelled optdse.serve=true, which must exist (otherwise replicas could land next to the
        load generator, or on a node this host cannot measure)."""
        nodes = swarm_nodes(self.client)
        if len(nodes) == 1:
            return nodes
        serving = [node for node in nodes if node.serving]
        if not serving:
            raise DeployError("swarm", f"this swarm has {len(nodes)} nodes and none is labelled for replicas; "
                                       f"label the serving nodes: docker node update --label-add {SERVE_LABEL}=true NODE")
        if self.image.mode == "host-python":
            raise DeployError("image", "the host-python image mounts this host's Python and cannot run on other nodes; "
                                       "use serving/Dockerfile's image (--image optdse/serving), loaded on every node")
        return serving

    def _remote_addresses(self, nodes: list[Node]) -> tuple[str, ...]:
        """The addresses tasks listen on for the nodes other than this host's own."""
        return tuple(node.address for node in nodes if node.id != self.own_node_id)

    def _say_where(self, nodes: list[Node]) -> None:
        """Warn, once per set of nodes, that tasks on other nodes listen on their swarm address."""
        if self._remote_addresses(nodes) and nodes != self._said_nodes:
            self._said_nodes = nodes
            self.warn("tasks listen on their nodes' swarm addresses (" + ", ".join(
                f"{n.hostname} {self._bind_address(n)}" for n in nodes) + f"), ports {self.base_port + 1}-"
                f"{self.base_port + 2 * REST_OFFSET - 1}: the load goes over that network, not loopback")

    def _bind_address(self, node: Node) -> str:
        """Loopback for a task on this host's own node, where the load generator runs; the
        node's swarm address on any other (counting serving nodes instead put the one labelled
        worker of a two-node swarm on loopback, out of the generator's reach)."""
        return HOST if node.id == self.own_node_id else node.address

    def _engine(self, node: Node) -> Any | None:
        """A client of the Docker engine on `node`: this host's for the node it is, the one given
        for it with --swarm-engine, else None (a task there cannot be inspected or killed)."""
        if node.id == self.own_node_id:
            return self.client
        url = self.engine_urls.get(node.hostname)
        if url is None:
            return None
        if url not in self._engines:
            import docker
            import requests

            try:
                self._engines[url] = docker.DockerClient(base_url=url, use_ssh_client=url.startswith("ssh://"),
                                                         version="auto", timeout=30)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as error:  # unreachable
                raise DeployError("swarm", f"--swarm-engine {node.hostname}={url}: cannot reach it "
                                           f"({type(error).__name__}: {error})") from None
        return self._engines[url]

    def _meter(self, node: Node, container_id: str) -> Cgroup | EngineStats:
        """What reads a task's CPU and memory: its node's Docker engine if one was given for it
        (--swarm-engine), else this host's cgroups (a task here)."""
        if node.hostname in self.engine_urls:
            return EngineStats(self._engine(node), container_id)
        if node.id != self.own_node_id:
            raise DeployError("swarm", f"a task runs on node {node.hostname}, whose CPU this host cannot read; "
                                       f"give its Docker engine: --swarm-engine {node.hostname}=ssh://USER@{node.hostname}")
        return container_cgroup(container_id)

    def _wait_ready(self, server: ServerConfig, replaced: set[str] | None = None) -> None:
        """Until the update completed, every slot runs a task that is not one of `replaced`
        and answers AVAILABLE."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self.service.reload()
            update = self.service.attrs.get("UpdateStatus", {}).get("State", "completed")
            tasks = self.service.tasks(filters={"desired-state": "running"})
            self._raise_if_oom(server)
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            fresh = not any(t["ID"] in (replaced or ()) for t in tasks)
            if fresh and update in ("completed", "") and len(running) == server.replicas == len(tasks):
                by_id = {node.id: node for node in swarm_nodes(self.client)}  # a node may have joined since
                running.sort(key=lambda t: t["Slot"])
                self._task_nodes = [by_id[t["NodeID"]] for t in running]
                self._tasks = [(t["Slot"], t["Status"]["ContainerStatus"]["ContainerID"],
                                self._meter(by_id[t["NodeID"]], t["Status"]["ContainerStatus"]["ContainerID"]))
                               for t in running]
                for (slot, _, _), node in zip(self._tasks, self._task_nodes, strict=True):
                    try:
                        wait_available(f"{self._bind_address(node)}:{self.base_port + slot}", server.model.name,
                                       max(1.0, deadline - time.monotonic()), self._no_oom_yet)
                    except ChildProcessError:
                        self._raise_if_oom(server)
                        raise DeployError("exited", f"task {slot} stopped before it was ready") from None
                    except TimeoutError as error:
                        raise DeployError("timeout", f"task {slot}: {error}") from None
                return
            time.sleep(0.3)
        raise DeployError("timeout", f"service {self.service.name} not ready after {self.ready_timeout:g} s")

    def _oom_killed_task(self) -> int | None:
        """The slot of a task whose container the kernel OOM-killed, if any, asked of the
        engine of the node the task ran on (a container exists only on its own node)."""
        import docker

        nodes = {node.id: node for node in swarm_nodes(self.client)}
        for task in self.service.tasks():
            container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
            if task["Status"]["State"] not in ("failed", "shutdown", "complete") or not container_id:
                continue
            node = nodes.get(task.get("NodeID", ""))
            engine = self._engine(node) if node is not None else None
            if engine is None:
                continue  # a node that left, or one without --swarm-engine: nothing to ask
            try:
                state = engine.api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:  # already removed
                continue
            if state.get("OOMKilled"):
                return int(task["Slot"])
        return None

    def _raise_if_oom(self, server: ServerConfig) -> None:
        slot = self._oom_killed_task()
        if slot is not None:
            self._remove_service()
            raise DeployError("OOM", f"task {slot} was killed by its {server.memory_mb} MB memory limit")

    def _no_oom_yet(self) -> bool:
        """Readiness keeps polling while this is True; Swarm restarts OOM-killed tasks on its
        own, so without this check a too-small limit would look like a slow start."""
        now = time.monotonic()
        if now - self._last_oom_check < 0.5:
            return True
        self._last_oom_check = now
        return self._oom_killed_task() is None

    @property
    def server_command(self) -> str:
        return self._server_command

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(container for _, container, _ in self._tasks)

    def usage(self) -> ResourceSample:
        """The tasks' CPU and memory, stamped when the figures were read. A Docker engine's
        stats call answers at its next collection tick, up to a second later (measured: calls
        0.5 s apart each took 503 ms), with figures as of that tick: the engines are asked all
        at once, so every task's figures are of the same tick, and the stamp is taken after
        they answered (stamped before, the CPU of up to a second later stood at each end of
        the window: 26% less ACU on the two-node bed than on one node for the same trials)."""
        meters = [meter for _, _, meter in self._tasks]
        remote = [meter for meter in meters if isinstance(meter, EngineStats)]
        engine_cpu = dict(zip(remote, self._stats_reader.map(EngineStats.cpu_seconds, remote), strict=True))
        cpu = tuple(engine_cpu[meter] if isinstance(meter, EngineStats) else meter.cpu_seconds() for meter in meters)
        return ResourceSample(time=time.perf_counter(), cpu_seconds=cpu, memory_bytes=tuple(m.memory_bytes() for m in meters),
                              nodes=tuple(node.hostname for node in self._task_nodes))

    def memory_peaks(self) -> tuple[int, ...]:
        return tuple(c.memory_peak() or 0 for _, _, c in self._tasks)

    def reset_peaks(self) -> None:
        for _, _, group in self._tasks:
            group.reset_peak()

    def check(self) -> list[str]:
        if self.current is not None and self.service is not None:
            self._raise_if_oom(self.current)
        return self._note_killed()

    def _note_killed(self) -> list[str]:
        """Tasks `kill_replica` killed become lost: the next `apply` waits for their replacements."""
        killed = [f"task {slot}" for slot, _ in self._killed]
        for _, task_ids in self._killed:
            self._lost |= task_ids
        self._killed = []
        return killed

    def kill_replica(self) -> str:
        """Kill the last task's container; Swarm starts a new task in its slot by itself, and the
        next `apply` waits for it."""
        if not self._tasks:
            raise DeployError("chaos", "no task to kill")
        slot, container_id, _ = self._tasks[-1]
        task_ids = {task["ID"] for task in self.service.tasks()
                    if task["Status"].get("ContainerStatus", {}).get("ContainerID") == container_id}
        engine = self._engine(self._task_nodes[-1])
        if engine is None:
            raise DeployError("chaos", f"task {slot} runs on node {self._task_nodes[-1].hostname}, whose engine this "
                                       f"host cannot reach; give it: --swarm-engine {self._task_nodes[-1].hostname}=URL")
        self._killed.append((slot, frozenset(task_ids)))
        engine.containers.get(container_id).kill()  # SIGKILL, on its own node, by the container id of this run's task
        return f"task {slot}"

    def _remove_service(self) -> None:
        if self.service is not None:
            service, self.service, self.current, self._tasks, self._task_nodes = self.service, None, None, [], []
            service.remove()
            # Its containers go away asynchronously, each on its own node: wait on the engine of
            # every node it could run on (ignore_removed: tasks vanish while listed). Not only
            # the engines already opened: a service whose task died before its stats were read
            # left that container behind on its worker for a moment after the run ended.
            deadline = time.monotonic() + 60
            label = f"{LABEL_RUN}={self.run.run_id}"
            for engine in self._reachable_engines():
                while (engine.containers.list(all=True, filters={"label": label}, ignore_removed=True)
                       and time.monotonic() < deadline):
                    time.sleep(0.3)

    def _reachable_engines(self) -> list[Any]:
        """This host's engine and that of each serving node given with --swarm-engine; an
        engine that cannot be reached is skipped (`optdse clean --swarm-engine` reaches it later)."""
        engines = [self.client]
        for node in self.nodes:
            try:
                engine = self._engine(node)
            except DeployError:
                continue
            if engine is not None and engine not in engines:
                engines.append(engine)
        return engines

    def close(self) -> None:
        """Remove the service; leave the swarm too if this run initialised it (--swarm-init)."""
        try:
            self._remove_service()
            remove_labelled(self.client, lambda run_id: run_id == self.run.run_id)  # one created as Ctrl-C came
            self._stats_reader.shutdown()
            for engine in self._engines.values():
                engine.close()
            if self.initialised_swarm:
                self.client.swarm.leave(force=True)
                self.initialised_swarm = False
        finally:
            self.run.finish()


__all__ = ["SwarmBackend"]
