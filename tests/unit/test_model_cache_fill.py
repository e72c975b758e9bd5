"""`llmpack fill-model-cache` against a local stand-in for the Hub (tests/hub.py): what it
downloads, that a second run downloads nothing, that the cache it leaves loads offline with
huggingface_hub's own offline resolution (what vLLM does under HF_HUB_OFFLINE=1), and the one
line a user reads in the status when it cannot fill the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hub import HubRepo, run_fill, serve_hub

MODEL = "acme/tiny"


def model_folder(root: Path, *, weights: dict[str, bytes] | None = None) -> Path:
    folder = root / "repo"
    (folder / "original").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    if weights is None:
        weights = {"model.safetensors": b"S" * 4096, "pytorch_model.bin": b"B" * 4096}
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    (folder / "original" / "consolidated.00.pth").write_bytes(b"O" * 4096)
    (folder / "original" / "params.json").write_text("{}")
    return folder


def fill(
    cache: Path, endpoint: str, *extra: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as the fill Job runs it, in its own process (huggingface_hub reads the
    environment when imported)."""
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(cache.parent / "home")}
    if token:
        env["HF_TOKEN"] = token
    log = cache.parent / "termination-log"
    done = run_fill(cache, MODEL, "--termination-log", str(log), *extra, env=env, timeout=120)
    done.stdout += log.read_text() if log.exists() else ""
    return done


def test_fills_what_vllm_loads_once_and_the_cache_resolves_offline(tmp_path: Path) -> None:
    repo = HubRepo(MODEL, model_folder(tmp_path))
    cache = tmp_path / "cache"
    with serve_hub(repo) as hub:
        first = fill(cache, hub.url)
        assert first.returncode == 0, first.stderr
        # safetensors wins over .bin as in vLLM's default loader; the original checkpoint stays
        assert sorted(hub.downloads) == [
            f"{MODEL}/{name}"
            for name in ("config.json", "model.safetensors", "original/params.json", "tokenizer.json")
        ]
        again = fill(cache, hub.url)
        assert again.returncode == 0, again.stderr
        assert len(hub.downloads) == 4, "a second run over a full cache downloads again"
    assert "model cache ready" in first.stdout
    snapshot = cache / "models--acme--tiny" / "snapshots" / repo.sha
    assert (snapshot / "model.safetensors").read_bytes() == b"S" * 4096
    # the hub is gone: the cache alone answers vLLM's offline call for weights
    # (vllm/model_executor/model_loader/weight_utils.py, download_weights_from_hf under HF_HUB_OFFLINE)
    offline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from huggingface_hub import snapshot_download; print(snapshot_download("
            "sys.argv[1], allow_patterns='*.safetensors', ignore_patterns=['original/**/*'], "
            "cache_dir=sys.argv[2], local_files_only=True))",
            MODEL,
            str(cache),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == snapshot


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("gated", "is gated: accept its terms on the Hub and set spec.model.hfTokenSecretRef"),
        ("unknown model", "was not found on the Hub, or is private: check spec.model.name"),
        ("unknown revision", "has no revision 'v9': check spec.model.revision"),
        ("no weights", "the repo has no weights vLLM's default loader reads"),
    ],
)
def test_a_fill_that_cannot_succeed_says_what_to_change(tmp_path: Path, case: str, says: str) -> None:
    folder = model_folder(tmp_path, weights={} if case == "no weights" else None)
    repo = HubRepo(
        "acme/other" if case == "unknown model" else MODEL,
        folder,
        token="s3cret" if case == "gated" else None,
    )
    extra = ["--revision", "v9"] if case == "unknown revision" else []
    with serve_hub(repo) as hub:
        done = fill(tmp_path / "cache", hub.url, *extra)
    assert done.returncode != 0
    (line,) = done.stdout.splitlines()
    assert says in line, line
    assert "Traceback" not in done.stderr, done.stderr


def test_a_gated_model_fills_with_its_token(tmp_path: Path) -> None:
    repo = HubRepo(MODEL, model_folder(tmp_path), token="s3cret")
    with serve_hub(repo) as hub:
        done = fill(tmp_path / "cache", hub.url, token="s3cret")
    assert done.returncode == 0, done.stderr


