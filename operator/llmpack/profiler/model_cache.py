"""`llmpack fill-model-cache`: download a model revision from the Hub into a cache folder, once,
in the layout vLLM reads offline (huggingface_hub's cache: models--ORG--NAME/snapshots/COMMIT),
so the profiling Job and every serving pod mount it read-only with HF_HUB_CACHE pointing at it.

    llmpack fill-model-cache --model ORG/NAME [--revision REV] --cache-dir DIR
        [--verify-only] [--termination-log PATH]

It fetches what vLLM's default loader reads offline (vllm/model_executor/model_loader/,
load format auto): the files of the first of *.safetensors, *.bin, *.pt the repo has, outside
original/**/*, plus every file that holds no weights (config, tokenizer, generation config).
Before downloading it checks that the files fit the free space; after, that every file has its
listed size and every LFS file its SHA-256, so a cache that was cut short or corrupted is refused
here, not by a crash-looping vLLM. Running it again over a full cache downloads nothing. It
leaves a record of what it filled beside the snapshot (models--ORG--NAME/llmpack/COMMIT.json:
every file with its size and SHA-256, and whether the Hub gates the model or keeps it private).

With --verify-only it writes and downloads nothing: it checks a cache someone else filled (a
volume the cluster admin shares with several namespaces) against that record, offline, and for
a gated or private model asks the Hub whether $HF_TOKEN may read it (huggingface_hub's
auth_check): llmpack serves a gated model from a shared cache only to a namespace whose own
token is granted. That is a guard against mistakes, not access control: any pod of a namespace
the volume is bound into can read its files; which namespaces get the volume is the admin's
access control.

Failures end with exit code 2 and one line in the termination message that says what to change:
a gated or private model without a token that may read it, an unknown revision, a full disk.
The token, if any, comes from $HF_TOKEN (huggingface_hub reads it); the Hub from $HF_ENDPOINT.

Limits: models on the Hub (or a server speaking its API) only; no object storage (vLLM's
Run:ai streamer reads those without a cache); sharded GGUF and custom load formats are not
special-cased (every file of the chosen weight format is fetched). --verify-only accepts only a
cache this command filled (it needs the record); it reads every file once, so it takes as long
as reading the weights from the volume; whether the Hub gates a model is as the Hub said when the
cache was filled.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpack.errors import UserError
from llmpack.profiler.publish import write_termination_log

log = logging.getLogger(__name__)

# vLLM's default loader, load format auto: the first pattern the repo has wins
# (vllm/model_executor/model_loader/default_loader.py, _prepare_weights); its LoadConfig ignores
# original/**/* (vllm/config/load.py). Offline, vLLM asks huggingface_hub's snapshot_download
# for that pattern minus those ignored, which refuses a snapshot missing any file so listed
# (huggingface_hub/_snapshot_download.py, _raise_if_incomplete_snapshot): the cache holds them all.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
VLLM_IGNORE_PATTERNS = ("original/**/*",)
# Checkpoint formats the default loader never reads alongside the chosen one (Llama's
# original/consolidated.*.pth alone is as large as the model).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
GIB = 1024**3
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What to do about a file that fails the check, in a cache the operator filled and in a shared one.
REFILL_OWN = "delete the cache's PersistentVolumeClaim to fill it again"
REFILL_SHARED = (
    "ask the cluster admin to fill the model again into a new shared volume (other namespaces may "
    "be serving from this one) and bind that"
)


@dataclass(frozen=True)
class RepoFile:
    """A file of the repo at the resolved commit: `sha256` for LFS files (the Hub's own digest),
    `blob_id` for the others (git's blob id: SHA-1 of "blob SIZE\\0" and the bytes)."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class Record:
    """What a fill left beside the snapshot: the files it verified, and whether the Hub restricts
    the model (gated: "auto" or "manual" as the Hub's model info says; private)."""

    model: str
    commit: str
    files: tuple[RepoFile, ...]
    gated: str | bool = False
    private: bool = False

    @property
    def restricted(self) -> bool:
        """Only a token that may read it on the Hub may be served it."""
        return bool(self.gated) or self.private

    def to_json(self) -> str:
        files = [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "blobId": f.blob_id} for f in self.files
        ]
        body = {"model": self.model, "commit": self.commit, "gated": self.gated, "private": self.private}
        return json.dumps({**body, "files": files}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Raises ValueError (a JSONDecodeError, a missing key, a wrong type) for a broken record."""
        try:
            data = json.loads(text)
            files = tuple(
                RepoFile(str(f["path"]), int(f["size"]), f.get("sha256"), f.get("blobId"))
                for f in data["files"]
            )
            return cls(
                model=str(data["model"]),
                commit=str(data["commit"]),
                files=files,
                gated=data.get("gated") or False,
                private=bool(data.get("private")),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{type(err).__name__}: {err}") from err


class CacheFillError(UserError):
    """A reason the cache cannot be filled, phrased as what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hub id, ORG/NAME")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", required=True, type=Path, help="the cache folder (HF_HUB_CACHE)")
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="check a cache this command filled, offline (the Hub only for a gated model's access); "
        "write nothing",
    )
    parser.add_argument(
        "--termination-log",
        default=None,
        help="where the one-line result goes (default /dev/termination-log, only inside a pod)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.verify_only:
            folder = verify_shared(model=args.model, revision=args.revision, cache_dir=args.cache_dir)
        else:
            folder = fill(model=args.model, revision=args.revision, cache_dir=args.cache_dir)
    except CacheFillError as err:
        write_termination_log(str(err), args.termination_log)  # the status says what failed
        raise
    done = "verified" if args.verify_only else "ready"
    write_termination_log(f"model cache {done}: {args.model} in {folder}", args.termination_log)
    print(folder)
    return 0


def fill(*, model: str, revision: str | None, cache_dir: Path) -> Path:
    """Download `model` at `revision` into `cache_dir` and verify it; the snapshot folder.
    Raises CacheFillError with what to change."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    try:
        info = api.model_info(model, revision=revision, files_metadata=True)
        commit = info.sha or ""
        files = chosen_files([_repo_file(s) for s in info.siblings or []])
        check_space(files, cache_dir, model=model)
        folder = Path(
            snapshot_download(
                repo_id=model,
                revision=commit,
                cache_dir=cache_dir,
                allow_patterns=[f.path for f in files],
            )
        )
    except CacheFillError:
        raise
    except Exception as err:  # the Hub's errors, the network's and the disk's, each explained
        raise CacheFillError(explain(err, model=model, revision=revision)) from err
    verify(folder, files)
    record = Record(model, commit, tuple(files), gated=info.gated or False, private=bool(info.private))
    _write_record(cache_dir, record)
    if (revision or "main") != commit:
        # offline, a branch or tag resolves through refs/ only; snapshot_download, asked for the
        # commit (so a push to the branch mid-download cannot mix two commits), wrote none. Moved
        # last: a fill that fails leaves the branch on the commit it named before
        _write_ref(cache_dir, model, revision or "main", commit)
    return folder


def verify_shared(*, model: str, revision: str | None, cache_dir: Path) -> Path:
    """Check a cache filled by `fill` (a volume shared by the cluster admin), writing nothing: the
    snapshot of `revision`, for a restricted model that $HF_TOKEN may read it on the Hub (first:
    it is quick), then every file against the record, and that the snapshot holds no file
    the record does not list; the snapshot folder. Raises CacheFillError with what to change.

    Limits: whether the Hub gates the model is as the Hub said when the admin filled it."""
    wanted = revision or "main"
    commit = resolve_revision(cache_dir, model, wanted)
    if commit is None:
        raise CacheFillError(
            f"the shared model cache holds no copy of {model} at revision {wanted}: ask the cluster "
            f"admin to fill it (llmpack fill-model-cache --model {model} --revision {wanted} "
            "--cache-dir <the volume>)"
        )
    record = _read_record(cache_dir, model, commit)
    if record.restricted:
        check_access(model)
    folder = _repo_folder(cache_dir, model) / "snapshots" / commit
    verify(folder, list(record.files), remedy=REFILL_SHARED)
    listed = {f.path for f in record.files}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_dir() and name not in listed:
            raise CacheFillError(
                f"{name} is in the shared cache's copy of {model} but not in the record of its fill "
                f"(vLLM could read it unchecked): {REFILL_SHARED}"
            )
    return folder


def _read_record(cache_dir: Path, model: str, commit: str) -> Record:
    """The record of `model` at `commit`, checked to be that one and to list weights."""
    path = _record_path(cache_dir, model, commit)
    where = f"the shared model cache's copy of {model} at {commit[:12]}"
    if not path.is_file():
        raise CacheFillError(
            f"{where} has no record of its files ({path.relative_to(cache_dir)}): it was not filled by "
            "llmpack fill-model-cache; ask the cluster admin to fill it with that command"
        )
    try:
        record = Record.from_json(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CacheFillError(f"{where} has a broken record ({err}): {REFILL_SHARED}") from err
    if (record.model, record.commit) != (model, commit):
        raise CacheFillError(
            f"{where} has the record of {record.model} at {record.commit[:12]}: {REFILL_SHARED}"
        )
    if not any(f.path.endswith(WEIGHT_SUFFIXES) for f in record.files):
        raise CacheFillError(f"{where} has a record that lists no weights: {REFILL_SHARED}")
    undigested = next((f.path for f in record.files if not (f.sha256 or f.blob_id)), None)
    if undigested is not None:
        raise CacheFillError(f"{where} has a record without a digest of {undigested}: {REFILL_SHARED}")
    return record


def resolve_revision(cache_dir: Path, model: str, revision: str) -> str | None:
    """The commit `revision` names in the cache (a commit names itself), as huggingface_hub
    resolves it offline (refs/REVISION); None where the cache has no such snapshot."""
    repo = _repo_folder(cache_dir, model)
    ref = repo / "refs" / revision
    commit = (
        revision
        if COMMIT.match(revision)
        else (ref.read_text(encoding="utf-8").strip() if ref.is_file() else None)
    )
    if commit is None or not COMMIT.match(commit) or not (repo / "snapshots" / commit).is_dir():
        return None
    return commit


def check_access(model: str) -> None:
    """A gated or private model is served from a shared cache only where $HF_TOKEN may read it on
    the Hub (GET /api/models/ORG/NAME/auth-check)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if not get_token():
        raise CacheFillError(
            f"{model} is gated or private, and a shared cache serves it only to a namespace whose own "
            "token may read it: set spec.model.hfTokenSecretRef to a Secret holding such a token"
        )
    try:
        HfApi().auth_check(model)
    except GatedRepoError as err:
        raise CacheFillError(
            f"the token of spec.model.hfTokenSecretRef may not read {model}: accept its terms on the Hub "
            "with that token's account, or give the token of an account that was granted access"
        ) from err
    except RepositoryNotFoundError as err:
        raise CacheFillError(
            f"the token of spec.model.hfTokenSecretRef may not read {model} (private, or not found on "
            "the Hub): give the token of an account that may read it"
        ) from err
    except Exception as err:  # the network's: the Job's retries ask again
        raise CacheFillError(
            f"could not ask the Hub whether the token may read {model}: {type(err).__name__}: "
            f"{_first_line(err)}"
        ) from err


def chosen_files(files: list[RepoFile]) -> list[RepoFile]:
    """What vLLM reads offline: the files of one weight format (the first of WEIGHT_PATTERNS the
    repo has, minus VLLM_IGNORE_PATTERNS) and every file that holds no weights (config,
    tokenizer, generation config)."""

    def matches(f: RepoFile, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(f.path, p) for p in patterns)

    weights = [f for f in files if not matches(f, VLLM_IGNORE_PATTERNS)]
    chosen = next((p for p in WEIGHT_PATTERNS if any(matches(f, (p,)) for f in weights)), None)
    if chosen is None:
        raise CacheFillError(
            f"the repo has no weights vLLM's default loader reads ({', '.join(WEIGHT_PATTERNS)})"
        )
    return [
        f for f in files if not f.path.endswith(WEIGHT_SUFFIXES) or (f in weights and matches(f, (chosen,)))
    ]


def check_space(files: list[RepoFile], cache_dir: Path, *, model: str) -> None:
    """Refuse before downloading when the files cannot fit in what is free plus what the model's
    folder already holds (an earlier run's files, which a rerun does not download again; other
    models of a shared cache do not count)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    needed = sum(f.size for f in files)
    own = _repo_folder(cache_dir, model)
    present = sum(p.stat().st_size for p in own.rglob("*") if p.is_file() and not p.is_symlink())
    free = shutil.disk_usage(cache_dir).free
    if needed > free + present:
        raise CacheFillError(
            f"the model needs {needed / GIB:.1f} GiB and the cache volume has {free / GIB:.1f} GiB free: "
            "raise spec.model.cache.size (a shared cache: give its volume more room)"
        )


def verify(folder: Path, files: list[RepoFile], *, remedy: str = REFILL_OWN) -> None:
    """Every file present, inside the model's folder of the cache (a snapshot's files are links
    into its blobs/), with its listed size, its SHA-256 (LFS files) or git blob id (the others);
    `remedy` says what to do about one that is not."""
    repo = folder.parent.parent.resolve()
    for f in files:
        path = folder / f.path
        if (
            Path(f.path).is_absolute()
            or ".." in Path(f.path).parts
            or not path.resolve().is_relative_to(repo)
        ):
            raise CacheFillError(f"{f.path} points outside the model's folder of the cache: {remedy}")
        if not path.is_file():
            raise CacheFillError(f"{f.path} is missing from the cache: {remedy}")
        if path.stat().st_size != f.size:
            raise CacheFillError(
                f"{f.path} has {path.stat().st_size} bytes in the cache, the Hub lists {f.size}: {remedy}"
            )
        if f.sha256 and _sha256(path) != f.sha256:
            raise CacheFillError(f"{f.path} in the cache does not match the Hub's SHA-256: {remedy}")
        if not f.sha256 and f.blob_id and _git_blob_id(path) != f.blob_id:
            raise CacheFillError(f"{f.path} in the cache does not match the Hub's git blob id: {remedy}")


def explain(err: BaseException, *, model: str, revision: str | None) -> str:
    """One line a user can act on, for an error huggingface_hub or the disk raised."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, GatedRepoError):
        return (
            f"{model} is gated: accept its terms on the Hub and set spec.model.hfTokenSecretRef "
            "to a Secret holding a token of an account that was granted access"
        )
    if isinstance(err, RepositoryNotFoundError):
        return (
            f"{model} was not found on the Hub, or is private: check spec.model.name, or set "
            "spec.model.hfTokenSecretRef to a token that may read it"
        )
    if isinstance(err, RevisionNotFoundError):
        return f"{model} has no revision {revision!r}: check spec.model.revision"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "the cache volume is full: raise spec.model.cache.size (a shared cache: give its volume room)"
    if isinstance(err, HfHubHTTPError):
        return f"the Hub refused the download: {_first_line(err)}"
    return f"could not download {model}: {type(err).__name__}: {_first_line(err)}"


