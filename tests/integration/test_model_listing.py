"""GET /v1/models, /v1/models/{id} and /v1/capabilities show a key only the models it may use."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.gateway import config, in_process, openai_provider

KEYS = [
    {"key": "sk-all", "name": "everything"},
    {"key": "sk-gpt", "name": "gpt-team", "allow_models": ["gpt-*", "emu/*"]},
]


@pytest.fixture
async def gw(nats_server, upstream):
    _, base = upstream
    cfg = config(
        providers=[openai_provider("emu", base, ["gpt-4o-mini", "text-embedding-3-small"])],
        models=[{"name": "cheap", "targets": [{"provider": "emu", "model": "gpt-4o-mini"}]}],
        keys=KEYS,
    )
    async with in_process(cfg, nats_server.url) as gw:
        yield gw


async def test_each_key_lists_only_its_models(gw):
    async with gw.openai(api_key="sk-all") as full, gw.openai(api_key="sk-gpt") as gpt:
        everything = {m.id for m in (await full.models.list()).data}
        assert everything == {"cheap", "gpt-4o-mini", "text-embedding-3-small"}
        assert {m.id for m in (await gpt.models.list()).data} == {"gpt-4o-mini"}

        assert (await full.models.retrieve("cheap")).id == "cheap"
        assert (await gpt.models.retrieve("gpt-4o-mini")).owned_by == "emu"
        assert (await gpt.models.retrieve("emu/text-embedding-3-small")).id == "emu/text-embedding-3-small"
        for hidden in ("cheap", "text-embedding-3-small"):
            with pytest.raises(openai.NotFoundError) as e:
                await gpt.models.retrieve(hidden)
            assert e.value.body["code"] == "model_not_found"  # as absent as an unknown model
        # What it can list, it can use; what it cannot, it is refused.
        await gpt.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            await gpt.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])


async def test_capabilities_follow_the_key(gw):
    async with aiohttp.ClientSession() as s:
        got = {}
        for key in ("sk-all", "sk-gpt"):
            async with s.get(f"{gw.base_url}/capabilities", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200
                got[key] = {m["model"] for m in (await r.json())["data"]}
    assert {"cheap", "gpt-4o-mini", "emu/gpt-4o-mini"} <= got["sk-all"]
    assert got["sk-gpt"] == {"gpt-4o-mini", "emu/gpt-4o-mini", "emu/text-embedding-3-small"}
