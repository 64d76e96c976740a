"""Capability profiles: what each provider accepts, as data.

One :class:`Profile` per preset. The adapters read it to drop or reject parameters
the provider does not support (never sent to fail upstream), and the ingress's
``/v1/capabilities`` and ``/v1/extensions`` are derived from the same entries
(the worker publishes them; see :mod:`services.worker.catalog`). A provider's
``capabilities:`` (:class:`Capabilities`) override its preset's profile. The
configuration checks presets and overrides against these (:mod:`libs.common.config`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# How the API key travels. "none": the server needs no key (local servers), but one
# that is configured is sent as a bearer token — vLLM, llama.cpp, LM Studio, TGI, ...
# can all be started with an API key.
Auth = Literal["bearer", "api-key", "x-api-key", "x-goog-api-key", "token", "none"]
_AUTH_HEADERS: dict[str, tuple[str, str]] = {
    "bearer": ("Authorization", "Bearer "),
    "none": ("Authorization", "Bearer "),
    "token": ("Authorization", "Token "),
    "api-key": ("api-key", ""),
    "x-api-key": ("x-api-key", ""),
    "x-goog-api-key": ("x-goog-api-key", ""),
}


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: str = "openai"
    base_url: str | None = None
    auth: Auth = "bearer"
    # Parameters the provider does not accept: dropped, or 400 when drop_params is off.
    # "n" here means one choice per request (max_n is then 1).
    unsupported: frozenset[str] = frozenset()
    streaming: bool = True
    tools: bool = True
    tool_choice: bool = True
    parallel_tool_calls: bool = True
    vision: bool = True
    json_mode: bool = True
    embeddings: bool = False
    completions: bool = False  # legacy /v1/completions
    # Sends a usage chunk when stream_options.include_usage is set; when False the
    # worker asks nothing and synthesizes the usage chunk itself.
    stream_usage: bool = True
    max_n: int = 128
    max_stop: int = 4
    max_top_logprobs: int = 20
    context_window: int | None = None
    max_output_tokens: int | None = None
    # max_completion_tokens is unknown to the server: send max_tokens instead.
    legacy_max_tokens: bool = False
    # Provider-specific request fields passed through untouched (see /v1/extensions).
    extensions: dict[str, str] = {}
    # Path under base_url for chat; Azure puts the deployment in it.
    chat_path: str = "/chat/completions"
    local: bool = False
    # Model list endpoint style: "openai" (/models), "ollama" (/api/tags), "" none.
    models_endpoint: str = "openai"

    def auth_header(self, key: str | None) -> tuple[str, str] | None:
        """The (name, value) header carrying ``key``; None without a key."""
        if not key:
            return None
        name, scheme = _AUTH_HEADERS[self.auth]
        return name, scheme + key


_Count = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class Capabilities(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A provider's ``capabilities:`` — overrides of its preset's :class:`Profile`.

    Every field mirrors the Profile field of the same name; None (the default) keeps
    the preset's value. What a preset is (name, kind, base URL, auth, local) is not
    overridable here: ``base_url``, ``api_key`` and ``headers`` are provider fields.
    """

    unsupported: frozenset[str] | None = None  # replaces the preset's list
    streaming: bool | None = None
    tools: bool | None = None
    tool_choice: bool | None = None
    parallel_tool_calls: bool | None = None
    vision: bool | None = None
    json_mode: bool | None = None
    embeddings: bool | None = None
    completions: bool | None = None
    stream_usage: bool | None = None
    # OpenAI's own bounds: n 1-128, top_logprobs 0-20 (the ingress never asks for more).
    max_n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_stop: _Count | None = None
    max_top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    context_window: _Count | None = None
    max_output_tokens: _Count | None = None
    legacy_max_tokens: bool | None = None
    extensions: dict[str, str] | None = None
    chat_path: Annotated[str, msgspec.Meta(pattern="^/")] | None = None
    models_endpoint: Literal["openai", "ollama", ""] | None = None


def _p(name: str, **kw: object) -> Profile:
    return Profile(name=name, **kw)  # type: ignore[arg-type]


# OpenAI request fields no native protocol has an equivalent for.
_OPENAI_ONLY = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
    }
)

