"""The built-in simulated provider.

Deterministic text derived from the prompt (the same prompt always gives the same
answer), a configurable time to first token, token rate, failure rate and price;
embeddings too. It answers in-process (no HTTP) and is the embedded default;
:mod:`services.worker.sim_server` serves the same engine over OpenAI HTTP as the
benchmark's upstream.

A tool call is returned when ``tool_choice`` is ``required`` or names a function
(arguments ``{}`` unless the prompt is JSON); ``response_format`` json modes get a
JSON object.

``n`` choices are all answered (streams: ``index`` 0..n-1, interleaved token by token,
each with its own finish chunk) and all billed: completion tokens × n.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

from libs.common.config import SimSettings
from libs.common.errors import InvalidRequest, UpstreamError

from ..chunks import ChunkWriter, Usage, chat_completion, embeddings_response, encode, new_id, now
from .base import Http, Protocol, Sink

_WORDS = (
    "the gateway routes every request to the provider that fits its strategy while health "
    "latency price and quality move the choice streams carry tokens back through the bus "
    "and each attempt is counted once so budgets hold and nothing is lost on the way"
).split()


def prompt_text(req: dict[str, Any]) -> str:
    """All text of a chat or completion request, in order."""
    if "messages" in req:
        parts: list[str] = []
        for m in req["messages"]:
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    p = req.get("prompt", "")
    return p if isinstance(p, str) else " ".join(map(str, p))


def count_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def words(prompt: str, n: int) -> list[str]:
    """``n`` deterministic tokens for ``prompt`` (each a word with its leading space)."""
    seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    out = [rng.choice(_WORDS) for _ in range(n)]
    if out:
        out[0] = out[0].capitalize()
    return [w if i == 0 else " " + w for i, w in enumerate(out)]


def vector(text: str, dims: int) -> list[float]:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    v = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / norm for x in v]


def plan_answer(req: dict[str, Any], settings: SimSettings) -> tuple[list[str], dict[str, Any] | None, str]:
    """The answer for ``req``: (content tokens, tool call or None, finish_reason)."""
    text = prompt_text(req)
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    tc = req.get("tool_choice")
    tools = req.get("tools") or []
    if tools and (tc == "required" or isinstance(tc, dict)):
        name = tc["function"]["name"] if isinstance(tc, dict) else tools[0]["function"]["name"]
        call = {
            "id": "call_" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest(),
            "type": "function",
            "function": {"name": name, "arguments": "{}"},
        }
        return [], call, "tool_calls"
    rf = req.get("response_format") or {}
    if rf.get("type") in ("json_object", "json_schema"):
        return [encode({"answer": "".join(words(text, 8)).strip()}).decode()], None, "stop"
    n = settings.max_tokens if limit is None else min(limit, settings.max_tokens)
    toks = words(text, n)
    finish = "length" if limit is not None and limit <= settings.max_tokens else "stop"
    stop = req.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else stop
        joined = "".join(toks)
        cut = min((joined.find(s) for s in stops if s and s in joined), default=-1)
        if cut >= 0:
            kept, acc = [], 0
            for t in toks:
                if acc + len(t) > cut:
                    if cut > acc:
                        kept.append(t[: cut - acc])
                    break
                kept.append(t)
                acc += len(t)
            toks, finish = kept, "stop"
    return toks, None, finish


# The most numbers the simulator computes for one embeddings request (inputs x dimensions):
# about as much as 2,048 inputs of a 2,048-dimension model; a larger request is a 400.
MAX_VALUES = 4 * 1024 * 1024


def check_sizes(req: dict[str, Any], op: str, context_window: int) -> None:
    """What a client controls stays bounded, as a real provider's limits keep it (400 naming it)."""
    for name in ("max_completion_tokens", "max_tokens"):
        limit = req.get(name)
        if isinstance(limit, int) and limit > context_window:
            raise InvalidRequest(
                f"{name} is too large: {limit}. The simulated model supports at most {context_window} "
                "completion tokens.",
                param=name,
            )
    if op == "embeddings":
        inputs = req.get("input")
        count = 1 if isinstance(inputs, str) or not isinstance(inputs, list) else len(inputs)
        dims = req.get("dimensions") or 0
        if isinstance(dims, int) and count * dims > MAX_VALUES:
            raise InvalidRequest(
                f"{count} inputs of {dims} dimensions exceed the simulator's {MAX_VALUES} values per request.",
                param="dimensions",
            )


