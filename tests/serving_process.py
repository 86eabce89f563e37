"""Start and stop real optdse-serve processes for tests and benchmarks.

Each server is a child process on 127.0.0.1 with ports picked free by the OS; it is stopped
by its own pid (SIGTERM, then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from serving.tensorflow_import import import_tensorflow

import_tensorflow()  # the tests build tensors with TF itself, so the real package loads first
from optdse.deploy.base import free_port  # noqa: E402
from optdse.deploy.local import serve_command  # noqa: E402
from optdse.protos import protos  # noqa: E402
from tests.processes import stop_process  # noqa: E402


class ServerProcess:
    def __init__(self, model_base_path: Path, model_name: str = "mnist", rest: bool = True, *extra: str) -> None:
        self.model_name = model_name
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        self.args = [
            *serve_command(), f"--port={self.port}", f"--rest_api_port={self.rest_port}",
            f"--model_name={model_name}", f"--model_base_path={model_base_path}", *extra,
        ]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"optdse-serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        self._tail = ""
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        # Short reconnect backoff: the port opens seconds after start, and gRPC's default
        # 1 s backoff after the first refused connection would hide the LOADING state.
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[
            ("grpc.initial_reconnect_backoff_ms", 10),
            ("grpc.min_reconnect_backoff_ms", 10),
            ("grpc.max_reconnect_backoff_ms", 50),
        ])

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def wait_available(self, timeout: float = 120.0) -> list[int]:
        """Poll GetModelStatus until AVAILABLE; returns every state seen, in order."""
        pb = protos()
        stub = pb.model_service_pb2_grpc.ModelServiceStub(self.channel)
        request = pb.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"optdse-serve exited with {self.process.returncode}: {self.log()}")
            try:
                state = stub.GetModelStatus(request, timeout=1.0).model_version_status[0].state
            except grpc.RpcError:  # not listening yet: importing TensorFlow, a second or two
                time.sleep(0.02)
                continue
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == pb.status_available:
                return seen
            time.sleep(0.01)  # often enough to see LOADING; each poll costs the loading server CPU too
        raise TimeoutError(f"optdse-serve not AVAILABLE after {timeout}s: {self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        if not self.log_path.exists():  # removed after a clean exit; its end was kept
            return self._tail
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        self.channel.close()
        stop_process(self.process, signal.SIGTERM, grace_s=15)
        self._log.close()
        if self.process.returncode == 0:  # a clean exit leaves no log file behind; keep its end for log()
            self._tail = self.log_path.read_text(errors="replace")[-3000:]
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode


def optdse_command() -> list[str]:
    script = Path(sys.executable).parent / "optdse"
    return [str(script)] if script.exists() else [sys.executable, "-m", "optdse.cli"]


def export_model(name: str, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`optdse model export NAME --output OUTPUT`, as a user runs it."""
    return subprocess.run([*optdse_command(), "model", "export", name, "--output", str(output), *extra],
                          capture_output=True, text=True, timeout=600)


__all__ = ["ServerProcess", "export_model", "free_port"]
