"""`llmpack fill-model-cache`: download a model revision from the Hub into a cache folder, once,
in the layout vLLM reads offline (huggingface_hub's cache: models--ORG--NAME/snapshots/COMMIT),
so the profiling Job and every serving pod mount it read-only with HF_HUB_CACHE pointing at it.

    llmpack fill-model-cache --model ORG/NAME [--revision REV] --cache-dir DIR
        [--termination-log PATH]

It fetches what vLLM's default loader reads offline (vllm/model_executor/model_loader/,
load format auto): the files of the first of *.safetensors, *.bin, *.pt the repo has, outside
original/**/*, plus every file that holds no weights (config, tokenizer, generation config).
Before downloading it checks that the files fit the free space; after, that every file has its
listed size and every LFS file its SHA-256, so a cache that was cut short or corrupted is refused
here, not by a crash-looping vLLM. Running it again over a full cache downloads nothing.

Failures end with exit code 2 and one line in the termination message that says what to change:
a gated or private model without a token that may read it, an unknown revision, a full disk.
The token, if any, comes from $HF_TOKEN (huggingface_hub reads it); the Hub from $HF_ENDPOINT.

Limits: models on the Hub (or a server speaking its API) only; no object storage (vLLM's
Run:ai streamer reads those without a cache); sharded GGUF and custom load formats are not
special-cased (every file of the chosen weight format is fetched).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import logging
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


@dataclass(frozen=True)
class RepoFile:
    """A file of the repo at the resolved commit: `sha256` for LFS files (the Hub's own digest)."""

    path: str
    size: int
    sha256: str | None = None


class CacheFillError(UserError):
    """A reason the cache cannot be filled, phrased as what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hub id, ORG/NAME")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", required=True, type=Path, help="the cache folder (HF_HUB_CACHE)")
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
        folder = fill(model=args.model, revision=args.revision, cache_dir=args.cache_dir)
    except CacheFillError as err:
        write_termination_log(str(err), args.termination_log)  # the status says what failed
        raise
    write_termination_log(f"model cache ready: {args.model} in {folder}", args.termination_log)
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
        check_space(files, cache_dir)
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
    if (revision or "main") != commit:
        # offline, a branch or tag resolves through refs/ only; snapshot_download, asked for the
        # commit (so a push to the branch mid-download cannot mix two commits), wrote none
        _write_ref(cache_dir, model, revision or "main", commit)
    verify(folder, files)
    return folder


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


def check_space(files: list[RepoFile], cache_dir: Path) -> None:
    """Refuse before downloading when the files cannot fit in what is free plus what the cache
    folder already holds (an earlier run's files, which a rerun does not download again)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    needed = sum(f.size for f in files)
    present = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file() and not p.is_symlink())
    free = shutil.disk_usage(cache_dir).free
    if needed > free + present:
        raise CacheFillError(
            f"the model needs {needed / GIB:.1f} GiB and the cache volume has {free / GIB:.1f} GiB free: "
            "raise spec.model.cache.size"
        )


def verify(folder: Path, files: list[RepoFile]) -> None:
    """Every file present with its listed size, every LFS file with its SHA-256."""
    for f in files:
        path = folder / f.path
        if not path.is_file():
            raise CacheFillError(f"{f.path} is missing from the cache after the download")
        if path.stat().st_size != f.size:
            raise CacheFillError(
                f"{f.path} has {path.stat().st_size} bytes in the cache, the Hub lists {f.size}: "
                "delete the cache's PersistentVolumeClaim to fill it again"
            )
        if f.sha256 and _sha256(path) != f.sha256:
            raise CacheFillError(
                f"{f.path} in the cache does not match the Hub's SHA-256: delete the cache's "
                "PersistentVolumeClaim to fill it again"
            )


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
        return "the cache volume is full: raise spec.model.cache.size"
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
    )


def _write_ref(cache_dir: Path, model: str, revision: str, commit: str) -> None:
    ref = cache_dir / f"models--{model.replace('/', '--')}" / "refs" / revision  # refs/pr/1 nests
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit, encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
