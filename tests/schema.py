"""Validate payloads against the official OpenAI schemas shipped in tests/data.

``tests/data/openai_schemas.json`` is generated from the OpenAI OpenAPI spec by
``tests/data/extract_openai_schemas.py`` (see that file). Schema names are the spec's
component names, e.g. ``CreateChatCompletionResponse`` or ``Error``.

    from tests.schema import validate, validate_sse_chunks, assert_no_unknown_top_level

    validate("CreateChatCompletionResponse", body)        # AssertionError listing every error
    validate_sse_chunks(chunks)                           # each chunk + stream-level rules
    assert_no_unknown_top_level("CreateChatCompletionResponse", body)
"""

from __future__ import annotations

import functools
import json
import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "openai_schemas.json"
_MAX_MSG = 300
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxdict = 6
_repr.maxlist = 6
_repr.maxlevel = 3


@functools.cache
def schema_document() -> dict[str, Any]:
    """The whole generated document (``$defs``, ``x-source``, ...), loaded once."""
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        return json.load(fh)


def schema_names() -> list[str]:
    return sorted(schema_document()["$defs"])


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A cached validator whose root is ``#/$defs/<name>``."""
    doc = schema_document()
    if name not in doc["$defs"]:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(schema_names())}")
    return Draft202012Validator({"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{name}"})


def _path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MSG else text[: _MAX_MSG - 3] + "..."


def closest_error(context: list[ValidationError]) -> ValidationError | None:
    """The most informative error among the failed branches of a oneOf/anyOf.

    Prefers the branch that failed least "structurally" (not a wrong type at its root, not a
    mismatched discriminator such as ``role``), then the deepest error inside it, recursing
    into nested oneOf/anyOf.
    """
    if not context:
        return None
    branches: dict[Any, list[ValidationError]] = {}
    for e in context:
        branches.setdefault(e.relative_schema_path[0] if e.relative_schema_path else None, []).append(e)

    def branch_key(errs: list[ValidationError]) -> tuple[bool, bool, int]:
        wrong_type = any(e.validator == "type" and not e.relative_path for e in errs)
        wrong_discriminator = any(
            e.validator in ("enum", "const") and len(e.relative_path) == 1 for e in errs
        )
        return (wrong_type, wrong_discriminator, len(errs))

    best_branch = min(branches.values(), key=branch_key)
    leaf = min(
        best_branch,
        key=lambda e: (e.validator == "type" and not e.relative_path, -len(e.absolute_path), e.message),
    )
    if leaf.context:
        return closest_error(leaf.context) or leaf
    return leaf


def _describe(err: ValidationError) -> str:
    if err.validator in ("oneOf", "anyOf") and isinstance(err.instance, (dict, list)):
        msg = f"{_repr.repr(err.instance)} matches {'none' if err.context else 'more than one'} of the {err.validator} branches"
    else:
        msg = err.message
    line = f"{_path(err.absolute_path)}: {_clip(msg)} (schema {_path(err.absolute_schema_path)})"
    if err.context:
        closest = closest_error(err.context)
        if closest is not None:
            line += f"\n      closest branch: {_path(closest.absolute_path)}: {_clip(closest.message)}"
    return line


def errors(name: str, obj: Any) -> list[str]:
    """Readable validation errors (empty when valid), sorted by instance path."""
    errs = sorted(
        validator(name).iter_errors(obj), key=lambda e: ([str(p) for p in e.absolute_path], e.message)
    )
    return [_describe(e) for e in errs]


def validate(name: str, obj: Any) -> None:
    """Raise AssertionError listing every error if ``obj`` does not match schema ``name``."""
    errs = errors(name, obj)
    if errs:
        listing = "\n".join(f"  - {e}" for e in errs)
        raise AssertionError(f"{name}: {len(errs)} schema error(s) for {_repr.repr(obj)}\n{listing}")


# --------------------------------------------------------------------------- stream rules


