"""The HTTP part every protocol shares: a pooled keep-alive session per provider.

Implements :class:`~services.worker.adapters.base.Http`: connection errors and
timeouts become :class:`UpstreamError` / :class:`GatewayTimeout` (retryable before
the first byte), error statuses are mapped by the provider's protocol, and SSE is
parsed here once for all protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from libs.common import tracing
from libs.common.config import ProviderConfig
from libs.common.errors import GatewayTimeout, UpstreamError

from .adapters.base import HttpCall, HttpResponse, Protocol


def new_session(p: ProviderConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=p.max_connections, keepalive_timeout=60, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s, sock_read=p.timeout_s)
    # auto_decompress stays on; raise_for_status off: protocols map error bodies.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))


class Upstream:
    """HTTP for one provider, bound to its protocol (for error mapping)."""

    def __init__(self, provider: ProviderConfig, protocol: Protocol, session: aiohttp.ClientSession) -> None:
        self.provider = provider
        self.protocol = protocol
        self.session = session

    def _failed(self, e: BaseException) -> UpstreamError | GatewayTimeout:
        pid = self.provider.id
        if isinstance(e, asyncio.TimeoutError):
            return GatewayTimeout(f"provider {pid!r} did not answer in time", provider=pid)
        return UpstreamError(f"cannot reach provider {pid!r}: {type(e).__name__}: {e}", provider=pid)

    async def fetch(self, call: HttpCall) -> HttpResponse:
        with tracing.span(f"upstream {call.method}", tracing.CLIENT, None, **{"http.url": call.url}):
            try:
                async with self.session.request(
                    call.method, call.url, data=call.body, headers=call.headers
                ) as resp:
                    body = await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise self._failed(e) from None
        if resp.status >= 400:
            raise self.protocol.error(resp.status, body, resp.headers)
        return HttpResponse(resp.status, resp.headers, body)

    async def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        with tracing.span(f"upstream {call.method} (stream)", tracing.CLIENT, None, **{"http.url": call.url}):
            try:
                resp = await self.session.request(call.method, call.url, data=call.body, headers=call.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise self._failed(e) from None
            try:
                if resp.status >= 400:
                    raise self.protocol.error(resp.status, await resp.read(), resp.headers)
                parser = SSEParser()
                try:
                    async for data in resp.content.iter_any():
                        batch = parser.feed(data)
                        if batch:
                            yield batch
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise UpstreamError(
                        f"stream from provider {self.provider.id!r} broke: {type(e).__name__}",
                        provider=self.provider.id,
                    ) from None
                tail = parser.flush()
                if tail:
                    yield tail
            finally:
                if resp.content.at_eof():
                    resp.release()  # back to the pool
                else:
                    resp.close()  # abandoned mid-body: the connection cannot be reused


class SSEParser:
    """Incremental Server-Sent Events parser yielding (event name, data) per event."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf + data if self._buf else data
        hold = b""
        if b"\r" in buf:
            if buf[-1:] == b"\r":  # maybe half of a CRLF split across reads
                buf, hold = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[tuple[str, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            ev = _parse_event(buf[start:end])
            if ev is not None:
                out.append(ev)
            start = end + 2
        self._buf = buf[start:] + hold
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """At EOF: a held CR ends its line; an event left without its blank line is dropped."""
        out = self.feed(b"\n") if self._buf.endswith(b"\r") else []
        self._buf = b""
        return out


def _parse_event(block: bytes) -> tuple[str, bytes] | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case, fast
        return "", block[6:]
    event = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 58:  # ':' comment
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode()
    if not data and not event:
        return None
    return event, b"\n".join(data)