def _repo_file(sibling: Any) -> RepoFile:
    """huggingface_hub's RepoSibling (model_info with files_metadata=True)."""
    lfs = sibling.lfs
    return RepoFile(
        path=str(sibling.rfilename),
        size=int(sibling.size if sibling.size is not None else (lfs.size if lfs else 0)),
        sha256=lfs.sha256 if lfs else None,
        blob_id=None if lfs else getattr(sibling, "blob_id", None),
    )


def _repo_folder(cache_dir: Path, model: str) -> Path:
    """huggingface_hub's folder of a model in its cache."""
    return cache_dir / f"models--{model.replace('/', '--')}"


def _record_path(cache_dir: Path, model: str, commit: str) -> Path:
    """Beside refs/, snapshots/ and blobs/, which huggingface_hub's cache scan only reads."""
    return _repo_folder(cache_dir, model) / "llmpack" / f"{commit}.json"


def _write_record(cache_dir: Path, record: Record) -> None:
    """Written last and whole (a rename): a record means every file it lists was verified."""
    path = _record_path(cache_dir, record.model, record.commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(record.to_json(), encoding="utf-8")
    os.replace(partial, path)


def _write_ref(cache_dir: Path, model: str, revision: str, commit: str) -> None:
    ref = _repo_folder(cache_dir, model) / "refs" / revision  # refs/pr/1 nests
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit, encoding="utf-8")


def _git_blob_id(path: Path) -> str:
    """git's id of a file's bytes (`git hash-object`): what the Hub lists for a file kept in git."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git's id, not a security digest
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
