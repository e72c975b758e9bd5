"""`make demo`: the whole product on this machine, no GPU and no cluster needed.

Starts the local control plane with fake GPU nodes (hack/testbed), installs the CRD, runs the
operator, applies examples/opt-1.3b-mps-dra.yaml, plays the profiling container (the simulated
backend, as the Job's own ServiceAccount), waits for Ready, and prints what `kubectl get llmd`
shows and where the packed replicas run. Stops everything it started unless --keep.

`make demo ENGINE=vllm` (`--engine vllm`) does the same with the real engine: vLLM's CPU build
(hack/engine/install, ~3 min and ~6 GB the first time) profiles a tiny Llama-style model generated
here (hack/engine/tiny_models.py), the profiling Job's own command runs on it, and the demo prints
what the engine measured. The example's model is replaced by the tiny model's folder and its
workload by a short one (32 + 32 tokens), so the sweep takes about a minute and a half.
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
# The cost columns need a price per GPU-hour (chart value cost.gpuHourPrices); the demo shows them
# at this round, illustrative figure (USD), not a quote of any cloud.
DEMO_PRICE = "NVIDIA-H100-80GB-HBM3=2.50"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default=str(ROOT / "examples" / "opt-1.3b-mps-dra.yaml"))
    parser.add_argument("--keep", action="store_true", help="leave the testbed and operator running")
    parser.add_argument(
        "--gpu-hour-price",
        action="append",
        default=None,
        metavar="PRODUCT=PRICE",
        help=f"what a GPU-hour costs, for the cost columns (default: an illustrative {DEMO_PRICE}, not a quote)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="default 180 s, 900 s with --engine vllm")
    parser.add_argument(
        "--engine",
        choices=("simulated", "vllm"),
        default="simulated",
        help="who plays the profiling container: the simulated backend, or vLLM's CPU build on a tiny model",
    )
    args = parser.parse_args()
    args.timeout = args.timeout or (900.0 if args.engine == "vllm" else 180.0)

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
                    *(f"--gpu-hour-price={price}" for price in args.gpu_hour_price or [DEMO_PRICE]),
                ],
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        console.print(f"operator running (log: {log_path})")
        from llmpack.controller.client import KubeClient

        kube = KubeClient.from_config(str(tb.kubeconfig))
        if args.engine == "vllm":
            manifest, engine_env = _engine_example(args.example, console)
            player = ProfilerPlayer(
                kube=kube, server=tb.server, ca_file=tb.ca_file, backend=None, env=engine_env, timeout_s=args.timeout
            )
        else:
            manifest = Path(args.example).read_text()
            player = ProfilerPlayer(kube=kube, server=tb.server, ca_file=tb.ca_file)
        tb.kubectl("apply", "-n", "default", "-f", "-", input=manifest)
        name = _name_of(manifest)
        console.print(f"applied {Path(args.example).name}: LLMDeployment default/{name}")
        phase = _wait_ready(kube, player, name, args.timeout, console)
        console.print()
        print(tb.kubectl("get", "llmd", "-n", "default", "-o", "wide").stdout, flush=True)
        _summary(console, kube, name)
        if args.engine == "vllm":
            _engine_measured(console, kube, name, player)
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


def _name_of(manifest: str) -> str:
    import yaml

    return yaml.safe_load(manifest)["metadata"]["name"]


def _engine_example(example: str, console) -> tuple[str, dict[str, str]]:
    """The example with a tiny model on the real engine, and the environment that finds vLLM."""
    import json

    import yaml

    console.print("installing or reusing vLLM's CPU build (hack/engine/install) ...")
    install = subprocess.run([str(ROOT / "hack/engine/install")], check=True, capture_output=True, text=True)
    python = Path(install.stdout.strip().splitlines()[-1])
    env = {
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    made = subprocess.run(
        [str(python), str(ROOT / "hack/engine/tiny_models.py"), "--only", "llama-gqa"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    model = json.loads(made.stdout.strip().splitlines()[-1])["path"]
    console.print(f"tiny model: {model}")
    obj = yaml.safe_load(Path(example).read_text())
    spec = obj["spec"]
    spec["model"] = {"name": model}
    spec["workload"] = {"promptTokens": 32, "outputTokens": 32}
    spec.pop("slo", None)
    spec.setdefault("advisor", {})["candidateBatchSizes"] = [1, 2, 4, 8, 16]
    spec["profiling"] = {**spec.get("profiling", {}), "backend": "vllm", "timeoutSeconds": 900}
    return yaml.safe_dump(obj), env


def _engine_measured(console, kube, name, player) -> None:
    """What the engine reported and measured, from the published profile."""
    from rich.table import Table

    from llmpack.api.profile import Profile

    obj = kube.get("LLMDeployment", "default", name) or {}
    ref = (obj.get("status") or {}).get("profileRef") or {}
    cm = kube.get("ConfigMap", ref["namespace"], ref["configMap"]) if ref else None
    if not cm or "profile.json" not in (cm.get("data") or {}):
        console.print(f"[red]no published profile found[/red] ({ref}); player: {player.log}")
        return
    p = Profile.from_json(cm["data"]["profile.json"])
    e = p.engine
    console.print(
        f"[bold]engine[/bold]: vLLM {e.version} on {e.device}, dtype {e.config.get('dtype')}, KV cache dtype "
        f"{e.kv_cache_dtype}, prefix caching {e.config.get('enable_prefix_caching')}; "
        f"--kv-cache-memory-bytes {e.kv_cache_memory_bytes} held {p.kv_capacity_tokens} tokens in blocks of "
        f"{p.block_size} ({p.model.kv_bytes_per_token} bytes per token)"
    )
    table = Table(title="what the engine measured")
    for column in ("B", "tokens/s", "mean ITL ms", "p99 TTFT ms", "KV peak", "preempted"):
        table.add_column(column, justify="right")
    for point in p.points:
        table.add_row(
            str(point.max_num_seqs),
            f"{point.total_tokens_per_s:,.0f}",
            f"{point.itl_or_tpot_mean_ms or 0:.2f}",
            f"{point.ttft_p99_ms or 0:.1f}",
            f"{point.kv_cache_usage_peak or 0:.1%}",
            str(point.preemptions),
        )
    console.print(table)
    for note in p.notes:
        console.print(f"note: {note}")


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
        if rec.get("basis") != "measured":
            console.print(
                f"[yellow]figures {rec.get('basis')}[/yellow]: Gain, tokens/s and cost are not a "
                f"measurement of {obj['spec']['gpu']['product']}"
            )
        if cost := rec.get("cost"):
            console.print(
                f"cost at {cost['gpuHourPrice']} {cost['currency']} per GPU-hour (illustrative unless you "
                f"set --gpu-hour-price): {cost['costPerHour']} per hour, "
                f"{cost.get('costPerMillionTokens')} per million tokens at the advised load, "
                f"saving {cost.get('saving')} against one vLLM instance per GPU"
            )
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
