"""Replicate: hosted language models (``meta/meta-llama-3-8b-instruct``) via predictions.

One chat request is three HTTP calls (:meth:`ReplicateProtocol.run`):

1. create — ``POST {base}/models/{owner}/{name}/predictions``, or ``POST {base}/predictions``
   with ``version`` when the model is ``owner/name:<version>`` (or a bare version id);
   body ``{"input": {...}, "stream": true}``. No ``Prefer: wait``: it would hold the create
   response until the model finished, delaying the first token by the whole generation.
2. stream — ``GET urls.stream`` (``Accept: text/event-stream``): ``output`` events carry raw
   text pieces, ``error`` (``{"detail"}``) fails the request, ``done`` (``{}``, or
   ``{"reason": "canceled"|"error"}``, both failures) ends it; ``logs`` are ignored. A
   stream that ends without ``done`` raises :class:`UpstreamError`, never a clean finish
   (after a best-effort ``POST urls.cancel``, so the billed prediction stops).
3. final — ``GET urls.get`` for ``metrics.input_token_count`` / ``output_token_count``.

Non-stream requests take the same path and accumulate the output into one
``chat.completion`` (no polling of ``urls.get``): one code path, the same cut-stream
detection, and everything before the result is sent stays eligible for failover.

Prompt: ``system``/``developer`` messages are joined into ``system_prompt``. A lone user
message is sent verbatim as ``prompt``; a longer conversation is flattened into a
transcript of ``User: …`` / ``Assistant: …`` / ``Tool: …`` turns separated by blank lines
(the model's own ``prompt_template`` wraps it and cues the answer). Only text content.

Input: ``max_completion_tokens``/``max_tokens`` → ``max_tokens`` and ``max_new_tokens``
(older models' name); ``temperature``, ``top_p``, ``presence_penalty``,
``frequency_penalty`` as is; ``stop`` → ``stop_sequences``, one comma-joined string as the
llama models take it (a stop string containing a comma cannot be expressed: 400).
``seed`` is not sent (the hosted llama inputs have none).

Usage comes from the metrics; when they are missing (or the final GET fails) it is
estimated (:mod:`services.worker.tokens`) and flagged ``estimated``. ``finish_reason`` is ``length`` only when a reported
``output_token_count`` reached ``max_tokens``, otherwise ``stop``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from libs.common.errors import (
    InvalidRequest,
    SwitchmanError,
    UpstreamError,
    UpstreamRejected,
    upstream_status_error,
)

from .. import tokens
from ..chunks import ChunkWriter, Usage, chat_completion
from .base import Http, HttpCall, Protocol, Sink, StreamTranslator, Translated, relay, retry_after

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig
    from libs.common.profiles import Profile


class _Urls(msgspec.Struct):
    get: str | None = None
    stream: str | None = None
    cancel: str | None = None


class _Metrics(msgspec.Struct):
    input_token_count: float | None = None
    output_token_count: float | None = None


class Prediction(msgspec.Struct):
    """The fields of a Replicate prediction object this adapter reads."""

    id: str | None = None
    status: str | None = None
    urls: _Urls | None = None
    error: Any = None
    output: Any = None
    metrics: _Metrics | None = None


_enc = msgspec.json.Encoder()
_dec_prediction = msgspec.json.Decoder(Prediction)
_dec_any = msgspec.json.Decoder()
# A turn's prefix in the transcript (the first turn's without the blank line).
_TURN = {"user": "\n\nUser: ", "assistant": "\n\nAssistant: ", "tool": "\n\nTool: "}
_PASS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for p in content:
        if p.get("type") not in ("text", "refusal"):
            raise InvalidRequest("Replicate language models accept text content only", param="messages")
        out.append(p.get("text") or p.get("refusal") or "")
    return "".join(out)


def build_prompt(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """``(system_prompt, prompt)`` for an OpenAI message list (see the module notes)."""
    system: list[str] = []
    out: list[str] = []  # "\n\nUser: ", text, "\n\nAssistant: ", text, ...
    turn: dict[Any, str] = _TURN
    add = out.append
    for m in messages:
        role = m.get("role")
        prefix = turn.get(role)
        if prefix is None and role != "system" and role != "developer":
            raise InvalidRequest(f"Replicate does not accept messages with role '{role}'", param="messages")
        content = m.get("content")
        text = content if content.__class__ is str else _text(content)
        if prefix is not None:
            add(prefix)
            add(text)
        else:
            system.append(text)
    if not out:
        return "\n\n".join(system), ""
    if len(out) == 2 and out[0] is turn["user"]:  # a lone user message goes verbatim
        return "\n\n".join(system), out[1]
    out[0] = out[0][2:]  # no separator before the first turn
    return "\n\n".join(system), "".join(out)


def build_input(req: dict[str, Any]) -> dict[str, Any]:
    """The model ``input`` object for an OpenAI chat request."""
    system, prompt = build_prompt(req["messages"])
    inp: dict[str, Any] = {"prompt": prompt}
    if system:
        inp["system_prompt"] = system
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    if limit is not None:
        inp["max_tokens"] = inp["max_new_tokens"] = limit
    for key in _PASS:
        value = req.get(key)
        if value is not None:
            inp[key] = value
    stop = req.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if "," in "".join(stops):
            raise InvalidRequest("Replicate stop sequences cannot contain a comma", param="stop")
        inp["stop_sequences"] = ",".join(stops)
    return inp


def parse_prediction(body: bytes, provider: str) -> Prediction:
    try:
        p = _dec_prediction.decode(body)
    except msgspec.DecodeError as e:
        raise UpstreamError(f"malformed Replicate prediction: {e}", provider=provider) from None
    if p.status in ("failed", "canceled"):
        raise UpstreamError(f"provider {provider!r}: prediction {p.status}: {p.error}", provider=provider)
    return p


def _settle(
    metrics: _Metrics | None, max_tokens: int | None, prompt_bytes: int, text_bytes: int
) -> tuple[Usage, str]:
    """(usage, finish_reason) from a prediction's metrics (estimated without)."""
    if metrics is None:
        metrics = _Metrics()
    prompt, done = metrics.input_token_count, metrics.output_token_count
    usage = Usage(
        prompt_tokens=int(prompt) if prompt is not None else tokens.of_bytes(prompt_bytes),
        completion_tokens=int(done) if done is not None else tokens.of_bytes(text_bytes),
        estimated=prompt is None or done is None,
    )
    hit = done is not None and max_tokens is not None and done >= max_tokens
    return usage, "length" if hit else "stop"


