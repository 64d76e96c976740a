#!/usr/bin/env python3
"""Extract the OpenAI API schemas Switchman's tests validate against.

Run by hand whenever the upstream spec changes::

    .venv/bin/python tests/data/extract_openai_schemas.py /path/to/openai-openapi.yaml

It loads the official OpenAPI document, takes the root schemas in ``ROOTS`` plus
everything they reference transitively, converts them to a standalone JSON Schema
(draft 2020-12) document and writes ``tests/data/openai_schemas.json`` next to this
script (compact, sorted keys, so regenerating from the same spec gives identical bytes).

Conversions:

* OpenAPI 3.0 ``nullable: true`` (still used by the 3.1 spec in places) becomes
  2020-12: ``type: X`` -> ``type: [X, "null"]``, an ``enum`` gets ``null`` appended,
  and a node that composes ($ref / oneOf / anyOf / allOf) is wrapped as
  ``anyOf: [node, {"type": "null"}]``. The ``nullable`` key is always dropped.
* ``#/components/schemas/X`` references become ``#/$defs/X``.
* Pure annotations that never affect validation (``description``, ``example``,
  ``examples``, ``x-oaiMeta``) are dropped to keep the file small.

The walk is schema-aware: keys under ``properties``/``$defs``/... are property names
(the spec has properties called ``description``) and ``enum``/``default``/``const``
values are data, so neither is rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Error",
)

OUT_PATH = Path(__file__).resolve().parent / "openai_schemas.json"
SRC_PREFIX = "#/components/schemas/"
DST_PREFIX = "#/$defs/"

# Keywords whose value is one subschema.
_SCHEMA_KW = frozenset(
    {
        "additionalProperties",
        "additionalItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "items",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
    }
)
# Keywords whose value is a list of subschemas.
_SCHEMA_LIST_KW = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
# Keywords whose value maps names to subschemas.
_SCHEMA_MAP_KW = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# Annotations dropped from the output (no effect on validation).
_DROP_KW = frozenset({"description", "example", "examples", "x-oaiMeta"})
_COMPOSITION_KW = ("$ref", "oneOf", "anyOf", "allOf")


def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 - safe loader


def _ref_name(ref: str) -> str:
    if not ref.startswith(SRC_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r} (only {SRC_PREFIX}* is handled)")
    return ref[len(SRC_PREFIX) :]


def collect_refs(node: Any, out: set[str]) -> None:
    """Names of component schemas referenced from ``node`` (schema-aware walk)."""
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        out.add(_ref_name(ref))
    mapping = (
        (node.get("discriminator") or {}).get("mapping")
        if isinstance(node.get("discriminator"), dict)
        else None
    )
    if isinstance(mapping, dict):
        out.update(_ref_name(v) for v in mapping.values() if isinstance(v, str))
    for key, value in node.items():
        if key in _SCHEMA_KW:
            if isinstance(value, list):  # OpenAPI 3.0 tuple-style items
                for sub in value:
                    collect_refs(sub, out)
            else:
                collect_refs(value, out)
        elif key in _SCHEMA_LIST_KW and isinstance(value, list):
            for sub in value:
                collect_refs(sub, out)
        elif key in _SCHEMA_MAP_KW and isinstance(value, dict):
            for sub in value.values():
                collect_refs(sub, out)


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> list[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise KeyError(f"schema {name!r} not found in components.schemas")
        seen.add(name)
        refs: set[str] = set()
        collect_refs(schemas[name], refs)
        todo.extend(sorted(refs - seen))
    return sorted(seen)


def convert(node: Any) -> Any:
    """Return a converted deep copy of a schema node (see module docstring)."""
    if isinstance(node, bool) or not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KW or key == "nullable":
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = DST_PREFIX + _ref_name(value)
        elif key == "discriminator" and isinstance(value, dict):
            disc = dict(value)
            if isinstance(disc.get("mapping"), dict):
                disc["mapping"] = {k: DST_PREFIX + _ref_name(v) for k, v in disc["mapping"].items()}
            out[key] = disc
        elif key in _SCHEMA_KW:
            out[key] = [convert(v) for v in value] if isinstance(value, list) else convert(value)
        elif key in _SCHEMA_LIST_KW and isinstance(value, list):
            out[key] = [convert(v) for v in value]
        elif key in _SCHEMA_MAP_KW and isinstance(value, dict):
            out[key] = {k: convert(v) for k, v in value.items()}
        else:
            out[key] = value  # data (enum/default/const/...) or an unknown keyword: keep verbatim
    if node.get("nullable") is True:
        out = _make_nullable(out)
    return out


def _make_nullable(node: dict[str, Any]) -> dict[str, Any]:
    if any(k in node for k in _COMPOSITION_KW):
        # Composition (possibly alongside type): only a wrapper keeps the semantics exact.
        return {"anyOf": [node, {"type": "null"}]}
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if "null" not in types:
            types = [*types, "null"]
        node["type"] = types
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    if "enum" in node:
        if None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    if "const" in node:
        return {"anyOf": [node, {"type": "null"}]}
    return node  # no constraint at all: null already valid


def _check_refs(node: Any, defs: dict[str, Any], where: str) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(DST_PREFIX) or ref[len(DST_PREFIX) :] not in defs:
                raise ValueError(f"dangling $ref {ref!r} in {where}")
        for value in node.values():
            _check_refs(value, defs, where)
    elif isinstance(node, list):
        for value in node:
            _check_refs(value, defs, where)


def _count_nullable(node: Any) -> int:
    """Schema-aware count of ``nullable: true`` keywords (for the summary line)."""
    if not isinstance(node, dict):
        return 0
    n = 1 if node.get("nullable") is True else 0
    for key, value in node.items():
        if key in _SCHEMA_KW:
            n += sum(_count_nullable(v) for v in value) if isinstance(value, list) else _count_nullable(value)
        elif key in _SCHEMA_LIST_KW and isinstance(value, list):
            n += sum(_count_nullable(v) for v in value)
        elif key in _SCHEMA_MAP_KW and isinstance(value, dict):
            n += sum(_count_nullable(v) for v in value.values())
    return n


def build(spec_path: Path) -> dict[str, Any]:
    raw = spec_path.read_bytes()
    spec = load_spec(spec_path)
    schemas = spec["components"]["schemas"]
    names = closure(schemas, ROOTS)
    defs = {name: convert(schemas[name]) for name in names}
    _check_refs(defs, defs, "$defs")
    leftover = [n for n, d in defs.items() if _count_nullable(d)]
    if leftover:
        raise AssertionError(f"nullable survived conversion in {leftover}")
    info = spec.get("info") or {}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "x-roots": list(ROOTS),
        "x-source": {
            "file": spec_path.name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "openapi": spec.get("openapi"),
            "info.title": info.get("title"),
            "info.version": info.get("version"),
            "nullable_rewritten": sum(_count_nullable(schemas[n]) for n in names),
            "generator": "tests/data/extract_openai_schemas.py",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="path to openai-openapi.yaml")
    parser.add_argument("-o", "--out", type=Path, default=OUT_PATH, help=f"output (default: {OUT_PATH})")
    args = parser.parse_args(argv)

    doc = build(args.spec)
    try:  # sanity-check the result when jsonschema is available (it is in the test extra)
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(doc)
    except ImportError:
        print("warning: jsonschema not installed; output not meta-validated", file=sys.stderr)

    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    args.out.write_text(text + "\n", encoding="utf-8")
    src = doc["x-source"]
    print(
        f"wrote {args.out} ({len(text)} bytes): {len(doc['$defs'])} schemas, "
        f"{src['nullable_rewritten']} nullable rewritten, spec {src['info.version']} sha256 {src['sha256'][:12]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
