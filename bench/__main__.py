"""Every benchmark, with defaults small enough for a 2-core machine; tables go to bench/results/.

    python -m bench [--only NAME ...] [--skip NAME ...] [--full] [--results-dir DIR]

Each benchmark runs in its own process (`python -m bench.<name>`, which also runs it alone), one
after another so that they do not compete for the cores. The two that print instead of writing a
result file (adaptive_sweep, router_overhead) have their output captured into
bench/results/<name>.md with the date and the machine. `--full` runs the issue's sizes:
1,000 LLMDeployments for operator_scale, with the testbed's control plane as it is and with its
client rate limits raised (about 10 minutes on 2 cores). Exits non-zero when any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, ROOT, Result, add_results_argument, emit, machine_facts

# name -> (arguments with the small defaults, arguments with --full); None: the module writes its
# own result file (it gets --results-dir), otherwise its standard output is captured.
BENCHMARKS: dict[str, tuple[list[str], list[str], bool]] = {
    "advisor_vs_defaults": ([], [], True),
    "adaptive_sweep": ([], [], False),
    "fleet_packing": ([], [], True),
    "router_overhead": (["--requests", "1000"], [], False),
    "apply_latency": (["--applies", "50"], ["--applies", "50"], True),
    "autoscaling": ([], [], True),
    "operator_scale": (
        ["--counts", "10,100,300"],
        ["--counts", "10,100,300,1000", "--control-plane-qps", "500"],
        True,
    ),
}

CAPTURED_TITLES = {
    "adaptive_sweep": "Adaptive vs exhaustive profiling sweep on the paper's measurements",
    "router_overhead": "Router overhead: what the launcher's router adds per request",
}


def run_one(name: str, full: bool, results_dir: Path | None) -> tuple[int, float]:
    small, large, writes = BENCHMARKS[name]
    argv = [sys.executable, "-m", f"bench.{name}", *(large if full else small)]
    started = time.monotonic()
    if writes:
        argv += ["--results-dir", str(results_dir) if results_dir else "-"]
        code = subprocess.run(argv, cwd=ROOT).returncode
        return code, time.monotonic() - started
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    output = done.stdout.rstrip()
    command = " ".join(["python -m", f"bench.{name}", *argv[3:]])
    module_doc = _module_doc(name)
    result = Result(
        name=name,
        title=CAPTURED_TITLES.get(name, name),
        summary=module_doc or f"Output of `{command}`.",
        tables=[],
        notes=[
            f"exit status {done.returncode}"
            + ("" if done.returncode == 0 else " (the benchmark's goal check failed)")
        ],
        command=command,
        verbatim=output,
    )
    emit(result, results_dir)
    return done.returncode, time.monotonic() - started


def _module_doc(name: str) -> str:
    """The benchmark's own description (its docstring after the usage line), without importing it."""
    import ast

    path = ROOT / "bench" / f"{name}.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    parts = doc.split("\n\n")
    return "\n\n".join(p for p in parts[1:] if not p.lstrip().startswith("python -m")).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only this one (repeatable)"
    )
    parser.add_argument(
        "--skip", action="append", choices=list(BENCHMARKS), default=[], help="leave this one out"
    )
    parser.add_argument("--full", action="store_true", help="the issue's sizes (1,000 LLMDeployments)")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    results_dir = None if args.results_dir == "-" else Path(args.results_dir)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    machine = machine_facts()
    print(f"bench: {', '.join(names)}; {machine['nproc']} CPUs, {machine['memory']}", flush=True)
    outcomes = {}
    for name in names:
        print(f"\n=== bench.{name}", flush=True)
        outcomes[name] = run_one(name, args.full, results_dir)
    print("\nbench summary:")
    for name, (code, seconds) in outcomes.items():
        print(f"  {name:<22} {'ok' if code == 0 else f'exit {code}':<8} {seconds:6.0f} s")
    if results_dir is not None:
        print(f"results in {results_dir if results_dir != RESULTS_DIR else 'bench/results/'}")
    return 0 if all(code == 0 for code, _ in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
