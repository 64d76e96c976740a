"""The inputs of bench/translate.py: a 32 KB OpenAI chat request, and the upstream
answers and streams of each provider in its own shape (realistic bodies, made up ids).
"""

from __future__ import annotations

import json
import random
from typing import Any

KINDS = ("openai", "anthropic", "gemini", "cohere", "replicate")
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "cohere": "command-a-03-2025",
    "replicate": "meta/meta-llama-3-8b-instruct",
}
STREAM_CHUNKS = 500

_WORDS = (
    "the gateway routes every request to a provider that fits its strategy while health latency "
    "price and quality move the choice streams carry tokens back through the bus and each attempt "
    "is counted once so budgets hold and nothing is lost on the way customers ask about invoices "
    "refunds shipping delays order numbers account settings passwords two-factor codes with "
    "numbers 42 3.14 and code like def f(x): return x * 2"
).split()
# Mixed into the "non-ASCII" request variant (about one word in twenty): accents, curly
# quotes, a dash, CJK — text pasted from documents or written in other languages.
_UNICODE_WORDS = "résumé naïve café “quoted” it’s — 東京 Grüße señor ünïcödé".split()


def text(rng: random.Random, n_words: int, unicode: bool = False) -> str:
    if not unicode:
        return " ".join(rng.choice(_WORDS) for _ in range(n_words))
    return " ".join(
        rng.choice(_UNICODE_WORDS) if rng.random() < 0.05 else rng.choice(_WORDS) for _ in range(n_words)
    )


def tokens(rng: random.Random, n: int) -> list[str]:
    out = [rng.choice(_WORDS) for _ in range(n)]
    return [w if i == 0 else " " + w for i, w in enumerate(out)]


# -- the 32 KB request -----------------------------------------------------------------------
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its number and return its status, items and shipping.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_number": {"type": "string", "description": "The order number, e.g. A-12345"},
                    "include_items": {"type": "boolean", "description": "Include the line items"},
                },
                "required": ["order_number"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund",
            "description": "Refund part or all of an order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_number": {"type": "string"},
                    "amount": {"type": "number", "description": "Amount in the order's currency"},
                    "reason": {"type": "string", "enum": ["damaged", "late", "wrong_item", "other"]},
                },
                "required": ["order_number", "amount"],
            },
        },
    },
]


def chat_request(size: int = 32 * 1024, tools: bool = True, seed: int = 1, unicode: bool = False) -> bytes:
    """An OpenAI chat request body of about ``size`` bytes."""
    rng = random.Random(seed)
    u = unicode
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a support agent. " + text(rng, 250, u)}
    ]
    if tools:
        messages += [
            {"role": "user", "content": "Where is my order A-12345? " + text(rng, 40, u)},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0001",
                        "type": "function",
                        "function": {
                            "name": "lookup_order",
                            "arguments": '{"order_number": "A-12345", "include_items": true}',
                        },
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0001",
                "content": json.dumps({"status": "shipped", "items": [text(rng, 6) for _ in range(8)]}),
            },
        ]
    turn = 0
    req: dict[str, Any] = {
        "model": "bench-model",
        "messages": messages,
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.95,
        "stop": ["END"],
        "user": "user-1234",
    }
    if tools:
        req["tools"] = TOOLS
        req["tool_choice"] = "auto"
    while True:
        role = "user" if turn % 2 == 0 else "assistant"
        n_words = rng.randint(20, 80) if role == "user" else rng.randint(80, 250)
        messages.append({"role": role, "content": text(rng, n_words, u)})
        turn += 1
        body = json.dumps(req, ensure_ascii=False).encode()
        if len(body) >= size and role == "assistant":
            messages.append({"role": "user", "content": "Thanks. " + text(rng, 20, u)})
            return json.dumps(req, ensure_ascii=False).encode()


# -- upstream bodies and streams in each protocol -----------------------------------------------
def _openai_response(model: str, answer: str) -> dict[str, Any]:
    b = {
        "id": "chatcmpl-AbCdEf0123456789",
        "object": "chat.completion",
        "created": 1732000000,
        "model": model + "-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 8012,
            "completion_tokens": 300,
            "total_tokens": 8312,
            "prompt_tokens_details": {"cached_tokens": 4096, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }
    return b


def _anthropic_response(model: str, answer: str) -> dict[str, Any]:
    b = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 8012,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4096,
            "output_tokens": 300,
            "service_tier": "standard",
        },
    }
    return b


def _gemini_response(model: str, answer: str) -> dict[str, Any]:
    b = {
        "candidates": [
            {
                "content": {"parts": [{"text": answer}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
                "avgLogprobs": -0.1234,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 8012,
            "candidatesTokenCount": 300,
            "totalTokenCount": 8312,
            "cachedContentTokenCount": 4096,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8012}],
        },
        "modelVersion": model,
        "responseId": "a1b2c3d4e5f6g7h8",
    }
    return b


def _cohere_response(model: str, answer: str) -> dict[str, Any]:
    b = {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        "usage": {
            "billed_units": {"input_tokens": 8000, "output_tokens": 300},
            "tokens": {"input_tokens": 8012, "output_tokens": 300},
        },
    }
    return b


def _replicate_response(model: str, answer: str) -> dict[str, Any]:
    pieces = answer.split(" ")
    b = {
        "id": "gm3qorzdhgbfurvjtvhg6dckhu",
        "model": model,
        "version": "5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8",
        "input": {"prompt": "…", "max_tokens": 1024},
        "logs": "",
        "data_removed": False,
        "output": [p if i == 0 else " " + p for i, p in enumerate(pieces)],
        "error": None,
        "status": "succeeded",
        "created_at": "2024-11-19T10:00:00.000Z",
        "started_at": "2024-11-19T10:00:00.100Z",
        "completed_at": "2024-11-19T10:00:02.300Z",
        "urls": {
            "cancel": "https://api.replicate.com/v1/predictions/gm3q/cancel",
            "get": "https://api.replicate.com/v1/predictions/gm3q",
            "stream": "https://stream.replicate.com/v1/files/bcwr-3okdfv3o2wehstv5f2okyftwxy57hhypqsi6osiim5iz3gwbvj6q",
        },
        "metrics": {
            "input_token_count": 8012,
            "output_token_count": 300,
            "predict_time": 2.2,
            "time_to_first_token": 0.09,
            "tokens_per_second": 140.5,
            "total_time": 2.3,
        },
    }
    return b


_RESPONSES = {
    "openai": _openai_response,
    "anthropic": _anthropic_response,
    "gemini": _gemini_response,
    "cohere": _cohere_response,
    "replicate": _replicate_response,
}


def upstream_response(kind: str, model: str, answer: str) -> bytes:
    """A non-stream upstream answer carrying ``answer``, in the provider's own shape."""
    return json.dumps(_RESPONSES[kind](model, answer)).encode()
