"""Model discovery, local-server detection, /v1/models, /v1/capabilities and /v1/extensions."""

from __future__ import annotations

import aiohttp

from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import config, in_process, openai_provider
from tests.schema import validate


async def _get(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_discovered_models_are_listed_owned_by_their_provider(nats_server):
    state = UpstreamState(api_key="sk-test", models=["alpha-1", "beta-2"])
    async with running(state) as base:
        cfg = config(
            providers=[
                openai_provider(
                    "disc",
                    base,
                    [],
                    discover_models=True,
                    price={"alpha-1": {"input_per_mtok": 1, "output_per_mtok": 2}},
                )
            ]
        )
        async with in_process(cfg, nats_server.url) as gw:
            listing = await _get(gw.base_url + "/models")
            validate("ListModelsResponse", listing)
            owners = {m["id"]: m["owned_by"] for m in listing["data"]}
            assert owners["alpha-1"] == "disc" and owners["beta-2"] == "disc"
            reply = await gw.openai().chat.completions.create(
                model="beta-2", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == "You said: hi"
            assert state.last_request_body["model"] == "beta-2"

            caps = {c["model"]: c for c in (await _get(gw.base_url + "/capabilities"))["data"]}
            alpha = caps["alpha-1"]
            assert alpha["streaming"] is True and alpha["tools"] is True and alpha["embeddings"] is True
            assert alpha["targets"][0]["price"] == {"input_per_mtok": 1.0, "output_per_mtok": 2.0}


async def test_local_server_on_its_usual_port_is_detected(nats_server):
    state = UpstreamState(models=["local-llama"])
    async with running(state) as base:
        cfg = config(discovery={"enabled": True, "endpoints": {"vllm": base}, "timeout_s": 1.0})
        async with in_process(cfg, nats_server.url) as gw:
            listing = await _get(gw.base_url + "/models")
            owners = {m["id"]: m["owned_by"] for m in listing["data"]}
            assert owners.get("local-llama") == "local-vllm"
            reply = await gw.openai().chat.completions.with_raw_response.create(
                model="local-llama", messages=[{"role": "user", "content": "hello local"}]
            )
            assert reply.headers["x-switchman-provider"] == "local-vllm"
            assert reply.parse().choices[0].message.content == "You said: hello local"


async def test_extensions_come_from_the_provider_profiles(nats_server):
    async with running(UpstreamState()) as base:
        cfg = config(
            providers=[
                {"id": "or", "kind": "openai", "preset": "openrouter", "base_url": base, "models": ["x"]},
                {
                    "id": "claude",
                    "kind": "anthropic",
                    "base_url": base,
                    "api_key": "k",
                    "models": ["claude-x"],
                },
            ]
        )
        async with in_process(cfg, nats_server.url) as gw:
            ext = (await _get(gw.base_url + "/extensions"))["data"]
            fields = {(e["provider"], e["field"]) for e in ext}
            assert ("or", "provider") in fields
            assert ("claude", "thinking") in fields
            caps = {c["model"]: c for c in (await _get(gw.base_url + "/capabilities"))["data"]}
            assert caps["claude-x"]["context_window"] == 200_000
            assert caps["x"]["tools"] is True
