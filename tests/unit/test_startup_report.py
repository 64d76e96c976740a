"""What start-up prints (services/startup.py) and the model view it reads (services/ingress/models.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from libs.common.config import parse
from libs.common.contracts import Catalog, ModelInfo
from services import startup
from services.ingress.models import ModelView, allowed_by

BASE = {
    "env_providers": False,
    "discovery": {"enabled": True, "endpoints": {"ollama": "http://127.0.0.1:11434/v1"}},
}


def view(**data) -> ModelView:
    return ModelView(parse({**BASE, **data}, env={}))


def catalog(provider: str, *models: str, worker: str = "w1") -> Catalog:
    return Catalog(
        worker=worker, models=[ModelInfo(id=m, provider=provider, owned_by=provider) for m in models]
    )


def test_allowed_by_globs():
    assert allowed_by(None) is None and allowed_by(["*"]) is None
    ok = allowed_by(["gpt-*", "team/*"])
    assert ok is not None and ok("gpt-4o") and ok("team/x") and not ok("claude") and not ok("GPT-4o")


def test_listing_filters_by_key_and_counts_providers():
    v = view()
    v.add(catalog("local-ollama", "llama3", "qwen2"))
    assert v.names() == ["llama3", "qwen2", "sim-cheap", "sim-fast", "sim-smart"]
    assert v.names(allowed_by(["sim-*"])) == ["sim-cheap", "sim-fast", "sim-smart"]
    assert [m["id"] for m in v.list(allowed_by(["llama*"]))["data"]] == ["llama3"]
    assert v.providers() == {"sim-fast": 1, "sim-cheap": 1, "sim-smart": 1, "local-ollama": 2}
    assert v.updates == 1 and v.workers == {"w1"}


def test_report_lines():
    v = view()
    v.add(catalog("local-ollama", "llama3"))
    cfg = parse({**BASE, "nats_url": "nats://127.0.0.1:4222"}, env={})
    out = startup.lines(v, cfg, "http://127.0.0.1:8080/v1", Path("/d/nats-server.log"), True)
    text = "\n".join(out)
    assert out[0] == "switchman: serving the OpenAI API on http://127.0.0.1:8080/v1"
    assert "models (4): llama3, sim-cheap, sim-fast, sim-smart" in text
    assert "local-ollama (1)" in text
    assert "local servers: ollama at http://127.0.0.1:11434/v1" in text
    assert "NATS: nats://127.0.0.1:4222 (embedded; log /d/nats-server.log)" in text
    assert len(out) <= 8


def test_report_shortens_long_lists_and_says_when_no_catalog_came():
    v = view(
        sim_models=False,
        providers=[{"id": "big", "kind": "openai", "models": [f"m{i:02}" for i in range(40)]}],
    )
    cfg = parse({**BASE, "discovery": {"enabled": False}}, env={})
    out = startup.lines(v, cfg, "http://127.0.0.1:8080/v1", None, False)
    text = "\n".join(out)
    assert "(+28 more: GET /v1/models)" in text and "m39" not in text
    assert "no worker catalog yet" in text and "local servers: discovery off" in text


async def test_settled_waits_for_catalogs_bounded():
    v = view()
    assert await startup.settled(v, wait_s=0.3, quiet_s=0.05) is False
    asyncio.get_running_loop().call_later(0.1, v.add, catalog("local-ollama", "llama3"))
    assert await startup.settled(v, wait_s=2.0, quiet_s=0.05) is True
    assert "llama3" in v.names()
