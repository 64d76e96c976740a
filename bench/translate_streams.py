"""Upstream streams for bench/translate.py: each provider's SSE events in its own shape."""

from __future__ import annotations

from typing import Any

import msgspec


def _openai_stream(model: str, toks: list[str]) -> list[tuple[str, Any]]:
    ev: list[tuple[str, Any]] = []
    n = len(toks)
    head = {
        "id": "chatcmpl-AbCdEf0123456789",
        "object": "chat.completion.chunk",
        "created": 1732000000,
        "model": model + "-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    ev.append(("", chunk({"role": "assistant", "content": "", "refusal": None})))
    ev += [("", chunk({"content": t})) for t in toks]
    ev.append(("", chunk({}, "stop")))
    ev.append(
        (
            "",
            {
                **head,
                "choices": [],
                "usage": {"prompt_tokens": 8012, "completion_tokens": n, "total_tokens": 8012 + n},
            },
        )
    )
    ev.append(("", b"[DONE]"))
    return ev


def _anthropic_stream(model: str, toks: list[str]) -> list[tuple[str, Any]]:
    ev: list[tuple[str, Any]] = []
    n = len(toks)
    ev.append(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 8012,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 4096,
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            },
        )
    )
    ev.append(
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
    )
    ev.append(("ping", {"type": "ping"}))
    ev += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in toks
    ]
    ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    ev.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
        )
    )
    ev.append(("message_stop", {"type": "message_stop"}))
    return ev


def _gemini_stream(model: str, toks: list[str]) -> list[tuple[str, Any]]:
    ev: list[tuple[str, Any]] = []
    n = len(toks)
    for i, t in enumerate(toks):
        cand: dict[str, Any] = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
        usage = {"promptTokenCount": 8012, "totalTokenCount": 8012 + i + 1}
        if i == n - 1:
            cand["finishReason"] = "STOP"
            usage["candidatesTokenCount"] = n
        ev.append(
            (
                "",
                {
                    "candidates": [cand],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": "a1b2c3d4e5f6g7h8",
                },
            )
        )
    return ev


def _cohere_stream(model: str, toks: list[str]) -> list[tuple[str, Any]]:
    ev: list[tuple[str, Any]] = []
    n = len(toks)
    ev.append(
        (
            "message-start",
            {
                "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
                "type": "message-start",
                "delta": {
                    "message": {
                        "role": "assistant",
                        "content": [],
                        "tool_plan": "",
                        "tool_calls": [],
                        "citations": [],
                    }
                },
            },
        )
    )
    ev.append(
        (
            "content-start",
            {
                "type": "content-start",
                "index": 0,
                "delta": {"message": {"content": {"type": "text", "text": ""}}},
            },
        )
    )
    ev += [
        (
            "content-delta",
            {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}},
        )
        for t in toks
    ]
    ev.append(("content-end", {"type": "content-end", "index": 0}))
    ev.append(
        (
            "message-end",
            {
                "type": "message-end",
                "delta": {
                    "finish_reason": "COMPLETE",
                    "usage": {
                        "billed_units": {"input_tokens": 8000, "output_tokens": n},
                        "tokens": {"input_tokens": 8012, "output_tokens": n},
                    },
                },
            },
        )
    )
    return ev


def _replicate_stream(model: str, toks: list[str]) -> list[tuple[str, Any]]:
    ev: list[tuple[str, Any]] = []
    ev += [("output", t.encode()) for t in toks]
    ev.append(("done", b"{}"))
    return ev


_STREAMS = {
    "openai": _openai_stream,
    "anthropic": _anthropic_stream,
    "gemini": _gemini_stream,
    "cohere": _cohere_stream,
    "replicate": _replicate_stream,
}


def upstream_stream(kind: str, model: str, toks: list[str]) -> list[tuple[str, bytes]]:
    """(SSE event name, data) pairs of one upstream stream with ``len(toks)`` content chunks."""
    enc = msgspec.json.encode
    return [(name, d if isinstance(d, bytes) else enc(d)) for name, d in _STREAMS[kind](model, toks)]