def _completion(model: str, text: str, finish_reason: str, usage: Usage | None) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    return chat_completion(model, [choice], usage)


class ReplicateStream(StreamTranslator):
    """Replicate prediction SSE events → OpenAI chunks (or one completion when accumulating).

    ``feed`` handles the events; after ``done`` the caller fetches the final prediction
    and calls :meth:`settle`, then sends :meth:`tail` (stream) or :meth:`completion`.
    """

    def __init__(
        self,
        model: str,
        include_usage: bool,
        provider: str,
        *,
        max_tokens: int | None = None,
        prompt_bytes: int = 0,
        accumulate: bool = False,
    ) -> None:
        self.writer = ChunkWriter(model, include_usage=include_usage)
        self.model, self.include_usage, self.provider = model, include_usage, provider
        self.max_tokens, self.prompt_bytes, self.accumulate = max_tokens, prompt_bytes, accumulate
        self.parts: list[str] = []
        self.text_bytes = 0
        self.started = False
        self.finish_reason: str | None = None

    def feed(self, event: str, data: bytes) -> list[bytes]:
        if event == "output":
            if not data:
                return []
            text = data.decode()
            self.text_bytes += len(data)
            if self.accumulate:
                self.parts.append(text)
                return []
            if self.started:
                return [self.writer.content(text)]
            self.started = True
            return [self.writer.role(), self.writer.content(text)]
        if event == "done":
            reason = _json(data).get("reason")
            if reason:
                raise UpstreamError(
                    f"provider {self.provider!r}: prediction ended: {reason}", provider=self.provider
                )
            self.done = True
        elif event == "error":
            detail = _json(data).get("detail") or data.decode(errors="replace")
            raise UpstreamError(
                f"provider {self.provider!r}: prediction failed: {detail}", provider=self.provider
            )
        return []

    def settle(self, final: Prediction | None) -> None:
        """Usage and finish reason from the final prediction's metrics (estimated without)."""
        metrics = final.metrics if final is not None else None
        self.usage, self.finish_reason = _settle(metrics, self.max_tokens, self.prompt_bytes, self.text_bytes)

    def tail(self) -> list[bytes]:
        pieces = [] if self.started else [self.writer.role()]
        self.started = True
        pieces.append(self.writer.finish(self.finish_reason or "stop"))
        if self.include_usage and self.usage is not None:
            pieces.append(self.writer.usage(self.usage))
        return pieces

    def completion(self) -> bytes:
        return _completion(self.model, "".join(self.parts), self.finish_reason or "stop", self.usage)

    def close(self) -> list[bytes]:
        if not self.done:
            msg = f"stream from provider {self.provider!r} ended before its done event"
            raise UpstreamError(msg, provider=self.provider)
        if self.finish_reason is not None:
            return []
        self.settle(None)
        return self.tail()


