"""The OpenAI request contracts, as msgspec Structs curated from OpenAI's OpenAPI spec.

The ingress decodes every request body into one of these once (typed, prebuilt
decoders), which validates types, enums and ranges; fields the Structs do not name
are ignored here and stay in the body bytes, which are forwarded untouched, so
unknown fields pass through to OpenAI-compatible upstreams.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import InvalidRequest


class _S(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


# -- content parts -------------------------------------------------------------------
class TextPart(_S, tag_field="type", tag="text"):
    text: str


class ImageUrl(_S):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_S, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class InputAudio(_S):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_S, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FileData(_S):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_S, tag_field="type", tag="file"):
    file: FileData


class RefusalPart(_S, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart


# -- messages -------------------------------------------------------------------------
class FunctionCall(_S):
    name: str
    arguments: str


class ToolCall(_S, tag_field="type", tag="function"):
    id: str
    function: FunctionCall


class SystemMessage(_S, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_S, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_S, tag_field="role", tag="user"):
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_S, tag_field="role", tag="assistant"):
    content: str | list[TextPart | RefusalPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: dict[str, Any] | None = None


class ToolMessage(_S, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_S, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


# -- tools and formats ----------------------------------------------------------------
FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDef(_S):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_S, tag_field="type", tag="function"):
    function: FunctionDef


class NamedFunction(_S):
    name: str


class NamedToolChoice(_S, tag_field="type", tag="function"):
    function: NamedFunction


class FormatText(_S, tag_field="type", tag="text"):
    pass


class FormatJsonObject(_S, tag_field="type", tag="json_object"):
    pass


class JsonSchema(_S):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class FormatJsonSchema(_S, tag_field="type", tag="json_schema"):
    json_schema: JsonSchema


class StreamOptions(_S):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Stop = str | Annotated[list[str], Meta(min_length=1, max_length=4)]


class ChatRequest(_S):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: Stop | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    seed: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: FormatText | FormatJsonObject | FormatJsonSchema | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    service_tier: str | None = None
    store: bool | None = None
    modalities: list[Literal["text", "audio"]] | None = None


# msgspec allows one array type per union; homogeneity is checked in _check_input.
MAX_DIMENSIONS = 8192

Prompt = str | Annotated[list[str | int | list[int]], Meta(min_length=1)]


class CompletionRequest(_S):
    model: Annotated[str, Meta(min_length=1)]
    prompt: Prompt
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    best_of: Annotated[int, Meta(ge=0, le=20)] | None = None
    stop: Stop | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    seed: int | None = None
    user: str | None = None


class EmbeddingRequest(_S):
    model: Annotated[str, Meta(min_length=1)]
    input: (
        Annotated[str, Meta(min_length=1)]
        | Annotated[list[str | int | list[int]], Meta(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    # No embedding model has more; the bound keeps one request from costing gigabytes.
    dimensions: Annotated[int, Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: str | None = None


chat_decoder = msgspec.json.Decoder(ChatRequest)
completion_decoder = msgspec.json.Decoder(CompletionRequest)
embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "chat": chat_decoder,
    "completions": completion_decoder,
    "embeddings": embedding_decoder,
}

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def invalid(e: msgspec.DecodeError) -> InvalidRequest:
    """Turn a msgspec decode/validation error into a 400 that names the field."""
    text = str(e)
    if not isinstance(e, msgspec.ValidationError):
        return InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            f"aren't using your HTTP library correctly.) {text}",
            code="invalid_json",
        )
    m = _AT.search(text)
    path = m.group(1) if m else ""
    message = text[: m.start()] if m else text
    missing = _MISSING.search(message)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    param = path or None
    where = f" at '{param}'" if param else ""
    return InvalidRequest(f"Invalid request{where}: {message}", param=param, code="invalid_value")


def check_chat(req: ChatRequest) -> None:
    """Cross-field rules OpenAI enforces that types alone cannot."""
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    if req.tool_choice is not None and not req.tools and req.tool_choice != "none":
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    if req.parallel_tool_calls is not None and not req.tools:
        raise InvalidRequest(
            "'parallel_tool_calls' is only allowed when 'tools' are specified.",
            param="parallel_tool_calls",
        )


def _check_input(value: Any, param: str) -> None:
    """A list input must be all strings, all token ids, or all token-id lists."""
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) > 1:
            raise InvalidRequest(
                f"'{param}' must be a string, an array of strings, an array of token ids "
                "or an array of token-id arrays, not a mix.",
                param=param,
            )
        if str in kinds and any(not v for v in value):
            raise InvalidRequest(f"'{param}' must not contain empty strings.", param=param)


def check_completion(req: CompletionRequest) -> None:
    _check_input(req.prompt, "prompt")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def decode(op: str, body: bytes) -> Any:
    """Decode and validate one request body for ``op``; raise InvalidRequest naming the field."""
    try:
        req = DECODERS[op].decode(body)
    except msgspec.DecodeError as e:
        raise invalid(e) from None
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply.", code="invalid_json") from None
    if op == "chat":
        check_chat(req)
    elif op == "completions":
        check_completion(req)
    else:
        _check_input(req.input, "input")
    return req
