"""`musicgen-local loop`: andreasjansson/musicgen-looper's predictions from the command line, its inputs as the
published schema has them (`-i prompt=... -i bpm=120`), each variation written as a file into a folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .cli_common import add_inputs, follow_loop, print_field_errors
from .settings import Settings


def add_parser(sub) -> None:
    p = sub.add_parser("loop", help="make loops locked to a tempo (andreasjansson/musicgen-looper's schema)")
    add_inputs(p, "an input of the looper's schema")
    p.add_argument("-o", "--output", default=".", help="the folder the variations are written to (default: here)")
    p.set_defaults(func=cmd_loop)


def cmd_loop(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from .engine import load_engine
    from .engine.api import LoopRequest
    from .looper import schema as looper_schema
    from .schema import parse_cli_pairs

    try:
        request = LoopRequest.from_input(
            looper_schema.parse_input(parse_cli_pairs(args.input, looper_schema.FIELDS_BY_NAME))
        )
    except ValidationError as exc:
        print_field_errors(exc)
        return 2
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="musicgen-") as scratch:
        engine = load_engine(settings.with_(warmup="none", data_dir=Path(scratch)))
        try:
            result = follow_loop(engine.submit(request))
        finally:
            engine.close()
    for filename, data in result.files().values():
        (folder / filename).write_bytes(data)
        print(folder / filename, file=sys.stdout)
    print(f"{len(result.outputs)} loop(s) of {result.num_samples / result.sample_rate:.2f} s, seed={result.seed}")
    return 0
