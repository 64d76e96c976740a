"""Gemini request side: OpenAI ``messages`` → ``systemInstruction`` parts and ``contents``.

The mapping and its decisions are described in :mod:`.gemini`. :func:`contents_of` is on
the path of every request, so its loop handles the common messages (string content, no
tool calls) inline and leaves the rest to the helpers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.errors import InvalidRequest

from .gemini_stream import split_tool_call_id

_decode_json = msgspec.json.decode
_encoder = msgspec.json.Encoder()

_MIME = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
    "gif": "image/gif", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
    "wav": "audio/wav", "mp3": "audio/mp3", "mp4": "video/mp4", "txt": "text/plain",
}  # fmt: skip


# -- request: messages ----------------------------------------------------------------
def _texts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not content:
        return []
    return [{"text": t} for p in content if (t := p.get("text") or p.get("refusal"))]


def _data_url(url: str, param: str) -> dict[str, Any]:
    header, comma, data = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or not mime or not data:
        raise InvalidRequest("Invalid data URL: expected data:<mime>;base64,<data>.", param=param)
    return {"inlineData": {"mimeType": mime, "data": data}}


def _media(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        return _data_url(url, param)
    if url.startswith(("https://", "http://")):
        name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
        ext = name.rpartition(".")[2].lower() if "." in name else ""
        return {"fileData": {"mimeType": _MIME.get(ext, "image/jpeg"), "fileUri": url}}
    raise InvalidRequest("Expected an http(s) URL or a base64 data URL.", param=param)


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type")
        if kind == "text":
            if p["text"]:
                parts.append({"text": p["text"]})
        elif kind == "image_url":
            parts.append(_media(p["image_url"]["url"], f"messages[{i}].content[{j}].image_url.url"))
        elif kind == "input_audio":
            audio = p["input_audio"]
            parts.append({"inlineData": {"mimeType": "audio/" + audio["format"], "data": audio["data"]}})
        elif kind == "file" and (p["file"].get("file_data") or "").startswith("data:"):
            parts.append(_data_url(p["file"]["file_data"], f"messages[{i}].content[{j}].file.file_data"))
        else:
            raise InvalidRequest(
                f"Content part type {kind!r} is not supported by this provider (file parts need file_data).",
                param=f"messages[{i}].content[{j}]",
            )
    return parts


def _args(arguments: str, i: int, k: int | None) -> dict[str, Any]:
    """The arguments object of tool call ``k`` of message ``i`` (None: its legacy function_call)."""
    try:
        args = _decode_json(arguments) if arguments.strip() else {}
    except msgspec.DecodeError:
        args = _decode_json  # a marker: not JSON
    if isinstance(args, dict):
        return args
    at = f"tool_calls[{k}].function" if k is not None else "function_call"
    what = "are not valid JSON" if args is _decode_json else "must be a JSON object"
    raise InvalidRequest(f"The function arguments {what}.", param=f"messages[{i}].{at}.arguments")


def _model_parts(m: dict[str, Any], i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _texts(m.get("content")) or _texts(m.get("refusal"))
    for k, tc in enumerate(m.get("tool_calls") or ()):
        fn, tc_id = tc["function"], tc["id"]
        name = names[tc_id] = fn["name"]
        call_id, signature = split_tool_call_id(tc_id)
        if not signature and (extra := tc.get("extra_content")):  # Google's OpenAI-compat field
            signature = (extra.get("google") or {}).get("thought_signature")
        part: dict[str, Any] = {
            "functionCall": {"id": call_id, "name": name, "args": _args(fn["arguments"], i, k)}
        }
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    legacy = m.get("function_call")
    if legacy:
        args = _args(legacy["arguments"], i, None)
        parts.append({"functionCall": {"name": legacy["name"], "args": args}})
    return parts


def _response_object(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or ())
    if text.lstrip()[:1] == "{":
        try:
            value = _decode_json(text)
        except msgspec.DecodeError:
            value = None
        if isinstance(value, dict):
            return value
    return {"result": text}


def _function_response(m: dict[str, Any], i: int, names: dict[str, str]) -> dict[str, Any]:
    if m["role"] == "function":
        return {"functionResponse": {"name": m["name"], "response": _response_object(m.get("content"))}}
    call_id = m["tool_call_id"]
    name = names.get(call_id) or m.get("name")
    if not name:
        raise InvalidRequest(
            f"No earlier assistant message has a tool call with id {call_id!r}.",
            param=f"messages[{i}].tool_call_id",
        )
    response = {"id": split_tool_call_id(call_id)[0], "name": name}
    response["response"] = _response_object(m["content"])
    return {"functionResponse": response}


# Byte templates of the common turn: one text part (``buf += HEAD; text; END``).
_TEXT_TURN = {"user": b'{"role":"user","parts":[{"text":', "assistant": b'{"role":"model","parts":[{"text":'}
_END = b"}]},"


def write_contents(messages: list[dict[str, Any]], tool_role: str, buf: bytearray) -> list[dict[str, Any]]:
    """Append the JSON array of ``contents`` of an OpenAI ``messages`` list to ``buf``.

    Returns the ``systemInstruction`` parts. Written straight into the buffer rather than
    built as dicts and encoded: this runs on every request, once per message.
    """
    encode_into, turn = _encoder.encode_into, _TEXT_TURN
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    results: list[dict[str, Any]] = []  # functionResponse parts of the open tool turn
    start = len(buf)
    buf += b"["
    for i, m in enumerate(messages):
        content = m.get("content")
        if (
            content.__class__ is str
            and content
            and (len(m) == 2 or not (m.get("tool_calls") or m.get("function_call")))
            and (head := turn.get(m["role"])) is not None
        ):  # the common case: a user or assistant turn of one text part, from the templates
            if results:
                results = _close_tool_turn(results, tool_role, buf)
            buf += head
            encode_into(content, buf, -1)
            buf += _END
            continue
        role = m["role"]
        if role == "system" or role == "developer":
            system.extend(_texts(m["content"]))
        elif role == "tool" or role == "function":
            results.append(_function_response(m, i, names))  # consecutive ones share a turn
        else:
            parts = _model_parts(m, i, names) if role == "assistant" else _user_parts(m["content"], i)
            if parts:
                if results:
                    results = _close_tool_turn(results, tool_role, buf)
                encode_into({"role": "model" if role == "assistant" else "user", "parts": parts}, buf, -1)
                buf += b","
    if results:
        _close_tool_turn(results, tool_role, buf)
    if len(buf) == start + 1:
        buf += b"]"
    else:
        buf[-1] = 0x5D  # "]" over the last turn's comma
    return system


def _close_tool_turn(results: list[dict[str, Any]], tool_role: str, buf: bytearray) -> list[dict[str, Any]]:
    _encoder.encode_into({"role": tool_role, "parts": results}, buf, -1)
    buf += b","
    return []
