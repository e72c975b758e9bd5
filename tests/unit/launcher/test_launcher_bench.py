"""bench/router_overhead.py keeps working (a short run; the figures themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(60)
def test_router_overhead_bench_prints_both_paths_and_the_added_latency() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.router_overhead", "--requests", "20", "--chunks", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("through the router") == 2
    assert run.stdout.count("added by the router:") == 2
