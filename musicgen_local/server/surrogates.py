"""Lone UTF-16 surrogates: JSON may spell them (`"\\ud800"`) and Python's json accepts them, but they
are not Unicode characters, so no response holding one can be encoded as UTF-8.

Requests holding one are refused at create (`find`, a 422 naming the field); anything read back
from storage is cleaned (`scrub`), so a row written before that check (or by hand) still renders.
"""

from __future__ import annotations

import re
from typing import Any

_LONE = re.compile("[\ud800-\udfff]")  # json.loads joins a valid pair into one character


def printable(text: str) -> str:
    """`text` with each surrogate written as `\\udXXX`, safe to put in an error message."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iterative: a deep one must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def find(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The location of the first string or key holding a lone surrogate, or None."""
    if isinstance(value, str):
        return path if _LONE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _LONE.search(key):
            return (*path, printable(key))
        if (found := find(item, (*path, key))) is not None:
            return found
    return None


def scrub(value: Any) -> Any:
    """`value` with every lone surrogate (in strings and keys) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value