def test_a_cache_too_small_is_refused_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmpack.profiler import model_cache

    files = [model_cache.RepoFile("model.safetensors", 10 * 1024**3)]
    monkeypatch.setattr(model_cache.shutil, "disk_usage", lambda _p: SimpleNamespace(free=2 * 1024**3))
    with pytest.raises(
        model_cache.CacheFillError,
        match=r"needs 10.0 GiB and the cache volume has 2.0 GiB free: raise spec.model.cache.size",
    ):
        model_cache.check_space(files, tmp_path / "cache", model=MODEL)


def test_a_corrupt_file_in_the_cache_is_refused(tmp_path: Path) -> None:
    from llmpack.profiler import model_cache

    (tmp_path / "model.safetensors").write_bytes(b"x" * 8)
    listed = model_cache.RepoFile("model.safetensors", 8, sha256="0" * 64)
    with pytest.raises(model_cache.CacheFillError, match="does not match the Hub's SHA-256"):
        model_cache.verify(tmp_path, [listed])


# -- a cache the cluster admin filled and shares: --verify-only ---------------------------------

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers


def test_a_shared_cache_is_verified_offline_against_the_record_its_fill_left(tmp_path: Path) -> None:
    repo = HubRepo(MODEL, model_folder(tmp_path))
    cache = tmp_path / "cache"
    with serve_hub(repo) as hub:
        assert fill(cache, hub.url).returncode == 0
    record = json.loads((cache / "models--acme--tiny" / "llmpack" / f"{repo.sha}.json").read_text())
    assert record["gated"] is False and record["private"] is False
    assert {f["path"]: f["size"] for f in record["files"]}["model.safetensors"] == 4096
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    for revision in ([], ["--revision", repo.sha]):
        done = fill(cache, UNREACHABLE, "--verify-only", *revision)
        assert done.returncode == 0, done.stderr
        assert f"model cache verified: {MODEL}" in done.stdout
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before, "verifying wrote to the cache"


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("corrupt", "model.safetensors in the cache does not match the Hub's SHA-256: ask the cluster admin"),
        ("truncated", "tokenizer.json has 2 bytes in the cache, the Hub lists"),
        (
            "missing",
            "config.json is missing from the cache: ask the cluster admin to fill the model again",
        ),
        ("no record", "has no record of its files (models--acme--tiny/llmpack/"),
        ("other revision", "holds no copy of acme/tiny at revision v2: ask the cluster admin to fill it"),
        ("empty", "holds no copy of acme/tiny at revision main"),
        (
            "config edited",
            "config.json in the cache does not match the Hub's git blob id: ask the cluster admin",
        ),
        (
            "extra weights",
            "evil.safetensors is in the shared cache's copy of acme/tiny but not in the record",
        ),
        ("extra code", "modeling_evil.py is in the shared cache's copy of acme/tiny but not in the record"),
        ("other record", "has the record of acme/other at"),
        ("broken record", "has a broken record (Expecting property name"),
        ("record outside", "../../../../outside points outside the model's folder of the cache"),
        ("record without weights", "has a record that lists no weights"),
        ("record without digest", "has a record without a digest of config.json"),
        ("record missing key", "has a broken record (KeyError"),
        (
            "extra template",
            "chat_template.jinja is in the shared cache's copy of acme/tiny but not in the record",
        ),
        ("link outside", "config.json points outside the model's folder of the cache"),
    ],
)
def test_a_shared_cache_that_fails_the_check_says_what_the_admin_must_do(
    tmp_path: Path, damage: str, says: str
) -> None:
    repo = HubRepo(MODEL, model_folder(tmp_path))
    cache = tmp_path / "cache"
    with serve_hub(repo) as hub:
        assert fill(cache, hub.url).returncode == 0
    snapshot = cache / "models--acme--tiny" / "snapshots" / repo.sha
    extra: list[str] = []
    if damage == "corrupt":
        blob = (snapshot / "model.safetensors").resolve()
        blob.write_bytes(b"X" * 4096)  # same size, other bytes
    elif damage == "truncated":
        (snapshot / "tokenizer.json").resolve().write_bytes(b"{}")
    elif damage == "missing":
        (snapshot / "config.json").unlink()
    elif damage == "no record":
        (cache / "models--acme--tiny" / "llmpack" / f"{repo.sha}.json").unlink()
    elif damage == "other revision":
        extra = ["--revision", "v2"]
    elif damage == "empty":
        cache = tmp_path / "empty"
        cache.mkdir()
    elif damage == "config edited":
        config = (snapshot / "config.json").resolve()
        config.write_text(config.read_text().replace("llama", "LLAMA"))  # same size
    elif damage in ("extra weights", "extra code", "extra template"):
        extra_file = {"extra weights": "evil.safetensors", "extra code": "modeling_evil.py"}.get(damage)
        (snapshot / (extra_file or "chat_template.jinja")).write_bytes(b"x")
    elif damage == "link outside":
        config = snapshot / "config.json"
        (tmp_path / "outside.json").write_bytes(config.read_bytes())
        config.unlink()
        config.symlink_to(tmp_path / "outside.json")
    else:
        path = cache / "models--acme--tiny" / "llmpack" / f"{repo.sha}.json"
        record = json.loads(path.read_text())
        if damage == "other record":
            record["model"] = "acme/other"
        elif damage == "record outside":
            (tmp_path / "outside").write_text("x")
            record["files"].append({"path": "../../../../outside", "size": 1, "blobId": "0" * 40})
        elif damage == "record without digest":
            next(f for f in record["files"] if f["path"] == "config.json")["blobId"] = None
        elif damage == "record missing key":
            del record["files"][0]["size"]
        elif damage == "record without weights":
            record["files"] = [f for f in record["files"] if not f["path"].endswith(".safetensors")]
        path.write_text("{not json" if damage == "broken record" else json.dumps(record))
    done = fill(cache, UNREACHABLE, "--verify-only", *extra)
    assert done.returncode != 0
    (line,) = done.stdout.splitlines()
    assert says in line, line
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("token", "hub_up", "says"),
    [
        (
            None,
            True,
            "acme/tiny is gated or private, and a shared cache serves it only to a namespace whose own token",
        ),
        (
            "hf_other",
            True,
            "the token of spec.model.hfTokenSecretRef may not read acme/tiny: accept its terms",
        ),
        ("s3cret", False, "could not ask the Hub whether the token may read acme/tiny"),
        ("s3cret", True, None),
    ],
)
def test_a_gated_model_in_a_shared_cache_is_served_only_with_a_token_the_hub_grants(
    tmp_path: Path, token: str | None, hub_up: bool, says: str | None
) -> None:
    repo = HubRepo(MODEL, model_folder(tmp_path), token="s3cret")
    cache = tmp_path / "cache"
    with serve_hub(repo) as hub:
        assert fill(cache, hub.url, token="s3cret").returncode == 0
        record = json.loads((cache / "models--acme--tiny" / "llmpack" / f"{repo.sha}.json").read_text())
        assert record["gated"] == "manual"
        done = fill(cache, hub.url if hub_up else UNREACHABLE, "--verify-only", token=token)
    if says is None:
        assert done.returncode == 0, done.stdout + done.stderr
        return
    assert done.returncode != 0
    (line,) = done.stdout.splitlines()
    assert says in line, line


