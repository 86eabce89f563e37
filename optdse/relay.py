"""A TCP relay between the load generator and the replicas, optionally impairing the link.

Run as a process of its own (`python -m optdse.relay SPEC`, started by optdse/network.py), so
its work never competes with the study process's GIL and its CPU is never counted as the
replicas'. SPEC is JSON: `routes` (each a `listen` [host, port] and an `upstream` [host, port];
port 0 picks a free one), `impairment` (delay_ms, jitter_ms, loss_pct; all 0 relays as is),
`seed`, `parent` (the starting process's pid), and `listen_netns`, a network namespace to open the listening sockets in (the upstream
connections stay in the relay's own namespace: that is how the netem method reaches replicas
on the host's loopback from the server namespace). Once listening it prints one JSON line,
`{"ports": [...]}`, and relays until SIGTERM, or until its parent dies.

The userspace impairment model, used where the kernel has no netem. Each direction of a
connection is a queue of the chunks read from its socket, delivered in order:
- delay: every chunk is held delay_ms / 2 (so a request and its answer add delay_ms per round
  trip), plus uniform jitter of +-jitter_ms / 2 per direction; a chunk is never delivered before
  the one read ahead of it (TCP delivers in order, so jitter cannot reorder a byte stream).
- loss: a byte stream cannot lose a packet, so the relay shows what TCP makes of a lost one.
  A chunk is cut into MSS-sized segments (1448 bytes), each lost with probability loss_pct;
  a chunk with a lost segment arrives one retransmission timeout late (Linux's minimum RTO,
  200 ms, plus the link's round trip), doubling for each further loss of the same segment, and
  everything behind it waits (head-of-line blocking). A client sees loss as latency and, past
  its deadline, as errors, as it would through netem (where a lost SYN costs 1 s instead).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass

#: TCP payload per Ethernet frame (1500 MTU - 40 bytes of IP/TCP headers - 12 of timestamps).
MSS = 1448
#: Linux's TCP_RTO_MIN: the least a lost segment costs before it is sent again.
MIN_RTO_S = 0.2
#: Linux's TCP_RTO_MAX.
MAX_RTO_S = 120.0
READ_SIZE = 65536
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Impairment:
    """What the link adds: delay and jitter per round trip (ms), loss per packet (%)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss_pct <= 100:
            raise ValueError(f"impossible impairment {self}: delay and jitter >= 0, loss 0..100 %")

    def hold_s(self, size: int, rng: random.Random) -> float:
        """How long one chunk of `size` bytes spends on the link in one direction."""
        one_way = self.delay_ms / 2e3
        if self.jitter_ms:
            one_way = max(0.0, one_way + rng.uniform(-self.jitter_ms, self.jitter_ms) / 2e3)
        if self.loss_pct:
            lost_chunk = 1.0 - (1.0 - self.loss_pct / 100) ** math.ceil(size / MSS)
            rto = MIN_RTO_S + self.delay_ms / 1e3
            while rng.random() < lost_chunk:  # each retransmission is lost with the same chance
                one_way += rto
                rto = min(2 * rto, MAX_RTO_S)
                lost_chunk = self.loss_pct / 100
        return one_way


def enter_netns(path: str) -> None:
    """Move the calling thread (the whole process, while it has one thread) into the network
    namespace at `path`, e.g. /run/netns/NAME (Python 3.11 has no os.setns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impairment: Impairment,
                rng: random.Random) -> None:
    """One direction of one connection: read chunks, deliver each when the link would."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await pending.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                # Wakes up to 1 ms late (epoll waits in whole ms; 0.75 ms late on average here).
                # Tried and dropped: blocking for the last millisecond (stalls every other
                # connection), a timer thread (waits for the GIL), waking early (no gain).
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    delivering = asyncio.create_task(deliver())
    last_due = 0.0
    try:
        while data := await reader.read(READ_SIZE):
            last_due = max(last_due, loop.time() + impairment.hold_s(len(data), rng))
            pending.put_nowait((last_due, data))
    except (ConnectionError, OSError):
        pass
    pending.put_nowait(None)
    try:
        await delivering
    except (ConnectionError, OSError):
        pass


async def _relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, upstream: tuple[str, int],
                 impairment: Impairment, rng: random.Random) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*upstream)
    except OSError:  # the replica is gone (chaos, OOM): the client sees its connection closed
        client_writer.transport.abort()
        return
    for writer in (client_writer, server_writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(_pipe(client_reader, server_writer, impairment, rng),
                             _pipe(server_reader, client_writer, impairment, rng))
    finally:
        for writer in (client_writer, server_writer):
            writer.transport.abort()


def _listen(routes: list[dict[str, list]], netns: str | None) -> list[socket.socket]:
    """Listening sockets for the routes, opened inside `netns` if given; the process then
    returns to its own namespace for everything else (the upstream connections)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else None
    try:
        if netns:
            enter_netns(netns)
        sockets = []
        for route in routes:
            host, port = route["listen"]
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
            sockets.append(sock)
        return sockets
    finally:
        if home is not None:
            enter_netns(f"/proc/self/fd/{home}")
            os.close(home)


async def serve(spec: dict) -> None:
    impairment = Impairment(**spec.get("impairment", {}))
    rng = random.Random(spec.get("seed"))
    sockets = _listen(spec["routes"], spec.get("listen_netns"))
    servers = []
    for sock, route in zip(sockets, spec["routes"]):
        upstream = tuple(route["upstream"])

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         upstream: tuple = upstream) -> None:
            try:
                await _relay(reader, writer, upstream, impairment, rng)
            except asyncio.CancelledError:
                # The relay is stopping (asyncio.run cancels what is left). Ending normally
                # keeps Python 3.11's start_server callback from logging the cancellation
                # as an error with a traceback.
                writer.close()

        servers.append(await asyncio.start_server(handle, sock=sock))
    print(json.dumps({"ports": [sock.getsockname()[1] for sock in sockets]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    # Until the event loop takes them over, a stop signal ends the relay as quietly as after.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_quietly)
    # Die with the optdse process that started this relay, even if it is SIGKILLed.
    spec = json.loads(sys.argv[1])
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != spec["parent"]:  # the parent died before prctl
        return
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
