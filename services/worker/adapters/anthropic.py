"""Anthropic Messages API (``POST /v1/messages``) as a Switchman protocol.

Request mapping (OpenAI chat → Anthropic, protocols.md §3.5):

* ``system`` / ``developer`` messages, wherever they appear, → top-level ``system``: a
  string when there is one text, else text blocks in their original order.
* user text and ``image_url`` parts → ``text`` / ``image`` blocks; ``data:`` URLs become
  base64 sources (jpeg/png/gif/webp only, ``image/jpg`` read as jpeg), http(s) URLs url
  sources; ``file`` parts holding a base64 PDF become ``document`` blocks. Anything else
  is a 400 naming the part.
* assistant ``tool_calls`` → ``tool_use`` blocks (arguments must be a JSON object; empty
  arguments mean ``{}``); consecutive ``tool`` messages → one user turn of
  ``tool_result`` blocks in order. Turns of the same role are merged (Anthropic wants
  alternation). Empty or whitespace-only text is never sent (Anthropic rejects it), nor
  is trailing whitespace in a final assistant (prefill) turn.
* ``tools`` → ``{name, description, input_schema}``; ``tool_choice`` auto/none/required/
  named → auto/none/any/tool; ``parallel_tool_calls: false`` →
  ``disable_parallel_tool_use`` (on an ``auto`` choice when none was given). Without
  tools, ``tool_choice`` is not sent.
* ``max_completion_tokens`` / ``max_tokens`` → ``max_tokens``, else the profile's
  ``max_output_tokens`` (4096). ``temperature`` is clamped to 1.0 (Anthropic's range is
  0–1, OpenAI's 0–2). ``stop`` → ``stop_sequences``. ``safety_identifier`` (else
  ``user``) → ``metadata.user_id``.
* ``response_format``: ``json_schema`` → ``output_config.format``; ``json_object`` has
  no Anthropic equivalent, so the instruction in ``JSON_OBJECT_INSTRUCTION`` is appended
  as the last system text (the reply is not otherwise enforced).
* extension fields of the profile (``thinking``, ``top_k``) are passed through as given.
* not mapped: ``reasoning_effort`` (use the ``thinking`` extension), an assistant
  message's ``reasoning_content`` (Anthropic needs signed thinking blocks), OpenAI's own
  ``metadata``/``store``/``service_tier``.

The base URL may be given with or without a trailing ``/v1``. Responses, streams and
errors are translated in :mod:`.anthropic_stream`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from libs.common.errors import InvalidRequest, SwitchmanError, UpstreamError

from .anthropic_stream import AnthropicStream, ErrorBody, map_error, translate_message
from .base import HttpCall, Protocol, Translated, retry_after

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig
    from libs.common.profiles import Profile

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose before or after it, "
    "no Markdown code fences."
)
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}

_encode = msgspec.json.Encoder().encode
# Tool-call arguments: checked to be a JSON object, member values kept as raw JSON (no
# decode/re-encode of possibly large nested values).
_decode_arguments = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class _Envelope(msgspec.Struct):
    error: ErrorBody | None = None


class _ModelEntry(msgspec.Struct):
    id: str = ""


class _ModelList(msgspec.Struct):
    data: list[_ModelEntry] = []


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_models = msgspec.json.Decoder(_ModelList).decode


def _blank(text: Any) -> bool:
    return not text or not isinstance(text, str) or text.isspace()


def _image(obj: Any, param: str) -> dict[str, Any]:
    url = obj.get("url") if isinstance(obj, dict) else obj
    if not isinstance(url, str):
        raise InvalidRequest("image_url.url must be a string", param=param)
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        mime, *params = head.split(";")
        mime = mime.strip().lower()
        if not comma or "base64" not in params:
            raise InvalidRequest("image data URLs must be base64-encoded", param=param)
        if mime == "image/jpg":
            mime = "image/jpeg"
        if mime not in IMAGE_TYPES:
            raise InvalidRequest(
                f"image media type {mime!r} is not supported by Anthropic "
                "(image/jpeg, image/png, image/gif, image/webp)",
                param=param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("image_url.url must be an http(s) URL or a base64 data: URL", param=param)


def _document(obj: Any, param: str) -> dict[str, Any]:
    data = obj.get("file_data") if isinstance(obj, dict) else None
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise InvalidRequest(
            "only base64 PDF file_data (data:application/pdf;base64,...) is supported", param=param
        )
    source = {"type": "base64", "media_type": "application/pdf", "data": data[len(prefix) :]}
    return {"type": "document", "source": source}


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [] if _blank(content) else [{"type": "text", "text": content}]
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind == "text":
            if not _blank(part.get("text")):
                out.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            out.append(_image(part.get("image_url"), f"messages[{i}].content[{j}].image_url"))
        elif kind == "file":
            out.append(_document(part.get("file"), f"messages[{i}].content[{j}].file"))
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported by Anthropic",
                param=f"messages[{i}].content[{j}].type",
            )
    return out


def _texts(content: Any, i: int) -> list[str]:
    """The non-blank texts of a system/developer/tool content (string or text parts)."""
    if isinstance(content, str):
        return [] if _blank(content) else [content]
    out = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind != "text":
            raise InvalidRequest(
                f"content part type {kind!r} is not allowed here", param=f"messages[{i}].content[{j}].type"
            )
        if not _blank(part.get("text")):
            out.append(part["text"])
    return out


def _bad_arguments(args: Any, error: Exception, i: int, j: int) -> dict[str, msgspec.Raw]:
    """The slow path of tool-call arguments: blank means ``{}``, anything else is a 400."""
    if args is None or (isinstance(args, str) and args.isspace()):
        return {}
    what = "must be a JSON object" if isinstance(error, msgspec.ValidationError) else "are not valid JSON"
    raise InvalidRequest(
        f"tool call arguments {what}: {error}", param=f"messages[{i}].tool_calls[{j}].function.arguments"
    )


def _tool_uses(calls: list[dict[str, Any]], i: int, out: list[dict[str, Any]]) -> None:
    for j, call in enumerate(calls):
        fn = call.get("function")
        if fn.__class__ is not dict or call.get("type", "function") != "function":
            raise InvalidRequest(
                "only function tool calls are supported", param=f"messages[{i}].tool_calls[{j}]"
            )
        args = fn.get("arguments")
        try:
            tool_input = _decode_arguments(args) if args else {}
        except (msgspec.DecodeError, TypeError) as e:
            tool_input = _bad_arguments(args, e, i, j)
        out.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": tool_input})


def _assistant_blocks(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    content = m.get("content")
    out: list[dict[str, Any]] = []
    if isinstance(content, str):
        if not _blank(content):
            out.append({"type": "text", "text": content})
    elif content:
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
            elif kind == "refusal":
                text = part.get("refusal")
            else:
                raise InvalidRequest(
                    f"assistant content part type {kind!r} is not supported",
                    param=f"messages[{i}].content[{j}].type",
                )
            if not _blank(text):
                out.append({"type": "text", "text": text})
    calls = m.get("tool_calls")
    if calls:
        _tool_uses(calls, i, out)
    return out


def _tool_result(m: dict[str, Any], i: int) -> dict[str, Any]:
    content = m.get("content")
    if content.__class__ is str and content and not content.isspace():
        return {"type": "tool_result", "tool_use_id": m.get("tool_call_id"), "content": content}
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.get("tool_call_id")}
    if content and not isinstance(content, str):
        texts = _texts(content, i)
        if texts:
            block["content"] = [{"type": "text", "text": t} for t in texts]
    return block


def _merge(turn: dict[str, Any], piece: str | list[dict[str, Any]]) -> None:
    content = turn["content"]
    if isinstance(content, str):
        content = turn["content"] = [{"type": "text", "text": content}]
    if isinstance(piece, str):
        content.append({"type": "text", "text": piece})
    else:
        content.extend(piece)


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, alternating Anthropic turns) of the OpenAI messages.

    A turn's content stays a plain string while it is a single text (the common case,
    cheaper to build and to encode) and becomes a block list when merged. A message that
    is exactly ``{role, content}`` with non-blank string content already is its Anthropic
    turn and is used as is, never mutated (``owned`` says whether the last turn is ours).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    append = turns.append
    last_role = None
    owned = True
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content")
        plain = len(m) == 2
        piece: str | list[dict[str, Any]]
        if (
            content.__class__ is str
            and (role == "user" or role == "assistant")
            and (plain or role == "user" or not m.get("tool_calls"))
        ):
            if not content or content.isspace():
                continue
            if plain and role != last_role:  # the common case: the message is the turn
                append(m)
                last_role, owned = role, False
                continue
            piece = content
        elif role == "user":
            piece = _user_blocks(content, i)
        elif role == "assistant":
            piece = _assistant_blocks(m, i)
        elif role == "tool":
            role, piece = "user", [_tool_result(m, i)]
        elif role == "system" or role == "developer":
            if content.__class__ is not str:
                system.extend(_texts(content, i))
            elif content and not content.isspace():
                system.append(content)
            continue
        else:
            raise InvalidRequest(f"role {role!r} is not supported by Anthropic", param=f"messages[{i}].role")
        if not piece:
            continue
        if role != last_role:
            append({"role": role, "content": piece})
            last_role, owned = role, True
            continue
        if not owned:  # copy the caller's message before merging into it
            turns[-1] = {"role": role, "content": turns[-1]["content"]}
            owned = True
        _merge(turns[-1], piece)
    if last_role == "assistant":  # a prefill may not end with whitespace
        _strip_prefill(turns)
    return system, turns


def _strip_prefill(turns: list[dict[str, Any]]) -> None:
    content = turns[-1]["content"]
    if isinstance(content, str):  # a new turn: the last one may be the caller's message
        turns[-1] = {"role": "assistant", "content": content.rstrip()}
    elif content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function")
        if t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest("only function tools are supported by Anthropic", param=f"tools[{i}].type")
        tool: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            tool["description"] = fn["description"]
        tool["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        if fn.get("strict"):
            tool["strict"] = True
        out.append(tool)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    tc: dict[str, Any] | None
    if choice is None:
        tc = None
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        tc = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        tc = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        raise InvalidRequest("unsupported tool_choice for Anthropic", param="tool_choice")
    if parallel is False:
        if tc is None:
            tc = {"type": "auto"}
        if tc["type"] != "none":
            tc["disable_parallel_tool_use"] = True
    return tc


def _system_field(system: list[str]) -> str | list[dict[str, str]]:
    if len(system) == 1:
        return system[0]
    return [{"type": "text", "text": s} for s in system]


class AnthropicProtocol(Protocol):
    kind: ClassVar[str] = "anthropic"

    def __init__(self, provider: ProviderConfig, profile: Profile) -> None:
        super().__init__(provider, profile)
        base = (provider.base_url or profile.base_url or "https://api.anthropic.com").rstrip("/")
        self.base = base[:-3] if base.endswith("/v1") else base
        self.url = self.base + "/v1/messages"
        self.headers = {
            "x-api-key": provider.api_key or "",
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            **provider.headers,
        }
        self.max_tokens = profile.max_output_tokens or DEFAULT_MAX_TOKENS
        self.extensions = tuple(profile.extensions)

    # -- chat -------------------------------------------------------------------------
    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        system, turns = _conversation(req["messages"])
        if not turns:
            raise InvalidRequest("Anthropic needs at least one user or assistant message", param="messages")
        max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or self.max_tokens
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
        fmt = req.get("response_format")
        if fmt:
            self._response_format(fmt, body, system)
        if system:
            body["system"] = _system_field(system)
        self._sampling(req, body)
        tools = req.get("tools")
        if tools:
            body["tools"] = _tools(tools)
            choice = _tool_choice(req.get("tool_choice"), req.get("parallel_tool_calls"))
            if choice is not None:
                body["tool_choice"] = choice
        user = req.get("safety_identifier") or req.get("user")
        if user:
            body["metadata"] = {"user_id": user}
        for name in self.extensions:
            if name in req:
                body[name] = req[name]
        if stream:
            body["stream"] = True
        return HttpCall("POST", self.url, dict(self.headers), _encode(body), stream)

    @staticmethod
    def _sampling(req: dict[str, Any], body: dict[str, Any]) -> None:
        temperature = req.get("temperature")
        if temperature is not None:
            body["temperature"] = min(float(temperature), 1.0)
        if req.get("top_p") is not None:
            body["top_p"] = req["top_p"]
        stop = req.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)

    @staticmethod
    def _response_format(fmt: dict[str, Any], body: dict[str, Any], system: list[str]) -> None:
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif kind == "json_object":
            system.append(JSON_OBJECT_INSTRUCTION)
        elif kind != "text":
            raise InvalidRequest(
                f"response_format type {kind!r} is not supported", param="response_format.type"
            )

    def chat_response(self, body: bytes, model: str) -> Translated:
        return translate_message(body, model, self.provider.id)

    def chat_stream(self, model: str, include_usage: bool) -> AnthropicStream:
        return AnthropicStream(model, include_usage, self.provider.id)

    # -- errors and discovery ------------------------------------------------------------
    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        err = None
        try:
            err = _decode_envelope(body).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        if err is None:  # not Anthropic's shape (a proxy's page, an empty body)
            err = ErrorBody(message=body[:300].decode("utf-8", "replace").strip())
        return map_error(
            status, err.type, err.message, provider=self.provider.id, retry_after=retry_after(headers)
        )

    def models_request(self) -> HttpCall | None:
        headers = {k: v for k, v in self.headers.items() if k != "content-type"}
        return HttpCall("GET", self.base + "/v1/models?limit=1000", headers)

    def models_response(self, body: bytes) -> list[str]:
        try:
            return [m.id for m in _decode_models(body).data if m.id]
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise UpstreamError(
                f"provider {self.provider.id!r} returned an invalid model list: {e}",
                provider=self.provider.id,
            ) from None
