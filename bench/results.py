"""bench/RESULTS.md is one file in parts (`# Part N: ...`); each benchmark appends to the end of its own part."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def append(part: str, report: str, path: Path = RESULTS) -> None:
    """Insert `report` at the end of the part whose heading starts with `part` (created at the end
    of the file when missing), before the next part's heading."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.startswith(part)), None)
    if start is None:
        path.write_text("".join(lines) + f"\n{part}\n{report}")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# Part ")), len(lines))
    path.write_text("".join(lines[:end]).rstrip("\n") + "\n" + report.rstrip("\n") + "\n\n" + "".join(lines[end:]))
