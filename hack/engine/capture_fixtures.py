"""Recapture tests/fixtures/vllm from the real engine (vLLM's CPU build, hack/engine/install).

    .venv/bin/python hack/engine/capture_fixtures.py [--out tests/fixtures/vllm]

Runs `llmpack profile --backend vllm` on the tiny Llama-style model (hack/engine/tiny_models.py)
at 4 batch sizes and keeps what the engine wrote: the start-up log, one point's `vllm bench
serve` result and /metrics scrape; then starts the engine twice more with settings it refuses
(a KV pool too small for one block, a --max-model-len beyond the model's positions) and keeps
those logs, whose root causes the profiler must find. README.md in the folder records the date,
the vLLM version and the command lines. The unit tests assert the figures these files hold, so
a recapture that changes them shows up as failing tests to update, with the engine's own numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POINT = 4  # the batch size whose bench result and metrics scrape are kept
FAILING_STARTS = {
    "serve-fails-kv-cache.log": ["--kv-cache-memory-bytes", "65536", "--max-model-len", "2048"],
    "serve-fails-max-model-len.log": ["--kv-cache-memory-bytes", "16777216", "--max-model-len", "4096"],
}


def engine_python() -> Path:
    done = subprocess.run([str(ROOT / "hack/engine/install")], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def env_for(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_CI_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    env.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    return env


def tiny_model(python: Path, name: str) -> Path:
    done = subprocess.run(
        [str(python), str(ROOT / "hack/engine/tiny_models.py"), "--only", name],
        capture_output=True,
        text=True,
        check=True,
        env=env_for(python),
    )
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["path"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/vllm")
    args = parser.parse_args()
    python = engine_python()
    env = env_for(python)
    model = tiny_model(python, "llama-gqa")
    work = Path(tempfile.mkdtemp(prefix="llmpack-capture-"))
    profile = [
        str(ROOT / ".venv/bin/llmpack"), "profile", "--backend", "vllm", "--model", str(model),
        "--gpu", "NVIDIA-H100-80GB-HBM3", "--prompt-tokens", "32", "--output-tokens", "32",
        "--candidates", "1,2,4,8", "--sweep", "exhaustive", "--workdir", str(work / "profile"),
        "--output", str(work / "profile.json"),
    ]  # fmt: skip
    subprocess.run(profile, check=True, env=env)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "profile/vllm-serve.log", out / "serve.log")
    shutil.copy(work / f"profile/bench-{POINT}.json", out / "bench-serve-result.json")
    shutil.copy(work / f"profile/metrics-{POINT}.txt", out / "metrics.txt")
    shutil.copy(work / "profile.json", out / "profile.json")
    for name, flags in FAILING_STARTS.items():
        command = [str(python.parent / "vllm"), "serve", str(model), "--port", "8391", *flags]
        with (out / name).open("wb") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600)
        if done.returncode == 0:
            print(f"{name}: the engine started with {flags}; it was expected to refuse", file=sys.stderr)
            return 1
    version = subprocess.run(
        [str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, env=env
    ).stdout.strip()
    readme = (out / "README.md").read_text(encoding="utf-8").split("\n## Captured", 1)[0].rstrip()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    (out / "README.md").write_text(
        f"{readme}\n\n## Captured\n\n{stamp}, vLLM {version} (CPU build), model {model.name} "
        f"(hack/engine/tiny_models.py), by `.venv/bin/python hack/engine/capture_fixtures.py`:\n\n"
        f"    {' '.join(profile[1:])}\n\n"
        + "".join(f"    vllm serve MODEL {' '.join(f)}   # -> {n}\n" for n, f in FAILING_STARTS.items()),
        encoding="utf-8",
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