def validate_sse_chunks(
    chunks: list[dict[str, Any]], *, name: str = "CreateChatCompletionStreamResponse"
) -> None:
    """Validate a decoded chat-completion stream (the JSON of each ``data:`` line, without ``[DONE]``).

    Besides validating every chunk against the schema it checks what OpenAI clients rely on:

    * at least one chunk; all chunks share ``id``, ``created`` and ``model``;
    * ``choices: []`` only on the usage chunk (``usage`` not null), which is the last chunk;
    * per choice index: at most one non-null ``finish_reason``, and nothing after it;
    * per (choice, tool-call index): the first fragment carries ``id`` and ``function.name``,
      later fragments don't change the ``id``.
    """
    problems: list[str] = []
    if not isinstance(chunks, list) or not chunks:
        raise AssertionError("stream has no chunks")
    for i, chunk in enumerate(chunks):
        for e in errors(name, chunk):
            problems.append(f"chunk {i}: {e}")
    if problems:
        raise AssertionError(
            f"{len(problems)} schema error(s) in stream:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    first = chunks[0]
    finished: dict[int, int] = {}  # choice index -> chunk number of its finish_reason
    tool_ids: dict[tuple[int, int], str] = {}
    for i, chunk in enumerate(chunks):
        for key in ("id", "created", "model"):
            if chunk.get(key) != first.get(key):
                problems.append(
                    f"chunk {i}: {key}={chunk.get(key)!r} differs from first chunk's {first.get(key)!r}"
                )
        if not chunk["choices"]:
            if chunk.get("usage") is None:
                problems.append(f"chunk {i}: choices is [] but usage is missing/null")
            if i != len(chunks) - 1:
                problems.append(f"chunk {i}: usage-only chunk (choices []) is not the last chunk")
        for choice in chunk["choices"]:
            idx = choice["index"]
            if idx in finished:
                problems.append(
                    f"chunk {i}: choice {idx} continues after its finish_reason in chunk {finished[idx]}"
                )
            if choice.get("finish_reason") is not None:
                finished[idx] = i
            for tc in choice["delta"].get("tool_calls") or []:
                key = (idx, tc["index"])
                fn = tc.get("function") or {}
                if key not in tool_ids:
                    if not tc.get("id") or not fn.get("name"):
                        problems.append(
                            f"chunk {i}: first fragment of tool call {key} lacks id or function.name"
                        )
                    tool_ids[key] = tc.get("id") or ""
                elif tc.get("id") and tc["id"] != tool_ids[key]:
                    problems.append(
                        f"chunk {i}: tool call {key} changes id {tool_ids[key]!r} -> {tc['id']!r}"
                    )
    if problems:
        raise AssertionError(
            f"{len(problems)} stream rule violation(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


# --------------------------------------------------------------------------- allow-list


@functools.cache
def top_level_properties(name: str) -> frozenset[str]:
    """Property names allowed at the top level of schema ``name`` (following $ref and allOf)."""
    defs = schema_document()["$defs"]

    def collect(node: Mapping[str, Any], seen: frozenset[str]) -> set[str]:
        props = set(node.get("properties") or ())
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = ref.removeprefix("#/$defs/")
            if target not in seen:
                props |= collect(defs[target], seen | {target})
        for sub in node.get("allOf") or ():
            props |= collect(sub, seen)
        return props

    return frozenset(collect(defs[name], frozenset({name})))


def assert_no_unknown_top_level(
    name: str, obj: Mapping[str, Any], allowed_extra: Iterable[str] = frozenset({"x_switchman"})
) -> None:
    """Fail on top-level keys that schema ``name`` does not declare (the spec itself allows extras)."""
    if not isinstance(obj, Mapping):
        raise AssertionError(f"{name}: expected an object, got {type(obj).__name__}")
    known = top_level_properties(name) | set(allowed_extra)
    unknown = sorted(set(obj) - known)
    if unknown:
        raise AssertionError(f"{name}: unknown top-level key(s) {unknown}; allowed: {sorted(known)}")
