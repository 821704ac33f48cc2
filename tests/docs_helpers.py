"""The README and the manual in docs/ as the tests read them: a page, one section of it, its code blocks.

Tests run the snippets users copy, so they find them by the headings users read; a heading that moves or
disappears fails with the page's name rather than running the wrong snippet.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = "```"


def page(name: str) -> str:
    """README.md or a page of docs/, named by its path from the repository root."""
    return (ROOT / name).read_text()


def headings(text: str) -> list[tuple[int, str]]:
    """Every Markdown heading outside code blocks: (level, title)."""
    found, in_code = [], False
    for line in text.splitlines():
        if line.startswith(FENCE):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#{1,6}) (.+)", line)):
            found.append((len(match.group(1)), match.group(2).strip()))
    return found


def section(name: str, heading: str) -> str:
    """The text under `heading` (the whole heading line, as "## Streaming") up to the next heading of its level
    or above; a `#` at the start of a line inside a code block is not a heading."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, in_code, kept = page(name).splitlines(keepends=True), False, None
    for line in lines:
        if line.startswith(FENCE):
            in_code = not in_code
        if kept is None:
            if line.rstrip("\n") == heading:
                kept = []
            continue
        if not in_code and (match := re.match(r"(#{1,6}) ", line)) and len(match.group(1)) <= level:
            break
        kept.append(line)
    assert kept is not None, f"{name} has no heading {heading!r}"
    return "".join(kept)


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of one language, in order."""
    return re.findall(rf"^{FENCE}{language}\n(.*?)^{FENCE}", text, re.S | re.M)
