"""What the CLI's commands share: following a run in the terminal, and printing a schema's field errors."""

from __future__ import annotations

import sys
from pathlib import Path


def print_field_errors(exc) -> None:
    for err in exc.errors():
        print(f"error: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", file=sys.stderr)


def follow_loop(run):
    """A loop's run to its end, shown as any other; its result (the files are the caller's to write)."""
    return follow(run, None)


def follow(run, out: Path | None, growing=None):
    """Show a run's progress and logs, write its file (as it grows, with a GrowingWav; not when `out` is None);
    raise its error if it fails."""
    from tqdm import tqdm

    from .engine.api import Audio, Done, Failed, Log, Progress, terminal_error

    bar = tqdm(unit="step", desc="generating", leave=False, delay=0.5)  # a failure at once draws no bar
    for event in run:
        if isinstance(event, Progress):
            bar.total, bar.n = event.total, event.done
            bar.refresh()
        elif isinstance(event, Log):
            tqdm.write(event.line, file=sys.stderr)
        elif isinstance(event, Audio):
            tqdm.write(f"segment {event.index}: {event.start_s:.2f} s", file=sys.stderr)
            if growing is not None:
                growing.append(event.wav)
        elif isinstance(event, Done):
            bar.close()
            if growing is not None:
                growing.finish(event.result.audio, out)
            elif out is not None:
                out.write_bytes(event.result.audio)
            return event.result
        elif isinstance(event, Failed):
            bar.close()
            raise terminal_error(event)
    bar.close()
    raise terminal_error(event)


def add_inputs(parser, help: str) -> None:
    """The `-i KEY=VALUE` option every command that takes a schema's inputs has (repeatable)."""
    parser.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE", help=help)