class SimProtocol(Protocol):
    kind = "sim"

    def __init__(self, provider: Any, profile: Any) -> None:
        super().__init__(provider, profile)
        self.settings: SimSettings = provider.sim or SimSettings()
        self.rng = random.Random()

    async def run(
        self, http: Http, sink: Sink, op: str, req: dict[str, Any], model: str, stream: bool
    ) -> Usage | None:
        s = self.settings
        if s.failure_rate and self.rng.random() < s.failure_rate:
            raise UpstreamError(
                f"provider {self.provider.id!r} failed (500): simulated failure", provider=self.provider.id
            )
        check_sizes(req, op, self.profile.context_window or MAX_VALUES)
        if s.ttft_ms:
            await asyncio.sleep(s.ttft_ms / 1000)
        if op == "embeddings":
            return await self._embeddings(sink, req, model)
        toks, call, finish = plan_answer(req, s)
        n = req.get("n") or 1
        # Every choice is the same deterministic answer, and every one is billed.
        usage = Usage(
            prompt_tokens=count_tokens(prompt_text(req)),
            completion_tokens=max(len(toks), 1 if call else 0) * n,
        )
        if op == "completions":
            return await self._completion(sink, req, model, stream, toks, finish, usage)
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(toks)}
            if call:
                message["tool_calls"] = [call]
            choices = [{"index": i, "message": dict(message), "finish_reason": finish} for i in range(n)]
            await sink.result(chat_completion(model, choices, usage))
            return usage
        w = ChunkWriter(model, include_usage=bool((req.get("stream_options") or {}).get("include_usage")))
        await sink.chunk(*(w.role(i) for i in range(n)))
        if call:
            await sink.chunk(*(w.delta({"tool_calls": [{"index": 0, **call}]}, index=i) for i in range(n)))
        else:  # the choices advance together, one token of each per step, as a batch decodes
            await self._pace(sink, [w.content(t, i) for t in toks for i in range(n)], n)
        await sink.chunk(*(w.finish(finish, i) for i in range(n)))
        if w.include_usage:
            await sink.chunk(w.usage(usage))
        return usage

    async def _pace(self, sink: Sink, chunks: list[bytes], width: int = 1) -> None:
        """Send ``chunks`` at the token rate; ``width`` chunks (one per choice) make one token step."""
        rate = self.settings.tokens_per_s
        if rate <= 0:
            if chunks:
                await sink.chunk(*chunks)
            return
        # Tokens go out in steps of ~10 ms (one frame each) rather than one by one.
        tokens = max(1, int(rate / 100))
        step = tokens * width
        for i in range(0, len(chunks), step):
            await sink.chunk(*chunks[i : i + step])
            await asyncio.sleep(tokens / rate)

    async def _completion(
        self,
        sink: Sink,
        req: dict[str, Any],
        model: str,
        stream: bool,
        toks: list[str],
        finish: str,
        usage: Usage,
    ) -> Usage:
        cid, created = new_id("cmpl-"), now()
        n = req.get("n") or 1

        def body(choices: list[dict[str, Any]], with_usage: bool = False) -> bytes:
            out: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if with_usage:
                out["usage"] = usage.to_openai()
            return encode(out)

        def choice(i: int, text: str, fin: str | None) -> dict[str, Any]:
            return {"index": i, "text": text, "finish_reason": fin, "logprobs": None}

        if not stream:
            text = "".join(toks)
            await sink.result(body([choice(i, text, finish) for i in range(n)], True))
            return usage
        await self._pace(sink, [body([choice(i, t, None)]) for t in toks for i in range(n)], n)
        await sink.chunk(*(body([choice(i, "", finish)]) for i in range(n)))
        if (req.get("stream_options") or {}).get("include_usage"):
            await sink.chunk(body([], True))
        return usage

    async def _embeddings(self, sink: Sink, req: dict[str, Any], model: str) -> Usage:
        inputs = req["input"]
        items = [inputs] if isinstance(inputs, str) else inputs
        dims = req.get("dimensions") or self.settings.embedding_dims
        vectors = [vector(str(x), dims) for x in items]
        usage = Usage(prompt_tokens=sum(count_tokens(str(x)) for x in items))
        await sink.result(embeddings_response(model, vectors, usage, req.get("encoding_format")))
        return usage
