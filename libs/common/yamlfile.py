"""Reading a YAML file strictly, with mistakes named by file and line.

Safe YAML only; a key given twice in one mapping is an error (PyYAML would keep the
last one silently); a file that is not UTF-8, not readable, or a directory is an
error naming the file. Every error is one :class:`YamlError` with a one-line message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


class YamlError(Exception):
    """The file cannot be read as YAML; the message names the file (and line)."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read(path: str | os.PathLike[str]) -> Any:
    """The YAML document in ``path`` (None for an empty file)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise YamlError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise YamlError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlError(f"{path}: invalid YAML: nested too deeply") from None
