"""The Gemini emulator, checked with Google's own ``google-genai`` SDK and raw HTTP."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors, types

from tests.emulators.gemini import API_KEY, REQUESTS, make_app

MODEL = "gemini-2.0-flash"
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather",
    parameters_json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


# One emulator and one SDK client for the module (a genai.Client loads CA bundles: ~0.2 s each).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> Any:
    app = make_app()
    srv = TestServer(app)
    await srv.start_server()
    srv.url = str(srv.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    srv.requests = app[REQUESTS]  # type: ignore[attr-defined]
    yield srv
    await srv.close()


@pytest.fixture(autouse=True)
def _fresh_log(server: Any) -> None:
    server.requests.clear()


@pytest.fixture(scope="module")
def client(server: Any) -> genai.Client:
    return sdk(server, API_KEY)


def sdk(server: Any, key: str) -> genai.Client:
    options = types.HttpOptions(
        base_url=server.url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=key, http_options=options)


# -- the SDK ----------------------------------------------------------------------------------
async def test_generate(client: genai.Client, server: Any) -> None:
    r = await client.aio.models.generate_content(model=MODEL, contents="hello there")
    assert r.text == "You said: hello there"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (2, 4, 6)
    assert r.response_id and r.model_version == MODEL
    assert server.requests[0] == (
        "generateContent",
        MODEL,
        {"contents": [{"parts": [{"text": "hello there"}], "role": "user"}]},
    )


async def test_generation_config(client: genai.Client) -> None:
    cfg = types.GenerateContentConfig(
        system_instruction="be nice", stop_sequences=["three"], candidate_count=2, temperature=0.1, top_k=3
    )
    r = await client.aio.models.generate_content(model=MODEL, contents="one two three four", config=cfg)
    assert [c.content.parts[0].text for c in r.candidates] == ["You said: one two ", "You said: one two "]
    assert [c.index for c in r.candidates] == [0, 1]
    cfg = types.GenerateContentConfig(max_output_tokens=3)
    r = await client.aio.models.generate_content(model=MODEL, contents="one two three four", config=cfg)
    assert r.text == "You said: one" and r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


async def test_json_mode(client: genai.Client) -> None:
    cfg = types.GenerateContentConfig(response_mime_type="application/json")
    r = await client.aio.models.generate_content(model=MODEL, contents="hi", config=cfg)
    assert json.loads(r.text) == {"answer": "You said: hi"}
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}}
    cfg = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema)
    r = await client.aio.models.generate_content(model=MODEL, contents="hi", config=cfg)
    assert json.loads(r.text) == {"name": "example", "n": 1}


async def test_images(client: genai.Client) -> None:
    parts = [
        types.Part.from_text(text="what is this"),
        types.Part.from_bytes(data=b"\x89PNG\r\n", mime_type="image/png"),
        types.Part.from_uri(file_uri="https://example.com/cat.jpg", mime_type="image/jpeg"),
    ]
    r = await client.aio.models.generate_content(
        model=MODEL, contents=types.Content(role="user", parts=parts)
    )
    assert r.text == "You said: what is this [images: image/png, image/jpeg]"
    assert r.usage_metadata.prompt_token_count == 3 + 2 * 258


async def test_stream(client: genai.Client) -> None:
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(model=MODEL, contents="a b c d e f g")
    ]
    assert len(chunks) == 3
    assert "".join(c.text for c in chunks) == "You said: a b c d e f g"
    assert [c.candidates[0].finish_reason for c in chunks] == [None, None, types.FinishReason.STOP]
    assert chunks[-1].usage_metadata.candidates_token_count == 9
    assert chunks[0].usage_metadata.candidates_token_count is None


async def test_thoughts(client: genai.Client) -> None:
    cfg = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    r = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi", config=cfg)
    parts = r.candidates[0].content.parts
    assert parts[0].thought and parts[0].text == "Thinking about the request."
    assert r.usage_metadata.thoughts_token_count == 4


async def test_function_call_round_trip(client: genai.Client) -> None:
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])], automatic_function_calling=NO_AFC
    )
    user = types.Content(role="user", parts=[types.Part.from_text(text="get_weather for Paris please")])
    r = await client.aio.models.generate_content(model=MODEL, contents=[user], config=cfg)
    assert [(c.name, c.args) for c in r.function_calls] == [("get_weather", {"city": "example"})]
    answer = types.Part.from_function_response(name="get_weather", response={"temp": 20})
    contents = [user, r.candidates[0].content, types.Content(role="user", parts=[answer])]
    r = await client.aio.models.generate_content(model=MODEL, contents=contents, config=cfg)
    assert r.text == 'Results: get_weather={"temp": 20}'
    # mode NONE never calls; ANY always does
    none = cfg.model_copy(
        update={
            "tool_config": types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="NONE"))
        }
    )
    r = await client.aio.models.generate_content(model=MODEL, contents=[user], config=none)
    assert r.function_calls is None
    forced = cfg.model_copy(
        update={
            "tool_config": types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY"))
        }
    )
    r = await client.aio.models.generate_content(model=MODEL, contents="no mention", config=forced)
    assert r.function_calls[0].name == "get_weather"


async def test_gemini3_function_calls_carry_signatures(client: genai.Client) -> None:
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])], automatic_function_calling=NO_AFC
    )
    r = await client.aio.models.generate_content(
        model="gemini-3-pro-preview", contents="get_weather", config=cfg
    )
    part = r.candidates[0].content.parts[0]
    assert part.function_call.name == "get_weather" and part.thought_signature.startswith(b"sig:")


async def test_safety(client: genai.Client) -> None:
    r = await client.aio.models.generate_content(model=MODEL, contents="say [block] now")
    assert r.candidates is None and r.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(
            model=MODEL, contents="x y z w [unsafe]"
        )
    ]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.SAFETY
    assert chunks[-1].candidates[0].content is None and chunks[0].text


async def test_embeddings(client: genai.Client, server: Any) -> None:
    cfg = types.EmbedContentConfig(output_dimensionality=8)
    r = await client.aio.models.embed_content(
        model="text-embedding-004", contents=["a", "b", "a"], config=cfg
    )
    values = [e.values for e in r.embeddings]
    assert [len(v) for v in values] == [8, 8, 8] and values[0] == values[2] != values[1]
    full = await client.aio.models.embed_content(model="text-embedding-004", contents="a")
    assert len(full.embeddings[0].values) == 768
    assert sum(v * v for v in full.embeddings[0].values) == pytest.approx(1.0, abs=1e-4)
    assert full.embeddings[0].values[:8] == values[0]
    assert server.requests[0][0] == "batchEmbedContents"


async def test_models(client: genai.Client) -> None:
    names = [m.name async for m in await client.aio.models.list(config={"page_size": 2})]
    assert "models/gemini-2.0-flash" in names and "models/text-embedding-004" in names and len(names) == 7
    m = await client.aio.models.get(model="gemini-2.5-pro")
    assert m.name == "models/gemini-2.5-pro" and "generateContent" in m.supported_actions


async def test_sdk_errors(server: Any, client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as e:
        await sdk(server, "wrong").aio.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
    assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(errors.ClientError) as e:
        await client.aio.models.generate_content(model=MODEL, contents="hi [fail:429]")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in e.value.details[
        "error"
    ]["details"]
    for code, status in [(500, "INTERNAL"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED")]:
        with pytest.raises(errors.ServerError) as e:
            await client.aio.models.generate_content(model=MODEL, contents=f"hi [fail:{code}]")
        assert (e.value.code, e.value.status) == (code, status)
    with pytest.raises(errors.ClientError) as e:
        await client.aio.models.generate_content(model="gemini-9", contents="hi")
    assert e.value.code == 404


# -- raw HTTP: what the SDK would never send --------------------------------------------------
async def post(
    server: Any, path: str, body: Any, key: str | None = API_KEY, query: str = ""
) -> tuple[int, Any]:
    headers = {"x-goog-api-key": key} if key else {}
    async with (
        ClientSession() as s,
        s.post(f"{server.url}/v1beta/{path}{query}", json=body, headers=headers) as r,
    ):
        text = await r.text()
        return r.status, (json.loads(text) if r.content_type == "application/json" else text)


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def call_turn(*names: str, signature: str | None = None) -> dict[str, Any]:
    parts = []
    for n in names:
        part: dict[str, Any] = {"functionCall": {"name": n, "args": {}}}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return {"role": "model", "parts": parts}


def response_turn(*names: str) -> dict[str, Any]:
    return {
        "role": "user",
        "parts": [{"functionResponse": {"name": n, "response": {"ok": True}}} for n in names],
    }


TOOLS = [{"functionDeclarations": [{"name": "f"}, {"name": "g"}]}]
INVALID = [
    ({"contents": [user()], "temperature": 1}, 'Unknown name "temperature"'),
    ({"contents": [user()], "generationConfig": {"max_tokens": 5}}, "Unknown name \"max_tokens\" at 'generation_config'"),
    ({"contents": [{"role": "user", "parts": [{"text": "a", "image": "x"}]}]}, 'Unknown name "image"'),
    ({"contents": [{"role": "assistant", "parts": [{"text": "a"}]}]}, "valid role: user, model"),
    ({"contents": [{"role": "system", "parts": [{"text": "a"}]}, user()]}, "valid role: user, model"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [{"role": "user"}]}, "contents.parts must not be empty"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [user("")]}, "empty text parameter"),
    ({"contents": [{"role": "user", "parts": [{}]}]}, "required oneof field 'data'"),
    ({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "QQ=="}}]}]}, "required oneof field 'data'"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]}, "Base64 decoding failed"),
    ({"contents": [user(), call_turn("f"), {"role": "user", "parts": [{"functionResponse": {"response": {}}}]}], "tools": TOOLS}, "Name cannot be empty"),
    ({"contents": [user(), {"role": "model", "parts": [{"functionCall": {"args": {}}}]}], "tools": TOOLS}, "Name cannot be empty"),
    ({"contents": [user(), call_turn("f", "g"), response_turn("f")], "tools": TOOLS}, "number of function response parts is equal"),
    ({"contents": [user(), response_turn("f")], "tools": TOOLS}, "function response turn comes immediately after a function call turn"),
    ({"contents": [user(), {"role": "model", "parts": [{"text": "a"}]}, call_turn("f")], "tools": TOOLS}, "function call turn comes immediately after a user turn"),
    ({"contents": [user()], "generationConfig": {"temperature": "hot"}}, "(TYPE_FLOAT)"),
    ({"contents": [user()], "generationConfig": {"candidateCount": 9}}, "candidate_count"),
    ({"contents": [user()], "generationConfig": {"stopSequences": ["a", "b", "c", "d", "e", "f"]}}, "at most 5 stop sequences"),
    ({"contents": [user()], "generationConfig": {"logprobs": 2}}, "response_logprobs"),
    ({"contents": [user()], "generationConfig": {"responseJsonSchema": {"type": "object"}}}, "response schema"),
    ({"contents": [user()], "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "HIGH"}]}, "Invalid value at 'safety_settings[0].threshold'"),
    ({"contents": [user()], "tools": TOOLS, "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}}}, "only be set when mode is ANY"),
    ({"contents": [user()], "tools": [{"functionDeclarations": [{"name": "bad name"}]}]}, "Invalid function name"),
    ({"contents": "hi"}, "cannot start list"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), INVALID)
async def test_rejects_invalid_payloads(server: Any, body: dict[str, Any], message: str) -> None:
    status, doc = await post(server, f"models/{MODEL}:generateContent", body)
    assert status == 400, doc
    assert doc["error"]["status"] == "INVALID_ARGUMENT" and doc["error"]["code"] == 400
    assert message in doc["error"]["message"]
    assert server.requests == []


async def test_accepts_snake_case_like_google(server: Any) -> None:
    status, doc = await post(
        server,
        f"models/{MODEL}:generateContent",
        {"contents": [user()], "generation_config": {"max_output_tokens": 2}},
    )
    assert status == 200 and doc["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_auth(server: Any) -> None:
    status, doc = await post(server, f"models/{MODEL}:generateContent", {"contents": [user()]}, key=None)
    assert status == 403 and doc["error"]["status"] == "PERMISSION_DENIED"
    status, doc = await post(server, f"models/{MODEL}:generateContent", {"contents": [user()]}, key="nope")
    assert status == 400 and doc["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, _ = await post(
        server, f"models/{MODEL}:generateContent", {"contents": [user()]}, key=None, query=f"?key={API_KEY}"
    )
    assert status == 200


async def test_not_found(server: Any) -> None:
    status, doc = await post(server, "models/gemini-9:generateContent", {"contents": [user()]})
    assert status == 404 and doc["error"]["status"] == "NOT_FOUND"
    status, doc = await post(server, "models/text-embedding-004:generateContent", {"contents": [user()]})
    assert status == 404 and "not supported for generateContent" in doc["error"]["message"]


async def test_gemini3_requires_thought_signatures(server: Any) -> None:
    path = "models/gemini-3-pro-preview:generateContent"
    contents = [user("call f"), call_turn("f"), response_turn("f")]
    status, doc = await post(server, path, {"contents": contents, "tools": TOOLS})
    assert status == 400 and "missing a thought_signature" in doc["error"]["message"]
    contents[1] = call_turn("f", signature="bm9wZQ==")
    status, doc = await post(server, path, {"contents": contents, "tools": TOOLS})
    assert status == 400 and "Corrupted thought signature" in doc["error"]["message"]
    contents[1] = call_turn("f", signature=base64.b64encode(b"sig:f").decode())
    status, doc = await post(server, path, {"contents": contents, "tools": TOOLS})
    assert status == 200, doc
    # earlier turns (before the last user text) are not checked, as with Gemini 3
    status, doc = await post(
        server, path, {"contents": [*contents[:1], call_turn("f"), contents[2], user("next")], "tools": TOOLS}
    )
    assert status == 200, doc


async def test_batch_embed_rules(server: Any) -> None:
    path = "models/text-embedding-004:batchEmbedContents"
    one = {"model": "models/text-embedding-004", "content": {"parts": [{"text": "x"}]}}
    status, doc = await post(server, path, {"requests": [one] * 101})
    assert status == 400 and "at most 100 requests" in doc["error"]["message"]
    status, doc = await post(server, path, {"requests": [{**one, "model": "models/gemini-embedding-001"}]})
    assert status == 400 and "must match" in doc["error"]["message"]
    status, doc = await post(server, path, {"requests": [{**one, "outputDimensionality": 769}]})
    assert status == 400
    status, doc = await post(server, path, {"requests": [{**one, "dimensions": 8}]})
    assert status == 400 and 'Unknown name "dimensions"' in doc["error"]["message"]
    status, doc = await post(
        server,
        "models/text-embedding-004:embedContent",
        {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 4},
    )
    assert status == 200 and len(doc["embedding"]["values"]) == 4


async def test_stream_framing(server: Any) -> None:
    path = f"models/{MODEL}:streamGenerateContent"
    status, text = await post(server, path, {"contents": [user("a b c d")]}, query="?alt=sse")
    events = [json.loads(e.removeprefix("data: ")) for e in text.split("\r\n\r\n") if e]
    assert status == 200 and len(events) == 2
    assert (
        "finishReason" not in events[0]["candidates"][0]
        and events[-1]["candidates"][0]["finishReason"] == "STOP"
    )
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 6
    status, doc = await post(server, path, {"contents": [user("a b c d")]})  # no alt=sse: one JSON array
    assert status == 200 and [e["candidates"] for e in doc] == [e["candidates"] for e in events]


@pytest.mark.parametrize(("magic", "last_has_error"), [("[cut]", False), ("[fail-mid:500]", True)])
async def test_stream_scripted_breaks(server: Any, magic: str, last_has_error: bool) -> None:
    status, text = await post(
        server,
        f"models/{MODEL}:streamGenerateContent",
        {"contents": [user(f"a b c d e f {magic}")]},
        query="?alt=sse",
    )
    events = [json.loads(e.removeprefix("data: ")) for e in text.split("\r\n\r\n") if e]
    assert status == 200 and "finishReason" not in events[0]["candidates"][0]
    assert ("error" in events[-1]) is last_has_error
    assert not any("finishReason" in c for e in events for c in e.get("candidates", []))
