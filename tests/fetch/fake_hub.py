"""A Hugging Face hub on 127.0.0.1 that answers the way huggingface_hub 2.4.0 expects.

What huggingface_hub's `hf_hub_download` does (file_download.py, utils/_http.py), and what we serve:
- `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` (metadata): it follows redirects only while they stay on
  the same origin, then reads `X-Repo-Commit`, `X-Linked-Etag` (else `ETag`), `X-Linked-Size` (else
  `Content-Length`) and `Location`.
  - small (git) files: 200, `ETag` = git blob sha1, `Content-Length`.
  - large (LFS) files: 302 to a CDN on another origin, `X-Linked-Etag` = sha256, `X-Linked-Size`.
  - renamed repos (`t5-base` is `google-t5/t5-base` today): 307 with a relative `Location`.
  - unknown repo: 401 + `X-Error-Code: RepoNotFound`; unknown file: 404 + `X-Error-Code: EntryNotFound`.
- `GET` of the resolved location, with `Range: bytes=N-` when it resumes after a dropped connection.

Files come from a weights dir written by musicgen_local.testing.tiny (hub/models--org--name/snapshots/*/file).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".th")
RENAMED = {"t5-base": "google-t5/t5-base"}


@dataclass
class Served:
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    server: str  # "hub" or "cdn"


@dataclass
class FakeHub:
    repos: dict[str, dict[str, Served]]
    seen: list[Seen] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before dropping, once
    url: str = ""
    cdn_url: str = ""

    @classmethod
    def from_weights(cls, weights_dir: Path) -> FakeHub:
        repos: dict[str, dict[str, Served]] = {}
        for repo_dir in sorted((weights_dir / "hub").glob("models--*")):
            repo = repo_dir.name.removeprefix("models--").replace("--", "/")
            repo = RENAMED.get(repo, repo)
            files = repos.setdefault(repo, {})
            for path in sorted(repo_dir.glob("snapshots/*/*")):
                files[path.name] = Served(path.read_bytes(), path.name.endswith(LFS_SUFFIXES))
        return cls(repos)

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(RENAMED.get(repo, repo), {})[filename] = Served(data, filename.endswith(LFS_SUFFIXES))

    def serve_wrong_bytes(self, repo: str, filename: str) -> None:
        """Keep announcing the file's sha256 and size but send zeros instead: a corrupt mirror or CDN."""
        good = self.repos[repo][filename]
        bad = Served(bytes(len(good.data)), good.lfs)
        bad.__dict__["sha256"] = good.sha256  # seeds the cached_property: metadata and CDN path stay the same
        self.repos[repo][filename] = bad

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def by_sha256(self, sha: str) -> tuple[str, Served] | None:
        for files in self.repos.values():
            for name, served in files.items():
                if served.sha256 == sha:
                    return name, served
        return None

    def gets(self, server: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and (server is None or s.server == server)]

    def __enter__(self) -> Self:
        self._servers = [_serve(self, "hub"), _serve(self, "cdn")]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


def _serve(hub: FakeHub, role: str) -> ThreadingHTTPServer:
    handler = type(f"{role}Handler", (_Handler,), {"hub": hub, "role": role})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.seen.append(Seen(self.command, path, {k.lower(): v for k, v in self.headers.items()}, self.role))
        if self.role == "cdn":
            return self._cdn(path.removeprefix("/cdn/"), body)
        repo, sep, rest = path.lstrip("/").partition("/resolve/")
        if not sep:
            return self._reply(404, {})
        if repo in RENAMED:
            return self._reply(307, {"Location": f"/{RENAMED[repo]}/resolve/{rest}"})
        _revision, _, filename = rest.partition("/")
        if repo not in self.hub.repos:
            return self._reply(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        commit = {"X-Repo-Commit": self.hub.commit(repo)}
        served = self.hub.repos[repo].get(filename)
        if served is None:
            return self._reply(404, {**commit, "X-Error-Code": "EntryNotFound"})
        if served.lfs:
            return self._reply(
                302,
                {
                    **commit,
                    "Location": f"{self.hub.cdn_url}/cdn/{served.sha256}?signature=x",
                    "ETag": f'"{served.git_sha1}"',
                    "X-Linked-Etag": f'"{served.sha256}"',
                    "X-Linked-Size": str(len(served.data)),
                },
            )
        self._send_file(filename, served.data, {**commit, "ETag": f'"{served.git_sha1}"'}, body)

    def _cdn(self, sha: str, body: bool) -> None:
        found = self.hub.by_sha256(sha)
        if found is None:
            return self._reply(404, {})
        filename, served = found
        self._send_file(filename, served.data, {"ETag": f'"{sha}"'}, body)

    def _send_file(self, filename: str, data: bytes, headers: dict[str, str], body: bool) -> None:
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        self.send_response(206 if start else 200)
        for key, value in {**headers, "Content-Length": str(len(payload)), "Accept-Ranges": "bytes"}.items():
            self.send_header(key, value)
        self.end_headers()
        if not body:
            return
        cut = self.hub.cut_after.pop(filename, None)
        if cut is not None:
            # Promise the whole file, send part of it, drop the connection: what a flaky network does.
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)

    def _reply(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(key, value)
        self.end_headers()
