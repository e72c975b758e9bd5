"""`make demo`: the whole product on this machine, no GPU and no cluster needed.

Starts the local control plane with fake GPU nodes (hack/testbed), installs the CRD, runs the
operator, applies examples/opt-1.3b-mps-dra.yaml, plays the profiling container (the simulated
backend, as the Job's own ServiceAccount), waits for Ready, and prints what `kubectl get llmd`
shows and where the packed replicas run. Stops everything it started unless --keep.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "testbed"))

import testbed as testbed_lib  # noqa: E402
from player import ProfilerPlayer  # noqa: E402

OPERATOR_NAMESPACE = "llmpack-system"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default=str(ROOT / "examples" / "opt-1.3b-mps-dra.yaml"))
    parser.add_argument("--keep", action="store_true", help="leave the testbed and operator running")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    bin_dir = subprocess.run([str(ROOT / "hack/testbed/build")], check=True, capture_output=True, text=True)
    bin_path = Path(bin_dir.stdout.strip().splitlines()[-1])
    console.rule("[bold]llmpack demo")
    started = time.monotonic()
    tb = testbed_lib.up(bin_path)
    console.print(
        f"control plane up in {time.monotonic() - started:.1f}s: {tb.server} (fake nodes: "
        f"{', '.join(testbed_lib.NODES.all)})"
    )
    operator = None
    try:
        env = tb.env()
        tb.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"))
        tb.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
        tb.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
        log_path = tb.dir / "logs" / "operator.log"
        with open(log_path, "w") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llmpack.cli",
                    "operator",
                    "--operator-namespace",
                    OPERATOR_NAMESPACE,
                    "--metrics-port",
                    "0",
                    "--liveness",
                    "",
                ],
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        console.print(f"operator running (log: {log_path})")
        tb.kubectl("apply", "-n", "default", "-f", args.example)
        name = _name_of(args.example)
        console.print(f"applied {Path(args.example).name}: LLMDeployment default/{name}")

        from llmpack.controller.kube import KubeClient

        kube = KubeClient.from_config(str(tb.kubeconfig))
        player = ProfilerPlayer(kube=kube, server=tb.server, ca_file=tb.ca_file)
        phase = _wait_ready(kube, player, name, args.timeout, console)
        console.print()
        print(tb.kubectl("get", "llmd", "-n", "default", "-o", "wide").stdout, flush=True)
        _summary(console, kube, name)
        if phase != "Ready":
            console.print(f"[red]not Ready after {args.timeout:.0f}s[/red]; operator log tail:")
            console.print(log_path.read_text()[-3000:])
            return 1
        if args.keep:
            console.print(
                f"\nleft running. export KUBECONFIG={tb.kubeconfig}\nstop with: hack/testbed/down {tb.dir}"
            )
        return 0
    finally:
        if not args.keep:
            if operator is not None:
                os.killpg(operator.pid, signal.SIGTERM)
                operator.wait(timeout=20)
            tb.down()


def _name_of(path: str) -> str:
    import yaml

    return yaml.safe_load(Path(path).read_text())["metadata"]["name"]


def _wait_ready(kube, player, name, timeout, console) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        player.play_once("default")
        obj = kube.get("LLMDeployment", "default", name) or {}
        status = obj.get("status") or {}
        phase = status.get("phase")
        if (phase, status.get("message")) != last:
            console.print(f"  {phase or 'Pending':<10} {status.get('message', '')}")
            last = (phase, status.get("message"))
        if phase in ("Ready", "Failed"):
            return phase
        time.sleep(0.3)
    return last[0] if last else "Pending"


def _summary(console, kube, name) -> None:
    from rich.table import Table

    obj = kube.get("LLMDeployment", "default", name)
    rec = (obj.get("status") or {}).get("recommendation") or {}
    if rec:
        console.print(f"[bold]decision[/bold]: {rec.get('explanation', '')}")
        console.print(f"vLLM flags per replica: {' '.join(rec.get('vllmArgs', []))}")
    table = Table(title="packed pods")
    for column in ("pod", "node", "phase", "vLLM replicas in pod", "GPU request"):
        table.add_column(column)
    for pod in kube.list("Pod", "default", label_selector=f"llmpack.io/llmdeployment={name}"):
        spec = pod["spec"]
        replicas = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        replicas = replicas or [c for c in spec["containers"] if c["name"].startswith("vllm")]
        requests = [f"claim {c['resourceClaimTemplateName']}" for c in spec.get("resourceClaims", [])]
        for c in spec["containers"]:
            requests += [
                f"{k}={v}"
                for k, v in ((c.get("resources") or {}).get("limits") or {}).items()
                if k.startswith("nvidia.com/")
            ]
        table.add_row(
            pod["metadata"]["name"],
            spec.get("nodeName", "-"),
            (pod.get("status") or {}).get("phase", ""),
            str(len(replicas)),
            ", ".join(requests),
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
