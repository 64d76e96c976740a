"""One token estimate, for every count a provider did not report.

Used wherever a provider sends no usage (Replicate without metrics, Gemini
embeddings without ``usageMetadata``, OpenAI-compatible servers that cannot stream
usage) and for an attempt that ended after its first byte without the provider's
final count (cut stream, client gone, deadline): the tokens it did stream are
estimated from the OpenAI chunks that went to the client. A usage built from an
estimate carries ``estimated=True`` up to the usage record.

The rule: one token per 4 bytes of UTF-8 text, rounded up per text. Four bytes a
token is OpenAI's own rule of thumb for English; counting bytes rather than
characters keeps CJK and other multi-byte scripts (≈ 1 token per character)
from being counted at a quarter of their cost. No tokenizer is loaded: a
tokenizer per provider would cost memory and start-up time for a number the
provider normally reports itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BYTES_PER_TOKEN = 4

# The JSON string fields of OpenAI chunks and bodies that carry generated text.
_TEXT_KEYS = (b'"content"', b'"arguments"', b'"text"')
_SPACE = b" \t\r\n"


def of_bytes(n: int) -> int:
    return -(-n // BYTES_PER_TOKEN)


def of_text(text: str) -> int:
    return of_bytes(len(text.encode()))


def of_texts(texts: Iterable[str]) -> int:
    return sum(of_text(t) for t in texts)


def prompt(req: dict[str, Any]) -> int:
    """The estimated prompt tokens of an OpenAI chat, completions or embeddings request."""
    return of_texts(_prompt_texts(req))


def _prompt_texts(req: dict[str, Any]) -> Iterable[str]:
    for m in req.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            yield from (p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    for field in ("prompt", "input"):
        value = req.get(field)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, str))


def text_bytes(data: bytes) -> int:
    """Bytes of generated text in OpenAI JSON (``content``, tool ``arguments``, ``text``).

    A few ``bytes.find`` calls, no decoding. JSON escapes count as their escaped
    length, close enough for an estimate.
    """
    n = 0
    for key in _TEXT_KEYS:
        at = data.find(key)
        while at >= 0:
            start = _string_start(data, at + len(key))
            if start < 0:
                at = data.find(key, at + len(key))
                continue
            end = data.find(b'"', start)
            while end > 0 and data[end - 1] == 92:  # an escaped quote
                end = data.find(b'"', end + 1)
            if end < 0:
                end = len(data)
            n += end - start
            at = data.find(key, end)
    return n


def _string_start(data: bytes, i: int) -> int:
    """After a key: the index just past the opening quote of its string value, else -1."""
    if data[i : i + 2] == b':"':  # compact JSON, the common case
        return i + 2
    n = len(data)
    while i < n and data[i] in _SPACE:
        i += 1
    if i >= n or data[i] != 58:  # ":"
        return -1
    i += 1
    while i < n and data[i] in _SPACE:
        i += 1
    return i + 1 if i < n and data[i] == 34 else -1  # '"'


class Streamed:
    """The generated text a worker sent to a client, counted at almost no cost per chunk.

    The first ``SAMPLE`` chunks are scanned (:func:`text_bytes`); every later chunk
    only adds its length, and its text is that length minus the envelope (id, model,
    choice index...) measured on the last sampled chunk that carried text — an
    OpenAI stream repeats the same envelope on every content chunk.
    """

    __slots__ = ("text", "sampled", "envelope", "rest_bytes", "rest_pieces")

    SAMPLE = 8

    def __init__(self) -> None:
        self.text = self.sampled = self.envelope = self.rest_bytes = self.rest_pieces = 0

    def add(self, pieces: tuple[bytes, ...]) -> None:
        if self.sampled >= self.SAMPLE:
            self.rest_bytes += sum(map(len, pieces))
            self.rest_pieces += len(pieces)
            return
        for p in pieces:
            t = text_bytes(p)
            self.text += t
            self.sampled += 1
            if t:
                self.envelope = len(p) - t

    def tokens(self) -> int:
        text = self.text + max(0, self.rest_bytes - self.envelope * self.rest_pieces)
        return of_bytes(text)
