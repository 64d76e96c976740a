"""Google Gemini (Generative Language API ``v1beta``): OpenAI chat and embeddings.

Chat → ``POST {base}/models/{model}:generateContent`` (or
``:streamGenerateContent?alt=sse``), embeddings → ``:batchEmbedContents``, discovery →
``GET {base}/models``; key in ``x-goog-api-key``. A ``base_url`` without a version
segment gets ``/v1beta`` (:func:`with_version`). The request mapping follows
protocols.md §3.6 (the messages in :mod:`.gemini_parts`); the response side lives in
:mod:`.gemini_stream`.

Decisions beyond the table:

* ``system``/``developer`` messages anywhere in the conversation are hoisted, in order,
  into ``systemInstruction``. Empty text parts are dropped (Gemini rejects them) and a
  message left without parts is skipped.
* Tool results: ``role: tool`` messages become ``functionResponse`` parts in one
  ``user`` turn (consecutive ones merged; the role is :attr:`GeminiProtocol.tool_role`).
  The name comes from the earlier assistant tool call with that id; content that is a
  JSON object is sent as the response object, anything else as ``{"result": text}``.
* ``n == 1`` sends no ``candidateCount`` (the default; some models reject the field).
  ``parallel_tool_calls``, ``user``, ``metadata``, ``store``, ``service_tier`` have no
  Gemini equivalent and are ignored. ``reasoning_effort`` → ``thinkingConfig.thinkingBudget``
  (none 0, minimal 512, low 1024, medium 8192, high 24576, xhigh 32768).
* Embeddings: Gemini takes at most 100 inputs per batch, so larger inputs are split into
  concurrent calls (:meth:`GeminiProtocol.run`). The API reports no token usage for
  embeddings; when ``usageMetadata`` is absent the prompt tokens are estimated
  (:mod:`services.worker.tokens`) and the usage is flagged ``estimated``. With ``dimensions`` Gemini
  returns truncated, unnormalized vectors; they are rescaled to unit length as OpenAI's are.
* Errors: see :func:`.gemini_stream.rpc_error`.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import msgspec

from libs.common.errors import InvalidRequest, SwitchmanError, UpstreamError

from .. import tokens
from ..chunks import Usage, chat_completion, embeddings_response
from .base import Http, HttpCall, Protocol, Sink, StreamTranslator, Translated
from .gemini_parts import write_contents
from .gemini_stream import (
    GeminiStream,
    blocked,
    choice_of,
    error_of,
    parse_response,
    rpc_error,
    usage_of,
)

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig
    from libs.common.profiles import Profile

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode

BATCH_LIMIT = 100
DEFAULT_VERSION = "v1beta"
_VERSION = re.compile(r"v\d+(?:(?:alpha|beta)\d*)?")
_SCALARS = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
    ("top_k", "topK"),  # extension
)
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}


# -- request: tools and generation config -------------------------------------------------
def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    decls = []
    for j, t in enumerate(tools):
        if t.get("type", "function") != "function":
            raise InvalidRequest(f"Tool type {t.get('type')!r} is not supported.", param=f"tools[{j}].type")
        fn = t["function"]
        decl = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if fn.get("parameters") is not None:
            decl["parametersJsonSchema"] = fn["parameters"]
        decls.append(decl)
    return [{"functionDeclarations": decls}]


def _tool_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str):
        mode = _MODES.get(choice)
        if mode is None:
            raise InvalidRequest(f"Unsupported tool_choice {choice!r}.", param="tool_choice")
        return {"functionCallingConfig": {"mode": mode}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice["function"]["name"]
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise InvalidRequest("Unsupported tool_choice.", param="tool_choice")


def generation_config(req: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    limit = req.get("max_completion_tokens")
    if limit is None:
        limit = req.get("max_tokens")
    if limit is not None:
        g["maxOutputTokens"] = limit
    stop = req.get("stop")
    if stop:
        g["stopSequences"] = [stop] if isinstance(stop, str) else stop
    for ours, theirs in _SCALARS:
        value = req.get(ours)
        if value is not None:
            g[theirs] = value
    n = req.get("n")
    if n is not None and n != 1:
        g["candidateCount"] = n
    fmt = req.get("response_format")
    if fmt and fmt.get("type") in ("json_object", "json_schema"):
        g["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            g["responseJsonSchema"] = schema
    if req.get("logprobs"):
        g["responseLogprobs"] = True
        if req.get("top_logprobs") is not None:
            g["logprobs"] = req["top_logprobs"]
    effort = req.get("reasoning_effort")
    if effort in _BUDGETS:
        g["thinkingConfig"] = {"thinkingBudget": _BUDGETS[effort]}
    return g


def generate_body(req: dict[str, Any], tool_role: str = "user") -> bytes:
    """The ``GenerateContentRequest`` JSON body of an OpenAI chat request."""
    buf = bytearray(b'{"contents":')
    system = write_contents(req["messages"], tool_role, buf)
    body: dict[str, Any] = {}  # the other fields, after contents
    if system:
        body["systemInstruction"] = {"parts": system}
    tools = req.get("tools")
    if tools:
        body["tools"] = _tools(tools)
        if req.get("tool_choice") is not None:
            body["toolConfig"] = _tool_config(req["tool_choice"])
    safety = req.get("safety_settings")  # extension
    if safety is not None:
        body["safetySettings"] = safety
    g = generation_config(req)
    if g:
        body["generationConfig"] = g
    if not body:
        return bytes(buf + b"}")
    at = len(buf)
    _encoder.encode_into(body, buf, -1)
    buf[at] = 0x2C  # its "{" becomes the "," after contents
    return bytes(buf)


# -- embeddings -----------------------------------------------------------------------
class _Embedding(msgspec.Struct):
    values: list[float] = []


class _EmbedUsage(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0


class _EmbedResponse(msgspec.Struct, rename="camel"):
    embeddings: list[_Embedding] = []
    usage_metadata: _EmbedUsage | None = None


_decode_embeddings = msgspec.json.Decoder(_EmbedResponse).decode
_LITTLE = sys.byteorder == "little"


def _inputs(req: dict[str, Any]) -> list[str]:
    value = req["input"]
    texts = [value] if isinstance(value, str) else value
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("This provider embeds text only: 'input' must be strings.", param="input")
    return texts


def _unit(values: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in values))
    if norm == 0.0 or abs(norm - 1.0) < 1e-4:
        return values
    return [v / norm for v in values]


def with_version(base: str) -> str:
    """``base`` ending in an API version segment: ``/v1beta`` is added when it has none.

    Operators paste the bare host (``https://generativelanguage.googleapis.com``) as
    often as the versioned base; a path already ending in a version (``/v1``,
    ``/v1beta``, ``/v1alpha``) is kept as written, so ``/v1`` can be chosen.
    """
    base = base.rstrip("/")
    last = urlsplit(base).path.rpartition("/")[2]
    return base if _VERSION.fullmatch(last) else base + "/" + DEFAULT_VERSION


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else "models/" + model


# -- the protocol ---------------------------------------------------------------------
class GeminiProtocol(Protocol):
    kind = "gemini"
    ops = frozenset({"chat", "embeddings"})
    # The role of the turn carrying functionResponse parts (protocols.md §3.4).
    tool_role = "user"

    def __init__(self, provider: ProviderConfig, profile: Profile) -> None:
        super().__init__(provider, profile)
        self._chat_urls: dict[tuple[str, bool], str] = {}
        base = provider.base_url or profile.base_url
        self._root = with_version(base) if base else ""

    def _base(self) -> str:
        if not self._root:
            raise InvalidRequest(f"provider {self.provider.id!r} has no base_url", param="model")
        return self._root

    def _headers(self, body: bool = True) -> dict[str, str]:
        headers = {"content-type": "application/json"} if body else {}
        auth = self.profile.auth_header(self.provider.api_key)
        if auth is not None:
            headers[auth[0]] = auth[1]
        headers.update(self.provider.headers)
        return headers

    def _url(self, model: str, method: str, query: dict[str, str] | None = None) -> str:
        params = {**self.provider.query, **(query or {})}
        url = f"{self._base()}/{quote(_model_path(model), safe='/')}:{method}"
        return url + "?" + urlencode(params) if params else url

    # -- chat -----------------------------------------------------------------------------
    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        body = generate_body(req, self.tool_role)
        return HttpCall("POST", self._chat_url(model, stream), self._headers(), body, stream=stream)

    def _chat_url(self, model: str, stream: bool) -> str:
        """The chat URL of a model; cached per protocol instance, as the same few recur."""
        urls = self._chat_urls
        url = urls.get((model, stream))
        if url is None:
            if stream:
                url = self._url(model, "streamGenerateContent", {"alt": "sse"})
            else:
                url = self._url(model, "generateContent")
            if len(urls) < 256:
                urls[model, stream] = url
        return url

    def chat_response(self, body: bytes, model: str) -> Translated:
        provider = self.provider.id
        resp = parse_response(body, provider)
        if resp.error is not None:
            raise rpc_error(resp.error.code or 500, resp.error, {}, provider)
        if not resp.candidates:
            raise blocked(resp.prompt_feedback, provider)
        candidates = resp.candidates
        if len(candidates) > 1:
            candidates = sorted(candidates, key=lambda c: c.index)
        choices = [choice_of(c, provider) for c in candidates]
        usage = usage_of(resp.usage_metadata) if resp.usage_metadata is not None else None
        rid = "chatcmpl-" + resp.response_id if resp.response_id else None
        return Translated(chat_completion(model, choices, usage, id=rid), usage or Usage())

    def chat_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        return GeminiStream(model, include_usage, self.provider.id)

    # -- embeddings -------------------------------------------------------------------
    def embeddings_request(self, req: dict[str, Any], model: str) -> HttpCall:
        path = _model_path(model)
        dims = req.get("dimensions")
        requests = []
        for text in _inputs(req):
            one: dict[str, Any] = {"model": path, "content": {"parts": [{"text": text}]}}
            if dims is not None:
                one["outputDimensionality"] = dims
            requests.append(one)
        body = _encode({"requests": requests})
        return HttpCall("POST", self._url(model, "batchEmbedContents"), self._headers(), body)

    def _vectors(self, body: bytes, req: dict[str, Any], texts: list[str]) -> tuple[list[list[float]], Usage]:
        try:
            resp = _decode_embeddings(body)
        except msgspec.DecodeError as e:
            raise UpstreamError(f"provider {self.provider.id!r} sent unreadable embeddings: {e}") from None
        if len(resp.embeddings) != len(texts):
            raise UpstreamError(
                f"provider {self.provider.id!r} returned {len(resp.embeddings)} embeddings for {len(texts)} inputs"
            )
        vectors: list[list[float]] = [e.values for e in resp.embeddings]
        if req.get("dimensions") is not None:
            vectors = [_unit(v) for v in vectors]
        used = resp.usage_metadata.prompt_token_count if resp.usage_metadata is not None else 0
        if used:
            return vectors, Usage(prompt_tokens=used)
        return vectors, Usage(prompt_tokens=tokens.of_texts(texts), estimated=True)

    def embeddings_response(self, body: bytes, model: str, req: dict[str, Any]) -> Translated:
        vectors, usage = self._vectors(body, req, _inputs(req))
        return Translated(embeddings_response(model, vectors, usage, req.get("encoding_format")), usage)

    async def run(
        self, http: Http, sink: Sink, op: str, req: dict[str, Any], model: str, stream: bool
    ) -> Usage | None:
        texts = _inputs(req) if op == "embeddings" else ()
        if len(texts) <= BATCH_LIMIT:
            return await Protocol.run(self, http, sink, op, req, model, stream)
        batches = [{**req, "input": texts[i : i + BATCH_LIMIT]} for i in range(0, len(texts), BATCH_LIMIT)]
        responses = await asyncio.gather(*(http.fetch(self.embeddings_request(b, model)) for b in batches))
        vectors: list[list[float]] = []
        usage = Usage()
        for batch, resp in zip(batches, responses, strict=True):
            got, used = self._vectors(resp.body, req, batch["input"])
            vectors.extend(got)
            usage.prompt_tokens += used.prompt_tokens
            usage.estimated = usage.estimated or used.estimated
        await sink.result(embeddings_response(model, vectors, usage, req.get("encoding_format")))
        return usage

    # -- errors -----------------------------------------------------------------------
    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        return error_of(status, body, headers, self.provider.id)

    # -- discovery --------------------------------------------------------------------
    def models_request(self) -> HttpCall | None:
        query = urlencode({"pageSize": 1000, **self.provider.query})
        return HttpCall("GET", f"{self._base()}/models?{query}", self._headers(body=False))

    def models_response(self, body: bytes) -> list[str]:
        try:
            listing = _decode_models(body)
        except msgspec.DecodeError as e:
            raise UpstreamError(f"provider {self.provider.id!r} sent an unreadable model list: {e}") from None
        return [
            m.name.removeprefix("models/")
            for m in listing.models
            if _SERVES.intersection(m.supported_generation_methods)
        ]


class _Model(msgspec.Struct, rename="camel"):
    name: str = ""
    supported_generation_methods: list[str] = []


class _ModelList(msgspec.Struct, rename="camel"):
    models: list[_Model] = []
    next_page_token: str | None = None


_decode_models = msgspec.json.Decoder(_ModelList).decode
_SERVES = frozenset({"generateContent", "embedContent", "batchEmbedContents"})
