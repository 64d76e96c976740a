"""The HTTP part every protocol shares: a pooled keep-alive session per provider.

Implements :class:`~services.worker.adapters.base.Http`: connection errors and
timeouts become :class:`UpstreamError` / :class:`GatewayTimeout` (retryable before
the first byte), error statuses are mapped by the provider's protocol, and SSE is
parsed here once for all protocols.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from libs.common import tracing
from libs.common.config import ProviderConfig
from libs.common.errors import GatewayTimeout, Overloaded, UpstreamError, UpstreamProtocolError

from .adapters.base import HttpCall, HttpResponse, Protocol

# An SSE event larger than this (a line that never ends, say) ends the stream with an
# error: the parser's buffer must not grow with whatever an upstream sends.
MAX_EVENT_BYTES = 32 * 1024 * 1024


class EventTooLarge(ValueError):
    """An upstream SSE event went past the parser's bound without ending."""


def new_session(p: ProviderConfig) -> aiohttp.ClientSession:
    # The connector never makes a call wait: Pool admits at most max_connections calls.
    connector = aiohttp.TCPConnector(
        limit=p.max_connections, keepalive_timeout=60, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s, sock_read=p.timeout_s)
    # auto_decompress stays on; raise_for_status off: protocols map error bodies.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))


class Pool:
    """At most ``size`` calls in flight to one provider; a call waits ``wait_s`` at most for a slot.

    A burst beyond the pool does not queue silently behind the connector: after
    ``wait_s`` the call fails with :class:`Overloaded` (retryable, so the request moves
    to its next candidate, or the client gets 503 with Retry-After), and saturation is
    logged (at most once per ``LOG_EVERY_S``) and counted.
    """

    LOG_EVERY_S = 10.0

    def __init__(self, provider: str, size: int, wait_s: float, log: Any = None) -> None:
        self.provider = provider
        self.size = size
        self.wait_s = wait_s
        self.log = log
        self._sem = asyncio.Semaphore(size)
        self.waiting = 0
        self.rejected = 0
        self._logged = -self.LOG_EVERY_S

    async def acquire(self) -> None:
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot: returns without suspending
            return
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_s):
                await self._sem.acquire()
        except TimeoutError:
            self.rejected += 1
            self._saturated()
            raise Overloaded(
                f"all {self.size} connections to provider {self.provider!r} are busy",
                provider=self.provider,
                retry_after=1.0,
            ) from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._sem.release()

    def _saturated(self) -> None:
        now = time.monotonic()
        if self.log is not None and now - self._logged >= self.LOG_EVERY_S:
            self._logged = now
            self.log.warning(
                "upstream_pool_saturated",
                provider=self.provider,
                size=self.size,
                waiting=self.waiting,
                rejected=self.rejected,
            )


class Upstream:
    """HTTP for one provider, bound to its protocol (for error mapping)."""

    def __init__(
        self,
        provider: ProviderConfig,
        protocol: Protocol,
        session: aiohttp.ClientSession,
        log: Any = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.provider = provider
        self.protocol = protocol
        self.session = session
        self.pool = Pool(provider.id, provider.max_connections, provider.pool_wait_s, log)
        self.max_event_bytes = max_event_bytes

    def _failed(self, e: BaseException) -> UpstreamError | GatewayTimeout:
        pid = self.provider.id
        if isinstance(e, asyncio.TimeoutError):
            return GatewayTimeout(f"provider {pid!r} did not answer in time", provider=pid)
        return UpstreamError(f"cannot reach provider {pid!r}: {type(e).__name__}: {e}", provider=pid)

    async def fetch(self, call: HttpCall) -> HttpResponse:
        await self.pool.acquire()
        try:
            with tracing.span(f"upstream {call.method}", tracing.CLIENT, None, **{"http.url": call.url}):
                try:
                    async with self.session.request(
                        call.method, call.url, data=call.body, headers=call.headers
                    ) as resp:
                        body = await resp.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise self._failed(e) from None
        finally:
            self.pool.release()
        if resp.status >= 400:
            raise self.protocol.error(resp.status, body, resp.headers)
        return HttpResponse(resp.status, resp.headers, body)

    async def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        await self.pool.acquire()
        try:  # one generator layer (no wrapper): the slot is released when it ends
            with tracing.span(
                f"upstream {call.method} (stream)", tracing.CLIENT, None, **{"http.url": call.url}
            ):
                try:
                    resp = await self.session.request(
                        call.method, call.url, data=call.body, headers=call.headers
                    )
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise self._failed(e) from None
                try:
                    if resp.status >= 400:
                        raise self.protocol.error(resp.status, await resp.read(), resp.headers)
                    parser = SSEParser(self.max_event_bytes)
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
                except EventTooLarge as e:
                    raise UpstreamProtocolError(
                        f"provider {self.provider.id!r} broke the stream protocol: {e}",
                        provider=self.provider.id,
                    ) from None
                finally:
                    if resp.content.at_eof():
                        resp.release()  # back to the pool
                    else:
                        resp.close()  # abandoned mid-body: the connection cannot be reused
        finally:
            self.pool.release()


class SSEParser:
    """Incremental Server-Sent Events parser yielding (event name, data) per event.

    Linear in the bytes fed, however they are split: a partial event is kept in one
    growing buffer and the search for its end resumes where the previous read stopped
    (never from the start, never by re-concatenating). An event that reaches
    ``limit`` bytes without ending raises :class:`EventTooLarge`.
    """

    __slots__ = ("_buf", "_scan", "_cr", "limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the search for the next blank line resumes in _buf
        self._cr = False  # the last read ended in CR: maybe half of a CRLF
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:
            if data[-1:] == b"\r":
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Usually no partial event is held and this read is whole events: parse it in place.
        buf: bytes | bytearray = data
        scan = 0
        if self._buf:
            buf = self._buf
            buf += data
            scan = self._scan
        out: list[tuple[str, bytes]] = []
        start = 0
        end = buf.find(b"\n\n", scan)
        while end >= 0:
            ev = _parse_event(bytes(buf[start:end]))  # bytes of bytes: no copy
            if ev is not None:
                out.append(ev)
            start = end + 2
            end = buf.find(b"\n\n", start)
        rest = len(buf) - start
        if rest >= self.limit:
            raise EventTooLarge(f"an SSE event exceeds {self.limit} bytes")
        if buf is self._buf:
            del buf[:start]
        elif rest:
            self._buf = bytearray(buf[start:])
        self._scan = max(0, len(self._buf) - 1)  # a blank line may straddle two reads
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """At EOF: a held CR ends its line; an event left without its blank line is dropped."""
        out: list[tuple[str, bytes]] = []
        if self._cr:
            self._cr = False
            out = self.feed(b"\n")
        self._buf = bytearray()
        self._scan = 0
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
