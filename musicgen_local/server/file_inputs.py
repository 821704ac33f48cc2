"""A run's file input over HTTP (`input_audio`, a training's `dataset_path`): what the run keeps, and what the engine
reads.

- one of this server's own `/v1/files` URLs: kept as given; the engine reads the uploaded file;
- an http(s) URL: kept as given; the engine downloads it, within its limits;
- a `data:` URI: its bytes are kept once, as an uploaded file (files.py), and the run keeps that file's URL: a
  record, a webhook body and a list page carry a reference, never the bytes (30 creates with a 45 MiB data: URI
  made a 2.9 GB database and 1.35 GB list pages before);
- anything else (a path on this server, file://) is refused, so that no request can read this server's files.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from .files import FileStore
from .run_routes import FieldsInvalid

_FILE_URL = re.compile(r"/v1/files/([a-z0-9]+)(?:/download)?$")
# the setting that caps each input given as a data: URI (the body limit caps them all)
LIMITS = {
    "input_audio": ("max_input_bytes", "MUSICGEN_MAX_INPUT_BYTES"),
    "dataset_path": ("max_dataset_bytes", "MUSICGEN_MAX_DATASET_BYTES"),
}


class FileInput(NamedTuple):
    kept: str  # what the run's `input` holds
    local: str  # what the engine reads: a path on this server, or the URL it downloads


async def take(request: Request, url: str, name: str = "input_audio") -> FileInput:
    files: FileStore = request.app.state.files
    match = _FILE_URL.search(url.split("?")[0])
    if match:
        found = files.get(match.group(1))
        if found is None:
            raise _refused(name, f"no file {match.group(1)!r} was uploaded to this server")
        return FileInput(url, str(found[1]))
    if url.startswith(("http://", "https://")):
        return FileInput(url, url)
    if url.startswith("data:"):
        field, setting = LIMITS[name]
        limit = getattr(request.app.state.settings, field)
        try:
            record = await run_in_threadpool(files.keep_data_uri, url, name, limit, setting)
        except UserError as exc:
            raise _refused(name, str(exc)) from None
        return FileInput(f"{request.base_url}v1/files/{record['id']}", str(files.path_of(record)))
    raise _refused(name, "must be an http(s) URL, a data: URI, or a file uploaded with POST /v1/files")


def _refused(name: str, message: str) -> FieldsInvalid:
    return FieldsInvalid([{"loc": (name,), "type": "url_scheme", "msg": message}], ("input",))
