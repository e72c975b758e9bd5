"""`llmpack operator` in its own process, for the end-to-end and chaos tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

OPERATOR_NAMESPACE = "llmpack-system"


class OperatorRunner:
    """`llmpack operator` in its own process, as a user runs it. Chaos tests kill and restart it."""

    def __init__(
        self, env: dict[str, str], log_path: Path, *, extra_args: Sequence[str] = (), metrics_port: int = 0
    ):
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "llmpack.cli", "operator"),
                    *("--operator-namespace", OPERATOR_NAMESPACE),
                    *("--metrics-port", str(self.metrics_port), "--liveness", "", "--log-level", "INFO"),
                    *self.extra_args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        time.sleep(0.5)
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited at start:\n{self.log_tail()}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final status write, like an OOM kill or a node loss."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""
