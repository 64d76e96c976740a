"""The Anthropic emulator, driven by the official ``anthropic`` SDK and by raw HTTP.

Note: ``anthropic`` 2.x sends the API key as ``Authorization: Bearer``; the documented
header is ``x-api-key`` (which the emulator requires), so the client adds it explicitly.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.emulators.anthropic import REQUESTS, make_app, serve

KEY = "sk-ant-emulator-0001"
MODEL = "claude-haiku-4-5"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
GIF = base64.b64encode(b"GIF89a" + b"\x00" * 16).decode()


@pytest.fixture
def script() -> list[str]:
    return []


@pytest.fixture
async def emulator(script: list[str]):
    app = make_app(script, api_key=KEY)
    runner, base_url = await serve(app)
    try:
        yield app, base_url
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(emulator):
    c = anthropic.AsyncAnthropic(
        base_url=emulator[1], api_key=KEY, max_retries=0, timeout=10, default_headers={"x-api-key": KEY}
    )
    try:
        yield c
    finally:
        await c.close()


async def raw_post(base_url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, dict]:
    async with aiohttp.ClientSession() as s:
        data = json.dumps(body).encode()
        async with s.post(
            base_url + "/v1/messages", data=data, headers=HEADERS if headers is None else headers
        ) as r:
            return r.status, dict(r.headers), json.loads(await r.read())


async def raw_events(base_url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    async with aiohttp.ClientSession() as s:
        async with s.post(base_url + "/v1/messages", json={**body, "stream": True}, headers=HEADERS) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["request-id"].startswith("req_")
            text = (await r.read()).decode()
    for frame in text.strip().split("\n\n"):
        event, data = frame.split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def hello(text: str = "hello there", **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": text}], **kw}


def assert_invalid(status: int, headers: dict, body: dict, fragment: str, code: int = 400) -> None:
    assert status == code
    assert body["type"] == "error"
    assert body["error"]["type"] == {400: "invalid_request_error", 401: "authentication_error"}.get(
        code, "not_found_error"
    )
    assert fragment in body["error"]["message"]
    assert body["request_id"] == headers["request-id"]


# -- happy paths with the SDK ------------------------------------------------------------


async def test_create_message(client, emulator) -> None:
    raw = await client.messages.with_raw_response.create(**hello())
    assert raw.headers["request-id"].startswith("req_")
    msg = await raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "You said: hello there"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 4
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0
    recorded = emulator[0][REQUESTS][-1]
    assert recorded["body"]["max_tokens"] == 100 and recorded["headers"]["x-api-key"] == KEY


async def test_stream_matches_message(client) -> None:
    whole = await client.messages.create(**hello("stream me please"))
    async with client.messages.stream(**hello("stream me please")) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens


async def test_stream_exact_event_sequence(emulator) -> None:
    events = await raw_events(emulator[1], hello("one two"))
    assert [e for e, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == event for event, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta") == "You said: one two"
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert set(final["usage"]) >= {"input_tokens", "output_tokens", "cache_read_input_tokens"}


async def test_tool_round_trip(client) -> None:
    ask = {"role": "user", "content": "What's the weather in Tokyo and Paris?"}
    first = await client.messages.create(model=MODEL, max_tokens=200, messages=[ask], tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use", "tool_use"]
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Tokyo", "unit": "c"}, {"city": "Paris", "unit": "c"}]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"{k}0C"} for k, u in enumerate(uses)]
    second = await client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            ask,
            {"role": "assistant", "content": first.to_dict()["content"]},
            {"role": "user", "content": results},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Tool results: 00C; 10C"


async def test_tool_stream_and_choice(client) -> None:
    async with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "London and Berlin weather"}],
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["tool_use"]  # forced: no text, one call
    assert final.content[0].input == {"city": "London", "unit": "c"}
    none = await client.messages.create(**hello("weather?", tools=[WEATHER], tool_choice={"type": "none"}))
    assert none.stop_reason == "end_turn"


async def test_merged_turns_stop_sequences_and_max_tokens(client) -> None:
    msg = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "alpha"}, {"role": "user", "content": "beta gamma"}],
    )
    assert msg.content[0].text == "You said: alpha beta gamma"
    msg = await client.messages.create(**hello("alpha beta gamma", stop_sequences=["beta"]))
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "beta"
    assert msg.content[0].text == "You said: alpha "
    msg = await client.messages.create(**{**hello("alpha beta gamma"), "max_tokens": 3})
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "You said: alpha"
    assert msg.usage.output_tokens == 3


async def test_json_outputs(client) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}}
    msg = await client.messages.create(
        **hello("hi"), output_config={"format": {"type": "json_schema", "schema": schema}}
    )
    assert json.loads(msg.content[0].text) == {"answer": "hi", "n": 1}
    msg = await client.messages.create(**hello("hi"), system="Reply in JSON only.")
    assert json.loads(msg.content[0].text) == {"echo": "hi"}


async def test_images_accepted(client) -> None:
    content = [
        {"type": "text", "text": "what are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": GIF}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]
    msg = await client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert msg.content[0].text == "You said: what are these? [3 image(s)]"


async def test_thinking_block(client) -> None:
    msg = await client.messages.create(
        **{**hello("think"), "max_tokens": 2000}, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].signature
    async with client.messages.stream(
        **{**hello("think"), "max_tokens": 2000}, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].thinking == msg.content[0].thinking
    assert final.content[0].signature == msg.content[0].signature


async def test_prompt_cache_usage(client) -> None:
    system = [
        {"type": "text", "text": "A long shared preamble " * 20, "cache_control": {"type": "ephemeral"}}
    ]
    first = await client.messages.create(**hello("q1"), system=system)
    second = await client.messages.create(**hello("q2"), system=system)
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    forced = await client.messages.create(**hello("q3 [cache:30:7]"))
    assert (forced.usage.cache_read_input_tokens, forced.usage.cache_creation_input_tokens) == (30, 7)


async def test_sampling_params_accepted(client) -> None:
    extra = {"temperature": 0.5, "top_p": 0.9, "top_k": 5}
    msg = await client.messages.create(**hello(), metadata={"user_id": "u-1"}, extra_body=extra)
    assert msg.stop_reason == "end_turn"


async def test_models(client) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert ids and all(i.startswith("claude-") for i in ids)
    assert all(m.type == "model" for m in page.data)
    small = await client.models.list(limit=1)
    assert [m.id for m in small.data] == ids[:1] and small.has_more is True
    assert (await client.models.retrieve(ids[0])).id == ids[0]
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("gpt-4")


# -- rejections ------------------------------------------------------------------------------


async def test_rejects_missing_max_tokens_raw(emulator) -> None:
    body = hello()
    del body["max_tokens"]
    status, headers, err = await raw_post(emulator[1], body)
    assert_invalid(status, headers, err, "max_tokens: Field required")


async def test_rejects_bad_auth_and_version(emulator) -> None:
    status, headers, err = await raw_post(emulator[1], hello(), {"anthropic-version": "2023-06-01"})
    assert_invalid(status, headers, err, "x-api-key", code=401)
    status, headers, err = await raw_post(emulator[1], hello(), {**HEADERS, "x-api-key": "wrong"})
    assert_invalid(status, headers, err, "x-api-key", code=401)
    status, headers, err = await raw_post(emulator[1], hello(), {"x-api-key": KEY})
    assert_invalid(status, headers, err, "anthropic-version")


async def test_rejects_system_role_via_sdk(client) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        )
    assert 'Unexpected role "system"' in e.value.message
    assert e.value.body["request_id"] == e.value.response.headers["request-id"]


async def test_rejects_unknown_field_via_sdk(client) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(**hello(), extra_body={"frequency_penalty": 0.5})
    assert "frequency_penalty: Extra inputs are not permitted" in e.value.message


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "must be non-empty"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": " \n"}]}]}, "non-whitespace"),
        ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name: Extra inputs"),
        ({"messages": []}, "at least one message"),
        ({"metadata": {"user_id": "u", "session": "s"}}, "metadata.session: Extra inputs"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "budget_tokens"),
        ({"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}, "tools.0.custom.name"),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "input_schema.type"),
        ({"tool_choice": {"type": "tool", "name": "missing"}, "tools": [WEATHER]}, "not found in tools"),
        ({"tool_choice": {"type": "required"}, "tools": [WEATHER]}, "tool_choice"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "trailing "}]},
            "trailing whitespace",
        ),
    ],
)
async def test_rejects_invalid_requests(emulator, change: dict[str, Any], fragment: str) -> None:
    status, headers, err = await raw_post(emulator[1], {**hello(), **change})
    assert_invalid(status, headers, err, fragment)


async def test_rejects_unknown_model(emulator) -> None:
    status, headers, err = await raw_post(emulator[1], {**hello(), "model": "gpt-4o"})
    assert_invalid(status, headers, err, "model: gpt-4o", code=404)


def _image(media_type: str, data: str) -> dict[str, Any]:
    block = {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"messages": [{"role": "user", "content": [block, {"type": "text", "text": "see"}]}]}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (_image("image/bmp", PNG), "messages.0.content.0.source.base64.media_type"),
        (_image("image/png", "not base64!!"), "invalid base64"),
        (_image("image/jpeg", PNG), "does not match the provided media type image/jpeg"),
    ],
)
async def test_rejects_bad_images(emulator, change: dict[str, Any], fragment: str) -> None:
    status, headers, err = await raw_post(emulator[1], {**hello(), **change})
    assert_invalid(status, headers, err, fragment)


async def test_rejects_unanswered_tool_use(client) -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            tools=[WEATHER],
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": "never mind"},
            ],
        )
    assert (
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1" in e.value.message
    )
    with pytest.raises(anthropic.BadRequestError) as e:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            tools=[WEATHER],
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}],
                }
            ],
        )
    assert "unexpected `tool_use_id`" in e.value.message


async def test_tool_result_must_come_first(emulator) -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [{"type": "text", "text": "here:"}, result]},
    ]
    status, headers, err = await raw_post(emulator[1], {**hello(), "messages": messages, "tools": [WEATHER]})
    assert_invalid(status, headers, err, "must come first")


# -- scripted failures ------------------------------------------------------------------------


async def test_magic_429_with_retry_after(client) -> None:
    with pytest.raises(anthropic.RateLimitError) as e:
        await client.messages.create(**hello("hi [fail:429]"))
    assert e.value.response.headers["retry-after"] == "2"
    assert e.value.body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("status", "cls"), [(529, anthropic.OverloadedError), (500, anthropic.InternalServerError)]
)
async def test_magic_server_errors(client, status: int, cls: type) -> None:
    with pytest.raises(cls) as e:
        await client.messages.create(**hello(f"hi [fail:{status}]"))
    assert e.value.status_code == status
    assert e.value.body["error"]["type"] == {529: "overloaded_error", 500: "api_error"}[status]


@pytest.mark.parametrize("script", [["fail:529", "ok", "fail:500"]])
async def test_script_is_consumed_in_order(client, script: list[str]) -> None:
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.create(**hello())
    assert (await client.messages.create(**hello())).stop_reason == "end_turn"
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(**hello())
    assert (await client.messages.create(**hello())).stop_reason == "end_turn"


async def test_error_event_mid_stream(client, emulator) -> None:
    seen = []
    with pytest.raises(anthropic.APIStatusError) as e:
        async with client.messages.stream(**hello("hi there [fail:error_event]")) as stream:
            async for event in stream:
                seen.append(event.type)
    assert e.value.body["error"]["type"] == "overloaded_error"
    assert seen[:3] == ["message_start", "content_block_start", "content_block_delta"]
    events = await raw_events(emulator[1], hello("hi there [fail:error_event]"))
    assert events[-1][0] == "error" and "message_stop" not in [e for e, _ in events]


async def test_cut_stream(client) -> None:
    with pytest.raises(Exception) as e:  # noqa: B017 - the SDK surfaces the transport's error type
        async with client.messages.stream(**hello("hi there [fail:cut]")) as stream:
            async for _ in stream:
                pass
    assert not isinstance(e.value, anthropic.APIStatusError)
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(**hello("hi [fail:cut]"))


async def test_stop_reason_directive(client) -> None:
    msg = await client.messages.create(**hello("no [stop:refusal]"))
    assert msg.stop_reason == "refusal"