def test_a_fill_that_fails_leaves_the_branch_on_the_commit_it_named_before(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    cache = tmp_path / "cache"
    with serve_hub(HubRepo(MODEL, folder)) as hub:
        assert fill(cache, hub.url).returncode == 0
    ref = cache / "models--acme--tiny" / "refs" / "main"
    before = ref.read_text()
    (folder / "model.safetensors").write_bytes(b"T" * 4096)  # a new commit
    with serve_hub(HubRepo(MODEL, folder, corrupt=("model.safetensors",))) as hub:
        done = fill(cache, hub.url)
    assert done.returncode != 0, done.stderr
    assert "does not match the Hub's SHA-256" in done.stdout, done.stdout
    assert ref.read_text() == before, "the branch points at a commit whose files failed the check"
    assert fill(cache, UNREACHABLE, "--verify-only").returncode == 0, "the old commit stays servable"


def test_the_space_check_counts_only_this_models_files_already_in_a_shared_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmpack.profiler import model_cache

    cache = tmp_path / "cache"
    (cache / "models--acme--other" / "blobs").mkdir(parents=True)
    (cache / "models--acme--other" / "blobs" / "x").write_bytes(b"o" * 100)
    (cache / "models--acme--tiny" / "blobs").mkdir(parents=True)
    (cache / "models--acme--tiny" / "blobs" / "y").write_bytes(b"t" * 30)
    monkeypatch.setattr(model_cache.shutil, "disk_usage", lambda _p: SimpleNamespace(free=50))
    files = [model_cache.RepoFile("model.safetensors", 100)]
    with pytest.raises(model_cache.CacheFillError, match="the model needs"):
        model_cache.check_space(files, cache, model=MODEL)  # 50 free + 30 its own < 100
    model_cache.check_space([model_cache.RepoFile("model.safetensors", 80)], cache, model=MODEL)