PRESETS: dict[str, Profile] = {
    p.name: p
    for p in [
        _p("openai", base_url="https://api.openai.com/v1", embeddings=True, completions=True),
        _p(
            "azure",
            auth="api-key",
            embeddings=True,
            completions=True,
            chat_path="/openai/deployments/{model}/chat/completions",
            # Deployments are named by the operator; Azure's model list does not name them.
            models_endpoint="",
        ),
        _p(
            "groq",
            base_url="https://api.groq.com/openai/v1",
            unsupported=frozenset({"logprobs", "top_logprobs", "logit_bias"}),
            max_n=1,
            vision=False,
        ),
        _p("together", base_url="https://api.together.xyz/v1", embeddings=True, completions=True),
        _p(
            "fireworks",
            base_url="https://api.fireworks.ai/inference/v1",
            embeddings=True,
            completions=True,
        ),
        _p(
            "mistral",
            base_url="https://api.mistral.ai/v1",
            unsupported=frozenset({"logit_bias", "logprobs", "top_logprobs", "seed"}),
            embeddings=True,
            extensions={
                "safe_prompt": "Mistral: inject the safety system prompt",
                "random_seed": "Mistral seed",
            },
        ),
        _p(
            "deepseek",
            base_url="https://api.deepseek.com/v1",
            unsupported=frozenset({"logit_bias", "n"}),
            vision=False,
            max_n=1,
        ),
        _p(
            "openrouter",
            base_url="https://openrouter.ai/api/v1",
            completions=True,
            extensions={
                "provider": "OpenRouter provider routing preferences",
                "transforms": "OpenRouter prompt transforms",
                "models": "OpenRouter model fallback list",
                "route": "OpenRouter routing mode",
                "reasoning": "OpenRouter unified reasoning settings",
            },
        ),
        _p(
            "perplexity",
            base_url="https://api.perplexity.ai",
            unsupported=frozenset(
                {
                    "logit_bias",
                    "logprobs",
                    "top_logprobs",
                    "n",
                    "seed",
                    "tools",
                    "tool_choice",
                    "parallel_tool_calls",
                }
            ),
            tools=False,
            tool_choice=False,
            vision=False,
            max_n=1,
            extensions={
                "search_domain_filter": "Perplexity search domain filter",
                "search_recency_filter": "Perplexity search recency filter",
                "return_images": "Perplexity image results",
            },
        ),
        _p("xai", base_url="https://api.x.ai/v1", unsupported=frozenset({"logit_bias"}), embeddings=True),
        _p(
            "huggingface",
            base_url="https://router.huggingface.co/v1",
            unsupported=frozenset({"logit_bias", "n"}),
            max_n=1,
        ),
        _p(
            "huggingface-endpoint",
            unsupported=frozenset({"logit_bias", "n"}),
            max_n=1,
            max_top_logprobs=5,
        ),
        _p(
            "anyscale",
            base_url="https://api.endpoints.anyscale.com/v1",
            unsupported=frozenset({"logit_bias"}),
            embeddings=True,
        ),
        _p(
            "modal-vllm",
            embeddings=True,
            completions=True,
            extensions={
                "top_k": "vLLM sampling",
                "min_p": "vLLM sampling",
                "repetition_penalty": "vLLM sampling",
            },
        ),
        # Local servers
        _p(
            "ollama",
            base_url="http://127.0.0.1:11434/v1",
            auth="none",
            unsupported=frozenset({"tool_choice", "logit_bias", "user", "n", "logprobs", "top_logprobs"}),
            tool_choice=False,
            max_n=1,
            embeddings=True,
            completions=True,
            legacy_max_tokens=True,
            local=True,
            models_endpoint="ollama",
        ),
        _p(
            "lmstudio",
            base_url="http://127.0.0.1:1234/v1",
            auth="none",
            unsupported=frozenset({"logit_bias", "n"}),
            max_n=1,
            embeddings=True,
            completions=True,
            local=True,
        ),
        _p(
            "localai",
            base_url="http://127.0.0.1:8080/v1",
            auth="none",
            unsupported=frozenset({"logit_bias", "n"}),
            max_n=1,
            embeddings=True,
            completions=True,
            local=True,
        ),
        _p(
            "vllm",
            base_url="http://127.0.0.1:8000/v1",
            auth="none",
            embeddings=True,
            completions=True,
            local=True,
            extensions={
                "top_k": "vLLM sampling",
                "min_p": "vLLM sampling",
                "repetition_penalty": "vLLM sampling",
                "structured_outputs": "vLLM guided decoding",
                "guided_json": "vLLM guided decoding",
            },
        ),
        _p(
            "tgi",
            base_url="http://127.0.0.1:8080/v1",
            auth="none",
            unsupported=frozenset({"logit_bias", "n"}),
            max_n=1,
            max_top_logprobs=5,
            local=True,
            stream_usage=False,
            extensions={"tool_prompt": "TGI: prompt prepended to tool definitions"},
        ),
        _p(
            "textgen-webui",
            base_url="http://127.0.0.1:5000/v1",
            auth="none",
            unsupported=frozenset(
                {"logit_bias", "n", "tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs"}
            ),
            tools=False,
            tool_choice=False,
            vision=False,
            max_n=1,
            completions=True,
            embeddings=True,
            stream_usage=False,
            local=True,
        ),
        _p(
            # llama-server answers n choices (no cap of its own; beyond its slots they queue).
            "llamacpp",
            base_url="http://127.0.0.1:8081/v1",
            auth="none",
            unsupported=frozenset({"logit_bias"}),
            embeddings=True,
            completions=True,
            local=True,
            extensions={
                "top_k": "llama.cpp sampling",
                "min_p": "llama.cpp sampling",
                "grammar": "llama.cpp GBNF grammar",
            },
        ),
        # Native protocols
        _p(
            "anthropic",
            kind="anthropic",
            base_url="https://api.anthropic.com",
            auth="x-api-key",
            unsupported=_OPENAI_ONLY
            | {
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "n",
                "seed",
                "frequency_penalty",
                "presence_penalty",
                "reasoning_effort",
            },
            max_n=1,
            context_window=200_000,
            max_output_tokens=4096,
            extensions={"thinking": "Anthropic extended thinking", "top_k": "Anthropic top_k sampling"},
        ),
        _p(
            "gemini",
            kind="gemini",
            base_url="https://generativelanguage.googleapis.com/v1beta",
            auth="x-goog-api-key",
            unsupported=_OPENAI_ONLY | {"logit_bias"},
            max_n=8,
            max_stop=5,
            embeddings=True,
            context_window=1_048_576,
            extensions={"safety_settings": "Gemini safetySettings", "top_k": "Gemini topK"},
        ),
        _p(
            "cohere",
            kind="cohere",
            base_url="https://api.cohere.com",
            unsupported=_OPENAI_ONLY
            | {"logit_bias", "n", "top_logprobs", "parallel_tool_calls", "reasoning_effort"},
            max_n=1,
            max_stop=5,
            embeddings=True,
            context_window=128_000,
            extensions={
                "documents": "Cohere RAG documents",
                "safety_mode": "Cohere safety mode",
                "top_k": "Cohere k",
            },
        ),
        _p(
            "replicate",
            kind="replicate",
            base_url="https://api.replicate.com/v1",
            auth="bearer",
            unsupported=_OPENAI_ONLY
            | {
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "n",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "response_format",
                "reasoning_effort",
                "seed",
            },
            tools=False,
            tool_choice=False,
            vision=False,
            json_mode=False,
            max_n=1,
            models_endpoint="",
        ),
        _p(
            "sim",
            kind="sim",
            auth="none",
            embeddings=True,
            completions=True,
            context_window=32_768,
            models_endpoint="",
        ),
    ]
}


def profile_for(kind: str, preset: str | None, caps: Capabilities | None = None) -> Profile:
    """The profile of a configured provider: its preset (or its kind's), then ``caps``.

    Raises KeyError for an unknown preset (the config check names it first). A
    ``max_n`` above 1 makes ``n`` supported: an override never leaves the preset's
    "one choice" mark in place to drop ``n`` silently.
    """
    base = PRESETS[preset or kind]
    if caps is None:
        return base
    changes = {f: v for f in caps.__struct_fields__ if (v := getattr(caps, f)) is not None}
    if not changes:
        return base
    if changes.get("max_n", 1) > 1 and "unsupported" not in changes:
        changes["unsupported"] = base.unsupported - {"n"}
    return msgspec.structs.replace(base, **changes)


def presets_for(kind: str) -> list[str]:
    """The preset names a provider of ``kind`` may name, sorted."""
    return sorted(name for name, p in PRESETS.items() if p.kind == kind)
