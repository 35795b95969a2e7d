"""A small, deterministic YAML writer for manifests: block style, keys in the order given.

Manifests hold only mappings, lists, strings, integers, floats, booleans and null, so a
writer of 50 lines replaces a YAML library in the engine's dependencies. A string is written
bare only when it cannot be read back as anything else (``true``, ``1.0``, ``null``, ``"8000"``
stay quoted); every other string is quoted the JSON way, which YAML reads as a double-quoted
scalar, escapes included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*\Z")
#: YAML 1.1 reads these bare words as booleans or null (kubectl's parser is YAML 1.1-ish).
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        if _BARE.match(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _lines(value: Any, indent: str) -> list[str]:
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            head = f"{indent}{scalar(str(key))}:"
            out += _member(head, item, indent)
        return out
    out = []
    for item in value:
        # "- " then the item's first line; its other lines keep the list's indent + 2.
        out += _member(f"{indent}-", item, indent, in_list=True)
    return out


def _member(head: str, item: Any, indent: str, in_list: bool = False) -> list[str]:
    if _is_block(item) and item:
        inner = _lines(item, indent + "  ")
        if in_list and isinstance(item, Mapping):
            return [f"{head} {inner[0].lstrip()}", *inner[1:]]
        return [head, *inner]
    if isinstance(item, Mapping):
        return [f"{head} {{}}"]
    if _is_block(item):
        return [f"{head} []"]
    return [f"{head} {scalar(item)}"]


def _is_block(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence)
                                          and not isinstance(value, str | bytes))


def dump(document: Mapping[str, Any]) -> str:
    """One YAML document (a Kubernetes object) as text ending with a newline."""
    return "\n".join(_lines(document, "")) + "\n"
