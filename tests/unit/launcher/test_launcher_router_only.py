"""`llmpack launch --router-only`: what a DRA MPS pod's router container runs, in front of replicas
that are containers of their own. Real processes on loopback stand in for vLLM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from test_launcher_process import FAKE_VLLM, free_port, get, wait_until


def start_fake(port: int, record: Path, ready_after: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(FAKE_VLLM),
            "--port",
            str(port),
            "--record",
            str(record),
            "--ready-after",
            str(ready_after),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serving(url: str) -> int:
    body = get(url + "/readyz")[1]
    return json.loads(body)["serving"] if body else -1


def test_router_only_follows_replicas_it_did_not_start(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    router_port = free_port()
    first = start_fake(ports[0], tmp_path / "a.jsonl")
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmpack.cli",
            "launch",
            "--router-only",
            "--router-host",
            "127.0.0.1",
            "--router-port",
            str(router_port),
            "--upstream",
            f"http://127.0.0.1:{ports[0]}",
            "--upstream",
            f"http://127.0.0.1:{ports[1]}",
            "--health-interval",
            "0.2",
            "--recheck-interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    second = None
    try:
        url = f"http://127.0.0.1:{router_port}"
        # Ready with one replica serving, the other missing; alive, as the router itself is.
        wait_until(lambda: serving(url) == 1, what="router up, one replica missing")
        assert get(url + "/readyz")[0] == 200 and get(url + "/healthz")[0] == 200
        second = start_fake(ports[1], tmp_path / "b.jsonl")  # the next sidecar comes up later
        wait_until(lambda: serving(url) == 2, what="both replicas healthy")
        served = set()
        for _ in range(6):
            request = urllib.request.Request(
                url + "/v1/completions",
                data=json.dumps({"prompt": "hi", "max_tokens": 2}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                served.add(response.headers["X-LLMPack-Replica"])
        assert served == {"0", "1"}
        first.kill()
        first.wait()
        wait_until(lambda: serving(url) == 1, what="health follows a dead replica")
        assert get(url + "/readyz")[0] == 200
        second.kill()
        second.wait()
        wait_until(lambda: get(url + "/readyz")[0] == 503, what="unready with no replica serving")
        # Not alive-or-dead by its replicas: their containers have liveness probes of their own.
        assert get(url + "/healthz")[0] == 200
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=10) == 0
    finally:
        for proc in (first, second, router):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_router_only_refuses_a_command_or_missing_upstreams() -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "llmpack.cli", "launch", "--router-only"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "--upstream" in missing.stderr
    with_command = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmpack.cli",
            "launch",
            "--router-only",
            "--upstream",
            "http://127.0.0.1:1",
            "--",
            "vllm",
            "serve",
            "m",
        ],
        capture_output=True,
        text=True,
    )
    assert with_command.returncode == 2 and "starts no replica" in with_command.stderr
    zero_cap = subprocess.run(
        [
            *(sys.executable, "-m", "llmpack.cli", "launch", "--router-only"),
            *("--upstream", "http://127.0.0.1:1", "--max-in-flight", "0"),
        ],
        capture_output=True,
        text=True,
    )
    assert zero_cap.returncode == 2 and "--max-in-flight must be positive" in zero_cap.stderr
