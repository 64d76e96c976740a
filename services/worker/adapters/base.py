"""The adapter interface every provider protocol implements.

An adapter is split in two:

* a pure *protocol* (:class:`Protocol`): builds the upstream HTTP request from the
  client's OpenAI request (a ``dict`` decoded once by the worker), turns the
  upstream response body or its stream events into OpenAI bytes, and maps the
  upstream's errors onto :mod:`libs.common.errors`. No I/O: tested without network.
* the HTTP part, shared by all protocols, in :mod:`services.worker.upstream`
  (pooled aiohttp session, SSE reading, timeouts, first-byte failover). A protocol
  whose flow is more than one HTTP call (Replicate: create, then stream) overrides
  :meth:`Protocol.run_chat`.

Operations: ``chat`` (POST /v1/chat/completions), ``completions`` (legacy
POST /v1/completions) and ``embeddings``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from typing import Protocol as _Interface

from libs.common.errors import InvalidRequest, SwitchmanError, UpstreamError

from ..chunks import Usage

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig
    from libs.common.profiles import Profile


@dataclass(slots=True)
class HttpCall:
    """One upstream HTTP request, ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    stream: bool = False  # read the response as SSE


@dataclass(slots=True)
class Translated:
    """A complete (non-stream) OpenAI response body and the usage it reports."""

    body: bytes
    usage: Usage = field(default_factory=Usage)


class StreamTranslator:
    """Turns one upstream SSE stream into OpenAI ``chat.completion.chunk`` JSON bytes.

    ``feed`` is called once per SSE event (``event`` is the SSE event name or "")
    and returns the chunks to send, in order (possibly none). It raises a
    :class:`SwitchmanError` on an in-stream error event. ``close`` is called at the
    upstream's EOF and returns the final chunks (finish, usage when requested); it
    raises :class:`UpstreamError` when the stream was cut before its proper end
    (a cut stream is never reported as a clean finish).
    """

    usage: Usage | None = None
    done: bool = False

    def feed(self, event: str, data: bytes) -> list[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError("upstream stream ended before its final event")
        return []


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Http(_Interface):
    """What a protocol may do on the network (implemented by :mod:`services.worker.upstream`).

    Connection errors and timeouts surface as :class:`UpstreamError` /
    :class:`GatewayTimeout` from these calls.
    """

    async def fetch(self, call: HttpCall) -> HttpResponse:
        """Send ``call``; a status >= 400 raises ``protocol.error(status, body, headers)``."""
        ...

    def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Send ``call`` and yield its SSE events as (event name or "", data), in batches:
        every event that one network read completed, so their chunks travel together.

        An error status raises ``protocol.error(...)`` before the first event.
        """
        ...


class Sink(_Interface):
    """Where OpenAI output goes (the reply inbox). ``started`` turns true at the first byte."""

    started: bool

    async def chunk(self, *pieces: bytes) -> None:
        """Send stream chunks; the ones given together may travel in one frame."""
        ...

    async def result(self, body: bytes) -> None: ...


class Protocol:
    """A provider wire protocol. Subclasses set ``kind`` and override what they support."""

    kind: ClassVar[str]
    # Request fields this protocol understands (others are dropped or rejected per profile).
    ops: ClassVar[frozenset[str]] = frozenset({"chat"})

    def __init__(self, provider: ProviderConfig, profile: Profile) -> None:
        self.provider = provider
        self.profile = profile

    # -- the flow ---------------------------------------------------------------------
    async def run(
        self, http: Http, sink: Sink, op: str, req: dict[str, Any], model: str, stream: bool
    ) -> Usage | None:
        """Execute one request: one HTTP call, translated. Multi-call flows override this.

        Errors raised before ``sink.started`` may move the request to the next
        candidate (when retryable); after it they end the client's stream.
        """
        if op == "embeddings":
            call = self.embeddings_request(req, model)
            resp = await http.fetch(call)
            out = self.embeddings_response(resp.body, model, req)
            await sink.result(out.body)
            return out.usage
        if op == "chat":
            build, parse, streamer = self.chat_request, self.chat_response, self.chat_stream
        else:
            build, parse, streamer = (
                self.completions_request,
                self.completions_response,
                self.completions_stream,
            )
        # Read before build(): a protocol may rewrite stream_options for its own needs.
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        call = build(req, model, stream)
        if not stream:
            resp = await http.fetch(call)
            out = parse(resp.body, model)
            await sink.result(out.body)
            return out.usage
        translator = streamer(model, include_usage)
        await relay(http, call, translator, sink)
        tail = translator.close()
        if tail:
            await sink.chunk(*tail)
        return translator.usage

    # -- chat -------------------------------------------------------------------
    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        raise InvalidRequest(f"provider {self.provider.id!r} does not serve chat completions")

    def chat_response(self, body: bytes, model: str) -> Translated:
        raise NotImplementedError

    def chat_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        raise NotImplementedError

    # -- legacy completions ------------------------------------------------------
    def completions_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        raise InvalidRequest(f"provider {self.provider.id!r} does not serve /v1/completions", param="model")

    def completions_response(self, body: bytes, model: str) -> Translated:
        raise NotImplementedError

    def completions_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        raise NotImplementedError

    # -- embeddings --------------------------------------------------------------
    def embeddings_request(self, req: dict[str, Any], model: str) -> HttpCall:
        raise InvalidRequest(f"provider {self.provider.id!r} does not serve embeddings", param="model")

    def embeddings_response(self, body: bytes, model: str, req: dict[str, Any]) -> Translated:
        raise NotImplementedError

    # -- errors and discovery -------------------------------------------------------
    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        """Map an upstream error response (status >= 400) onto the hierarchy."""
        raise NotImplementedError

    def models_request(self) -> HttpCall | None:
        """The upstream's own model list, or None when it has none."""
        return None

    def models_response(self, body: bytes) -> list[str]:
        return []


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (integer seconds; HTTP dates are ignored)."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def relay(http: Http, call: HttpCall, translator: StreamTranslator, sink: Sink) -> None:
    """Feed the SSE batches of ``call`` through ``translator`` to ``sink`` until its end.

    What one network read produced goes out as one frame; what came before an in-stream
    error still reaches the client, first.
    """
    async with contextlib.aclosing(http.events(call)) as batches:  # type: ignore[type-var]
        async for batch in batches:
            pieces: list[bytes] = []
            try:
                for event, data in batch:
                    pieces += translator.feed(event, data)
                    if translator.done:
                        break
            finally:
                if pieces:
                    await sink.chunk(*pieces)
            if translator.done:
                return
