"""Model discovery: each provider's own model list, and local servers found on their ports.

Runs once at worker start. A provider with ``discover_models: true`` (and every
provider found from an environment API key or a local port) gets its upstream
model list added to the models it serves; failures are logged, never fatal.
Local servers (Ollama, LM Studio, vLLM, llama.cpp, LocalAI) are probed on their
usual ports (``discovery.endpoints``) with a short timeout; one that answers its
model-list endpoint becomes provider ``local-<name>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from libs.common.config import LocalDiscovery, ProviderConfig
from libs.common.errors import SwitchmanError
from libs.common.profiles import profile_for

from .adapters import protocol_class

if TYPE_CHECKING:
    from .binding import Binding


async def _list(session: aiohttp.ClientSession, b: Any, timeout: float) -> list[str]:
    call = b.protocol.models_request()
    if call is None:
        return []
    async with asyncio.timeout(timeout):
        resp = await b.upstream.fetch(call)
    return [m for m in b.protocol.models_response(resp.body) if m]


async def models(bindings: Iterable[Binding], log: Any, timeout: float = 5.0) -> None:
    """Add each discovering provider's upstream model list to what it serves."""

    async def one(b: Binding) -> None:
        try:
            found = await _list(b.session, b, timeout)
        except (SwitchmanError, TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            log.warning("model_discovery_failed", provider=b.provider.id, error=str(e))
            return
        for m in found:
            if m not in b.models:
                b.models.append(m)
        log.info("models_discovered", provider=b.provider.id, count=len(found))

    await asyncio.gather(*(one(b) for b in bindings if b.provider.discover_models))


async def local_servers(
    cfg: LocalDiscovery, known_urls: set[str | None], own_port: int
) -> list[ProviderConfig]:
    """Providers for the local servers that answer on their usual ports (never our own port)."""

    async def probe(name: str, url: str, session: aiohttp.ClientSession) -> ProviderConfig | None:
        if url in known_urls or urlsplit(url).port == own_port:
            return None
        p = ProviderConfig(id=f"local-{name}", kind="openai", preset=name, base_url=url, discover_models=True)
        proto = protocol_class("openai")(p, profile_for("openai", name))
        call = proto.models_request()
        if call is None:
            return None
        try:
            async with session.get(call.url, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
                if resp.status != 200:
                    return None
                proto.models_response(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        return p

    async with aiohttp.ClientSession() as session:
        found = await asyncio.gather(*(probe(n, u, session) for n, u in cfg.endpoints.items()))
    return [p for p in found if p is not None]
