"""A local stand-in for the Hugging Face Hub, for tests: it serves model folders over the part of
the Hub's HTTP API that huggingface_hub's snapshot_download and hf_hub_download use, so a client
pointed at it with HF_ENDPOINT downloads as it would from huggingface.co.

Routes (as huggingface_hub 2.x calls them; hf_api.py repo_info and list_repo_tree,
file_download.py get_hf_file_metadata, utils/_http.py hf_raise_for_status for the error codes):

    GET  /api/models/{repo}[/revision/{rev}]         {"id", "sha", "siblings", "gated", "private"}
    GET  /api/models/{repo}/auth-check               200 when the token may read the repo
    GET  /api/models/{repo}/tree/{rev}[?recursive=]  [{"type": "file", "path", "size", "oid", "lfs"}]
    HEAD /{repo}/resolve/{rev}/{file}                X-Repo-Commit, ETag, X-Linked-Etag, Content-Length
    GET  /{repo}/resolve/{rev}/{file}                the bytes

A repo may be marked gated (every request without the token is refused with X-Error-Code:
GatedRepo, as the Hub does for its files; its info then says "gated": "manual"). An unknown repo
answers RepoNotFound, an unknown revision RevisionNotFound. Limits: one revision per repo ("main",
or the commit it is published as); no pagination, no xet, no datasets; files are read whole into
memory (test models are small).

`run_fill` runs `llmpack fill-model-cache` against it, as the fill Job (or the cluster admin's)
does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Hub", "HubRepo", "run_fill", "serve_hub"]


def run_fill(
    cache: Path, model: str, *extra: str, env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`llmpack fill-model-cache --model MODEL --cache-dir CACHE EXTRA...` in its own process
    (huggingface_hub reads the environment when imported), with no HF_* variable of this one:
    only `env`'s (HF_ENDPOINT: the stand-in's url)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llmpack.cli",
            "fill-model-cache",
            "--model",
            model,
            "--cache-dir",
            str(cache),
            *extra,
        ],
        env=clean | dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class HubRepo:
    """A model folder served as `repo_id` at one commit; `token`: gated, only this bearer passes;
    `corrupt`: files whose bytes are sent altered (same size) while listed as they are."""

    repo_id: str
    folder: Path
    token: str | None = None
    corrupt: tuple[str, ...] = ()

    @property
    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())

    @property
    def sha(self) -> str:
        """A commit id that changes when any file does (40 hex digits, as git's)."""
        digest = hashlib.sha1()
        for name in self.files:
            digest.update(name.encode())
            digest.update(hashlib.sha256((self.folder / name).read_bytes()).digest())
        return digest.hexdigest()


@dataclass
class Hub:
    """The repos served and what was asked of them (downloads: the files sent whole)."""

    repos: dict[str, HubRepo]
    url: str = ""
    downloads: list[str] = field(default_factory=list)


def _sibling(entry: dict[str, Any]) -> dict[str, Any]:
    """A tree entry as repo_info lists it under "siblings" (with ?blobs=true)."""
    sibling = {"rfilename": entry["path"], "size": entry["size"], "blobId": entry["oid"]}
    if lfs := entry.get("lfs"):
        sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
    return sibling


def git_blob_id(data: bytes) -> str:
    """git's id of a file (`git hash-object`), which the Hub lists as a file's oid and ETag."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf"))


class _Handler(BaseHTTPRequestHandler):
    hub: Hub

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows the client's errors."""

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/api/models/") and path.endswith("/auth-check"):
            if self._repo(path.removeprefix("/api/models/").removesuffix("/auth-check"), "main"):
                self._json({})
        elif path.startswith("/api/models/"):
            self._api(path.removeprefix("/api/models/"))
        elif "/resolve/" in path:
            self._resolve(path.lstrip("/"), head=head)
        else:
            self._error(404, "EntryNotFound")

    def _repo(self, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound")
            return None
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo")
            return None
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound")
            return None
        return repo

    def _api(self, rest: str) -> None:
        if rest in self.hub.repos or rest.count("/") == 1:
            rest += "/revision/main"  # repo_info without a revision
        for verb in ("/revision/", "/tree/"):
            repo_id, found, revision = rest.partition(verb)
            if found and (repo := self._repo(repo_id, revision.split("/")[0])) is not None:
                files = [self._entry(repo, name) for name in repo.files]
                if verb == "/tree/":
                    return self._json(files)
                siblings = [_sibling(f) for f in files]
                gated = "manual" if repo.token else False
                return self._json(
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.sha,
                        "siblings": siblings,
                        "gated": gated,
                        "private": False,
                    }
                )
            if found:
                return None
        return self._error(404, "EntryNotFound")

    @staticmethod
    def _entry(repo: HubRepo, name: str) -> dict[str, Any]:
        data = (repo.folder / name).read_bytes()
        entry: dict[str, Any] = {
            "type": "file",
            "path": name,
            "size": len(data),
            "oid": git_blob_id(data),
        }
        if _lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _resolve(self, rest: str, *, head: bool) -> None:
        repo_id, _, tail = rest.partition("/resolve/")
        revision, _, name = tail.partition("/")
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        file = repo.folder / name
        if name not in repo.files:
            return self._error(404, "EntryNotFound")
        data = file.read_bytes()
        sent = bytes([data[0] ^ 1]) + data[1:] if name in repo.corrupt and data else data
        etag = hashlib.sha256(data).hexdigest() if _lfs(name) else git_blob_id(data)
        self.send_response(200)
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not head:
            self.hub.downloads.append(f"{repo_id}/{name}")
            self.wfile.write(sent)
        return None

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        data = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@contextmanager
def serve_hub(*repos: HubRepo) -> Iterator[Hub]:
    """Serve `repos` on 127.0.0.1 (a free port) until the block ends; hub.url is HF_ENDPOINT."""
    hub = Hub({r.repo_id: r for r in repos})
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