def _output_text(out: Any) -> str:
    """A finished prediction's ``output``: a string, or (language models) a list of pieces."""
    if isinstance(out, str):
        return out
    try:
        return "".join(out or ())  # the usual list of string pieces, joined in one pass
    except TypeError:
        return "".join([str(p) for p in out])


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = _dec_any.decode(data) if data else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class ReplicateProtocol(Protocol):
    kind = "replicate"
    ops = frozenset({"chat"})

    def __init__(self, provider: ProviderConfig, profile: Profile) -> None:
        super().__init__(provider, profile)
        self.base = (provider.base_url or profile.base_url or "https://api.replicate.com/v1").rstrip("/")
        head: dict[str, str] = {}
        if provider.api_key:
            scheme = "Token" if profile.auth == "token" else "Bearer"
            head["Authorization"] = f"{scheme} {provider.api_key}"
        self._headers = head | dict(provider.headers)
        self._post_headers = self._headers | {"Content-Type": "application/json"}
        self._targets: dict[str, tuple[str, str | None]] = {}

    # -- pure parts ---------------------------------------------------------------------
    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        """The create-prediction call (the same for stream and non-stream requests)."""
        return self._create(build_input(req), model)

    def _create(self, inp: dict[str, Any], model: str) -> HttpCall:
        body: dict[str, Any] = {"input": inp, "stream": True}
        url, version = self._targets.get(model) or self._target(model)
        if version is not None:
            body["version"] = version
        return HttpCall("POST", url, dict(self._post_headers), _enc.encode(body))

    def _target(self, model: str) -> tuple[str, str | None]:
        """(create URL, version id or None) of a model name; cached, as the same few recur."""
        name, _, version = model.partition(":")
        target: tuple[str, str | None]
        if version or "/" not in name:
            target = (f"{self.base}/predictions", version or name)
        else:
            owner, _, short = name.partition("/")
            target = (f"{self.base}/models/{quote(owner)}/{quote(short)}/predictions", None)
        if len(self._targets) < 256:
            self._targets[model] = target
        return target

    def stream_call(self, url: str) -> HttpCall:
        headers = self._headers | {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        return HttpCall("GET", url, headers, stream=True)

    def get_call(self, url: str) -> HttpCall:
        return HttpCall("GET", url, dict(self._headers))

    def chat_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        return ReplicateStream(model, include_usage, self.provider.id)

    def translator(
        self, req: dict[str, Any], model: str, stream: bool, inp: dict[str, Any] | None = None
    ) -> ReplicateStream:
        """The translator of one request (``inp``: its :func:`build_input`, when already built)."""
        if inp is None:
            inp = build_input(req)
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        return ReplicateStream(
            model,
            include_usage,
            self.provider.id,
            max_tokens=req.get("max_completion_tokens") or req.get("max_tokens"),
            prompt_bytes=len(inp.get("system_prompt", "").encode()) + len(inp["prompt"].encode()),
            accumulate=not stream,
        )

    def chat_response(self, body: bytes, model: str) -> Translated:
        """A finished prediction object → ``chat.completion`` (output pieces joined)."""
        pred = parse_prediction(body, self.provider.id)
        if pred.status != "succeeded":
            raise UpstreamError(
                f"provider {self.provider.id!r}: prediction is {pred.status}", provider=self.provider.id
            )
        text = _output_text(pred.output)
        usage, reason = _settle(pred.metrics, None, 0, len(text))
        return Translated(_completion(model, text, reason, usage), usage)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        """Replicate errors are RFC 7807 problem+json: ``{"title", "detail", "status"}``."""
        pid = self.provider.id
        msg = _problem(body) or f"HTTP {status}"
        if status == 422:
            return UpstreamRejected(400, f"provider {pid!r} rejected the input: {msg}", provider=pid)
        if status == 402:  # the account's spend limit: another provider may serve
            return UpstreamError(f"provider {pid!r} failed ({status}): {msg}", provider=pid)
        return upstream_status_error(status, msg, provider=pid, retry_after=retry_after(headers))

    # -- the flow -------------------------------------------------------------------------
    async def run(
        self, http: Http, sink: Sink, op: str, req: dict[str, Any], model: str, stream: bool
    ) -> Usage | None:
        if op != "chat":
            return await super().run(http, sink, op, req, model, stream)  # raises: unsupported
        inp = build_input(req)  # the prompt is built once, for the call and the estimate
        tr = self.translator(req, model, stream, inp)
        created = parse_prediction((await http.fetch(self._create(inp, model))).body, tr.provider)
        urls = created.urls or _Urls()
        if not urls.stream:
            raise UpstreamError(
                f"provider {tr.provider!r}: model {model!r} does not stream", provider=tr.provider
            )
        try:
            await relay(http, self.stream_call(urls.stream), tr, sink)
            if not tr.done:
                tr.close()  # cut before `done`: raises UpstreamError
        except BaseException:
            # Client gone, deadline, broken stream: stop the prediction, it is billed while it runs.
            await asyncio.shield(self._cancel(http, urls.cancel))
            raise
        tr.settle(await self._final(http, urls.get))
        if stream:
            for piece in tr.tail():
                await sink.chunk(piece)
        else:
            await sink.result(tr.completion())
        return tr.usage

    async def _cancel(self, http: Http, url: str | None) -> None:
        if url:
            try:
                await http.fetch(HttpCall("POST", url, dict(self._headers)))
            except SwitchmanError:
                pass

    async def _final(self, http: Http, url: str | None) -> Prediction | None:
        """The finished prediction, for its metrics; None when it cannot be read."""
        if not url:
            return None
        try:
            return parse_prediction((await http.fetch(self.get_call(url))).body, self.provider.id)
        except SwitchmanError:
            return None


def _problem(body: bytes) -> str:
    data = _json(body)
    title, detail = data.get("title"), data.get("detail")
    if isinstance(title, str) and isinstance(detail, str):
        return f"{title}: {detail}"
    if isinstance(detail or title, str):
        return detail or title  # type: ignore[return-value]
    return body[:500].decode(errors="replace").strip()
