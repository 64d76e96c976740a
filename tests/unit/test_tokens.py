"""The one token estimator (services/worker/tokens.py)."""

from __future__ import annotations

import json

from services.worker import tokens
from services.worker.chunks import ChunkWriter


def test_four_utf8_bytes_a_token_rounded_up_per_text():
    assert tokens.of_text("") == 0
    assert tokens.of_text("abcd") == 1 and tokens.of_text("abcde") == 2
    assert tokens.of_text("日本語") == 3  # 9 bytes: multi-byte scripts are not undercounted
    assert tokens.of_texts(["abc", "abc"]) == 2


def test_prompt_of_chat_completions_and_embeddings_requests():
    chat = {
        "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]},
        ]
    }
    assert tokens.prompt(chat) == 3
    assert tokens.prompt({"prompt": "abcd"}) == 1
    assert tokens.prompt({"input": ["abcd", "abcd"]}) == 2


def test_text_bytes_finds_content_arguments_and_text_compact_or_spaced():
    assert tokens.text_bytes(b'{"delta":{"content":"abc"}}') == 3
    assert tokens.text_bytes(json.dumps({"delta": {"content": "abc"}}).encode()) == 3
    tool = {"delta": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}
    assert tokens.text_bytes(json.dumps(tool).encode()) == len(json.dumps('{"a":1}')) - 2
    assert tokens.text_bytes(b'{"choices":[{"text":"ab"}]}') == 2
    assert tokens.text_bytes(b'{"content":null,"type":"content"}') == 0


def test_streamed_counts_a_long_stream_like_a_scan():
    w = ChunkWriter("m", include_usage=True)
    s = tokens.Streamed()
    s.add((w.role(),))
    text = ""
    for i in range(200):
        piece = f" word{i}"
        text += piece
        s.add((w.content(piece),) if i % 3 else (w.content(piece), w.content("")))
    s.add((w.finish("stop"),))
    assert abs(s.tokens() - tokens.of_text(text)) <= 3
