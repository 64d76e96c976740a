"""Shared pytest fixtures. Helpers live in tests/natsutil.py, tests/schema.py, tests/emulators/."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make `tests.*`, `services.*` and `libs.*` importable however pytest is invoked.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import natsutil  # noqa: E402
from tests.emulators.openai_upstream import UpstreamState, running  # noqa: E402


def _start_nats(store_dir: Path) -> natsutil.NatsServer | natsutil.DockerNatsServer:
    try:
        return natsutil.start_nats_server(store_dir)
    except natsutil.NatsServerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def nats_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[natsutil.NatsServer | natsutil.DockerNatsServer]:
    """One JetStream NATS server for the whole session (don't kill it; use nats_server_fn)."""
    srv = _start_nats(tmp_path_factory.mktemp("nats-session"))
    yield srv
    natsutil.shutdown(srv)


@pytest.fixture
def nats_server_fn(tmp_path: Path) -> Iterator[natsutil.NatsServer | natsutil.DockerNatsServer]:
    """A private JetStream NATS server per test: .kill()/.stop()/.start() keep port and store dir."""
    srv = _start_nats(tmp_path / "nats")
    yield srv
    natsutil.shutdown(srv)


@pytest.fixture
async def upstream():
    """A strict OpenAI emulator (key ``sk-test``): yields (state, base URL ending in /v1)."""
    state = UpstreamState(api_key="sk-test")
    async with running(state) as base_url:
        yield state, base_url
