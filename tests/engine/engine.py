"""Driving real vLLM (its CPU build) from tests: where it is, the tiny models, one `vllm serve`.

The engine lives in its own virtual environment (hack/engine/install, cached outside the repo);
tests call it as a program, never import it. `$LLMPACK_VLLM_PYTHON` names that environment's
python (make test exports it); without it the install script is run, which installs when missing.

Facts this relies on (../shared/REAL-ENGINE.md, checked again by the tests that use them):
- without a KV size the CPU engine reserves 92% of the machine's RAM, so every server here gets
  an explicit `--kv-cache-memory-bytes`;
- never set VLLM_CPU_KVCACHE_SPACE (it overrides that flag silently) nor VLLM_CPU_CI_ENV=1, and no
  `--enforce-eager` with an explicit KV size (both skip the warm-up: the first request then fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from llmpack.profiler.engine_log import StartupFacts, parse_startup_log
from llmpack.profiler.vllm import parse_metrics

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "hack" / "engine" / "install"
TINY_MODELS = ROOT / "hack" / "engine" / "tiny_models.py"
ENGINE_ENV_DROP = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_CI_ENV")
DEFAULT_KV_BYTES = 16 << 20  # 16 MiB: thousands of tokens for every tiny model
START_TIMEOUT_S = 300.0


class EngineUnavailable(RuntimeError):
    pass


@cache
def vllm_python() -> Path:
    """The engine environment's python: $LLMPACK_VLLM_PYTHON, else what hack/engine/install prints."""
    if os.environ.get("LLMPACK_VLLM_PYTHON"):
        return Path(os.environ["LLMPACK_VLLM_PYTHON"])
    done = subprocess.run([str(INSTALL)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EngineUnavailable(f"hack/engine/install failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def vllm_executable() -> Path:
    return vllm_python().parent / "vllm"


@cache
def vllm_version() -> str:
    done = subprocess.run(
        [str(vllm_python()), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        env=engine_env(),
    )
    return done.stdout.strip().splitlines()[-1]


def engine_env(**extra: str) -> dict[str, str]:
    """The environment for engine processes: ours without the variables that change its memory
    sizing behind the flags' back, the engine's bin first on PATH (so `vllm` is that one)."""
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV_DROP}
    env["PATH"] = f"{vllm_python().parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the models are local folders
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.update(extra)
    return env


@cache
def tiny_models() -> dict[str, Path]:
    """name -> folder of each tiny model (hack/engine/tiny_models.py; generated when missing)."""
    done = subprocess.run(
        [str(vllm_python()), str(TINY_MODELS)],
        capture_output=True,
        text=True,
        check=False,
        env=engine_env(),
    )
    if done.returncode != 0:
        raise EngineUnavailable(f"tiny model generation failed:\n{done.stderr[-3000:]}")
    models = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {m["name"]: Path(m["path"]) for m in models}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, ""


def process_tree(pid: int) -> set[int]:
    """pid and every descendant alive now (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in found or not Path(f"/proc/{p}").exists():
            continue
        found.add(p)
        todo += children.get(p, [])
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids of `pids` that still run (zombies count as gone)."""
    live = set()
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                live.add(pid)
    return live


@dataclass
class Server:
    """One `vllm serve` started by a test, in its own process group."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"vllm serve exited with {self.process.returncode} at start:\n{self.log()[-4000:]}"
                )
            if http_get(self.url + "/health", 2.0)[0] == 200:
                return
            time.sleep(1.0)
        raise AssertionError(f"vllm serve not healthy after {timeout_s:g} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # engine children left in the group
            os.killpg(self.process.pid, signal.SIGKILL)


def serve(
    model: Path | str,
    log_dir: Path,
    *args: str,
    port: int | None = None,
    kv_cache_memory_bytes: int | None = DEFAULT_KV_BYTES,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `vllm serve MODEL ARGS` on a free loopback port (with a KV size unless args set one);
    `env`: variables over engine_env()'s (a Hub endpoint, a cache folder)."""
    port = port or free_port()
    argv = [str(vllm_executable()), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
    if kv_cache_memory_bytes is not None and "--kv-cache-memory-bytes" not in args:
        argv += ["--kv-cache-memory-bytes", str(kv_cache_memory_bytes)]
    argv += list(args)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"vllm-serve-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=engine_env(**(env or {})), start_new_session=True
        )
    server = Server(process=process, port=port, log_path=log_path)
    if wait:
        try:
            server.wait_healthy()
        except BaseException:
            server.stop()
            raise
    return server


def kv_capacity(model: Path | str, log_dir: Path, *args: str, **kwargs: Any) -> tuple[int, StartupFacts]:
    """Start `vllm serve MODEL ARGS` (keywords as serve() takes them), read its KV block size from
    /metrics and its start-up log (KV tokens, maximum concurrency), and stop it. Fails where the
    engine reports no block size or no KV capacity."""
    server = serve(model, log_dir, *args, **kwargs)
    try:
        status, metrics = http_get(server.url + "/metrics")
        assert status == 200, metrics
        block_size = parse_metrics(metrics).block_size
        startup = parse_startup_log(server.log())
    finally:
        server.stop()
    assert block_size and startup.kv_cache_tokens, "the engine reported no KV capacity or block size"
    return block_size, startup
