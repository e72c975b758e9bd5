"""The model cache with real vLLM: `llmpack fill-model-cache` fills a folder from a local stand-in
for the Hub (tests/hub.py, through HF_ENDPOINT), and `vllm serve` with the environment the
renderer gives a pod that mounts the cache (serving.model_cache_env: HF_HUB_CACHE, HF_HUB_OFFLINE)
loads the tiny model from it and answers, with the Hub gone and the cache read-only (as every pod
mounts it), after `--verify-only` (the check of a shared cache) passed on it offline. The same
model served the download way (a fresh HF_HUB_CACHE, the Hub reachable) is the baseline; both
times to /health are printed.

Limits: the tiny model is about 1 MB on a loopback link, so the two times differ by vLLM's start-up
noise, not by a download; on a real model the download path adds the transfer of every weight
file at every pod start (15 GB for a 7B model in bf16).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import engine
from hub import HubRepo, run_fill, serve_hub
from llmpack.render.serving import MODEL_CACHE_MOUNT, model_cache_env

MODEL = "acme/tiny-llama"


def completion(server: engine.Server) -> dict:
    import urllib.request

    body = json.dumps({"model": MODEL, "prompt": "The cache", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"{server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def timed_start(log_dir: Path, env: dict[str, str]) -> tuple[engine.Server, float]:
    started = time.monotonic()
    server = engine.serve(MODEL, log_dir, "--max-model-len", "256", "--max-num-seqs", "4", env=env)
    return server, time.monotonic() - started


def rendered_cache_env(cache: Path) -> dict[str, str]:
    """The pod's environment for a mounted cache, with the mount point moved to `cache`."""
    env = {v["name"]: v["value"] for v in model_cache_env("claim")}
    assert env["HF_HUB_CACHE"] == MODEL_CACHE_MOUNT
    return {**env, "HF_HUB_CACHE": str(cache), "TRANSFORMERS_OFFLINE": "1"}


def read_only(folder: Path, on: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222 if on else path.stat().st_mode | 0o200)


@pytest.mark.timeout(900)
def test_vllm_serves_from_the_filled_cache_with_the_hub_gone(tmp_path: Path, capsys) -> None:
    repo = HubRepo(MODEL, engine.tiny_models()["llama-gqa"])
    cache = tmp_path / "cache"
    with serve_hub(repo) as hub:
        download_env = {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_CACHE": str(tmp_path / "pod-scratch"),
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
        }
        server, download_s = timed_start(tmp_path / "download", download_env)
        try:
            assert completion(server)["choices"][0]["text"] is not None
        finally:
            server.stop()
        assert any(d.endswith("model.safetensors") for d in hub.downloads), hub.downloads
        home = {"HF_HOME": str(tmp_path / "home")}
        filled = run_fill(cache, MODEL, env={**home, "HF_ENDPOINT": hub.url})
        assert filled.returncode == 0, filled.stderr
    # the Hub is shut down: only the cache can serve the model now; and it is read-only, as every
    # pod mounts it (a shared cache's volume is ReadOnlyMany too)
    verified = run_fill(
        cache, MODEL, "--verify-only", env={**home, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}
    )
    assert verified.returncode == 0, verified.stderr
    read_only(cache, True)
    try:
        server, cache_s = timed_start(tmp_path / "cached", rendered_cache_env(cache))
        try:
            answer = completion(server)
        finally:
            server.stop()
    finally:
        read_only(cache, False)
    assert answer["model"] == MODEL and answer["choices"][0]["text"] is not None
    with capsys.disabled():
        print(
            f"\ntime to /health, {MODEL} ({sum(p.stat().st_size for p in repo.folder.iterdir())} bytes): "
            f"download through the stand-in hub {download_s:.1f} s, "
            f"from the filled cache offline {cache_s:.1f} s"
        )


def test_vllm_refuses_at_once_when_the_cache_lacks_the_model(tmp_path: Path) -> None:
    """An empty cache (the fill never ran, or the claim was replaced) fails the start with
    huggingface_hub's offline error, never a download into the pod's scratch volume."""
    (tmp_path / "empty").mkdir()
    server = engine.serve(MODEL, tmp_path / "log", env=rendered_cache_env(tmp_path / "empty"), wait=False)
    try:
        server.process.wait(timeout=240)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert "outgoing traffic has been disabled" in server.log(), server.log()[-3000:]
