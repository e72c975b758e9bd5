"""Autoscaling on the testbed: how fast load turns into serving GPUs, and GPUs used over a load curve.

    python -m bench.autoscaling [--steps 8] [--curve 0.4,1.3,2.6,3.7,2.2,1.1,0.3] [--hold 3]
                                [--results-dir DIR]

A fresh testbed with the real HPA controller of kube-controller-manager (sync period
testbed.HPA_SYNC_PERIOD_SECONDS), the operator as its own process, the profile of
examples/opt-1.3b-mps-dra.yaml in its cache, and that example with spec.autoscaling (minGPUs 1,
maxGPUs 4, targetUtilization 0.8, no stabilization window). The per-pod metric, requests running
plus waiting, comes from the testbed's custom.metrics.k8s.io server (hack/testbed/custom_metrics.py):
nothing generates real load, so the load is a number of sequences this benchmark sets.

1. Reaction: `--steps` times, the load goes from 1 GPU's worth to 2.5 and back to 0. Timed from
   the metric change to the HPA's first read of it, to its scale (spec.gpu.count), to the new GPUs'
   pods Ready (status Ready on that many GPUs), in seconds and in HPA sync periods. The baseline is
   the sync period itself: the HPA cannot see a change sooner than its next period.
2. Load curve: the load (in GPUs' worth at the target) follows `--curve`, each level held `--hold`
   sync periods; every 0.5 s the per-pod value is the load over the pods serving then. GPU-seconds
   used by the autoscaled deployment against a fixed deployment sized for the curve's peak
   (ceil(peak) GPUs all along), and the share of time the GPUs in use were below the load's need
   (ceil(load)): the cost of reacting one period late.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import yaml

from bench.common import (
    ROOT,
    OperatorProcess,
    Result,
    Table,
    add_results_argument,
    create_namespace,
    emit,
    import_testbed,
    kube_client,
    llmdeployment,
    results_dir_arg,
    seed_profile_cache,
    start_testbed,
)

EXAMPLE = ROOT / "examples" / "opt-1.3b-mps-dra.yaml"
NAMESPACE = "bench-autoscaling"
NAME = "auto"
MAX_GPUS = 4
TARGET_UTILIZATION = 0.8
METRIC = "vllm_requests_in_flight"  # the operator's default --autoscaling-metric
FAST = {
    direction: {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Percent", "value": 900, "periodSeconds": 1}],
    }
    for direction in ("scaleUp", "scaleDown")
}


@dataclass
class Reaction:
    read_s: list[float] = field(default_factory=list)  # metric change -> the HPA's next query
    scaled_s: list[float] = field(default_factory=list)  # -> spec.gpu.count changed
    ready_s: list[float] = field(default_factory=list)  # -> every replica on the new GPUs Ready


@dataclass
class Curve:
    levels: list[float]
    hold_s: float
    gpu_seconds: float = 0.0
    fixed_gpu_seconds: float = 0.0
    short_s: float = 0.0  # time with fewer GPUs in use than ceil(load)
    duration_s: float = 0.0
    trace: list[tuple[float, float, int]] = field(default_factory=list)  # (t, load, GPUs in use)


class Bench:
    def __init__(self, tb, kube, metrics, period: float):
        self.tb, self.kube, self.metrics, self.period = tb, kube, metrics, period
        self.per_gpu = 0.0  # the HPA's target per pod: target utilisation x concurrency per GPU
        self.warmup_messages: dict[str, float] = {}  # why the HPA was not active yet, first seen

    def llmd(self) -> dict:
        return self.kube.get("LLMDeployment", NAMESPACE, NAME)

    def serving_gpus(self) -> int:
        """GPUs whose pods all serve now (status.gpus once Ready for the current generation)."""
        obj = self.llmd()
        status = obj.get("status") or {}
        if (
            status.get("observedGeneration") != obj["metadata"]["generation"]
            or status.get("phase") != "Ready"
        ):
            return min(status.get("gpus") or 0, obj["spec"]["gpu"]["count"])
        return status.get("gpus") or 0

    def hpa_active(self) -> bool:
        hpa = self.kube.get("HorizontalPodAutoscaler", NAMESPACE, NAME) or {}
        conditions = (hpa.get("status") or {}).get("conditions") or []
        for c in conditions:
            if c["status"] != "True":
                self.warmup_messages.setdefault(f"{c['type']}: {c.get('message', '')}", time.time())
        if not conditions:
            self.warmup_messages.setdefault(
                "no conditions yet (the HPA controller has not synced it)", time.time()
            )
        return any(c["type"] == "ScalingActive" and c["status"] == "True" for c in conditions)

    def pods(self) -> int:
        selector = f"llmpack.io/llmdeployment={NAME},app.kubernetes.io/component=serving"
        return len(self.kube.list("Pod", NAMESPACE, label_selector=selector)) or 1

    def set_load(self, gpus_worth: float) -> None:
        """Sequences in flight worth `gpus_worth` GPUs at the target, spread over today's pods."""
        self.metrics.set(NAMESPACE, METRIC, gpus_worth * self.per_gpu / self.pods())

    def wait(self, probe, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:.0f} s")

    def step(self, load: float, gpus: int, reaction: Reaction) -> None:
        changed = time.time()
        self.set_load(load)
        scaled = self.wait(lambda: self.llmd()["spec"]["gpu"]["count"] == gpus)
        ready = self.wait(
            lambda: self.serving_gpus() == gpus and self.llmd()["status"].get("phase") == "Ready"
        )
        read = min((q.at for q in self.metrics.queries_since(changed, NAMESPACE)), default=scaled)
        reaction.read_s.append(read - changed)
        reaction.scaled_s.append(scaled - changed)
        reaction.ready_s.append(ready - changed)

    def reaction(self, steps: int) -> Reaction:
        reaction = Reaction()
        for _ in range(steps):
            self.step(2.5, 3, reaction)
            self.set_load(0)
            self.wait(lambda: self.serving_gpus() == 1 and self.llmd()["spec"]["gpu"]["count"] == 1)
            # the next change lands at a random point of the HPA's period
            time.sleep(self.period + random.uniform(0, self.period))
        return reaction

    def curve(self, levels: list[float], hold_periods: float) -> Curve:
        curve = Curve(levels, hold_periods * self.period)
        fixed = math.ceil(max(levels))
        tick = 0.5
        started = last = time.monotonic()
        for load in levels:
            until = time.monotonic() + curve.hold_s
            while time.monotonic() < until:
                self.set_load(load)
                time.sleep(tick)
                now = time.monotonic()
                gpus = self.serving_gpus()
                dt = now - last
                last = now
                curve.gpu_seconds += gpus * dt
                curve.fixed_gpu_seconds += fixed * dt
                if gpus < math.ceil(load):
                    curve.short_s += dt
                curve.trace.append((now - started, load, gpus))
        curve.duration_s = time.monotonic() - started
        return curve


def measure(
    steps: int, levels: list[float], hold_periods: float, log=print
) -> tuple[Reaction, Curve, float, dict]:
    testbed = import_testbed()
    from custom_metrics import CustomMetrics  # hack/testbed, on the path import_testbed set

    log("autoscaling: starting a testbed")
    tb = start_testbed()
    operator = metrics = None
    try:
        kube = kube_client(tb)
        spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
        spec["autoscaling"] = {
            "minGPUs": 1,
            "maxGPUs": MAX_GPUS,
            "targetUtilization": TARGET_UTILIZATION,
            "behavior": FAST,
        }
        seed_profile_cache(kube, spec, [NAMESPACE])
        create_namespace(kube, NAMESPACE)
        metrics = CustomMetrics(tb).start()
        metrics.set(NAMESPACE, METRIC, 0)
        operator = OperatorProcess(tb)
        bench = Bench(tb, kube, metrics, testbed.HPA_SYNC_PERIOD_SECONDS)
        kube.create(llmdeployment(NAME, NAMESPACE, spec))
        bench.wait(lambda: bench.serving_gpus() == 1, timeout=180)
        rec = bench.llmd()["status"]["recommendation"]
        bench.per_gpu = TARGET_UTILIZATION * rec["concurrencyPerGPU"]
        # Steady state first: the HPA has read the metric and computed a count (ScalingActive).
        created = time.time()
        bench.wait(bench.hpa_active, timeout=180)
        warmup = time.time() - created
        log(f"autoscaling: {steps} step(s) of 1 -> 3 GPUs")
        reaction = bench.reaction(steps)
        log(f"autoscaling: load curve {levels}, each held {hold_periods:g} periods")
        curve = bench.curve(levels, hold_periods)
        rec["hpaWarmupSeconds"] = warmup
        rec["hpaWarmupMessages"] = [
            f"{m} (at +{t - created:.0f} s)" for m, t in bench.warmup_messages.items()
        ]
        return reaction, curve, bench.period, rec
    finally:
        if operator is not None:
            operator.stop()
        if metrics is not None:
            metrics.stop()
        tb.down()


def tables(reaction: Reaction, curve: Curve, period: float, rec: dict) -> list[Table]:
    react = Table(
        f"Load change -> serving GPUs, {len(reaction.ready_s)} step(s) of 1 -> 3 GPUs "
        f"(HPA sync period {period:g} s)",
        ["from the metric change to", "median s", "max s", "median x period", "each step s"],
        note="The HPA reads the metric once per sync period, so the first row is where in its period "
        "the change landed; the scale follows in the same HPA pass, the pods on the fake nodes in the "
        "operator's next reconcile. Measured once the HPA is active: from the LLMDeployment Ready to "
        f"the HPA's ScalingActive condition took {rec['hpaWarmupSeconds']:.0f} s; until then it said: "
        + ("; ".join(rec["hpaWarmupMessages"]) or "nothing"),
    )
    for label, values in (
        ("the HPA's next read", reaction.read_s),
        ("the HPA's scale (spec.gpu.count)", reaction.scaled_s),
        ("the new GPUs' pods Ready", reaction.ready_s),
    ):
        react.add(
            label,
            f"{statistics.median(values):.1f}",
            f"{max(values):.1f}",
            f"{statistics.median(values) / period:.2f}",
            " ".join(f"{v:.1f}" for v in values),
        )
    used = Table(
        f"GPUs over a load curve of {len(curve.levels)} levels, {curve.duration_s:.0f} s",
        ["deployment", "GPU-seconds", "ratio", "time short of ceil(load)"],
        note=f"Load levels in GPUs' worth at the target ({TARGET_UTILIZATION:g} x "
        f"{rec['concurrencyPerGPU']} sequences per GPU): {curve_text(curve.levels)}, each held "
        f"{curve.hold_s:.0f} s. The fixed deployment has ceil(peak) GPUs all along (what serving the "
        "peak without autoscaling takes).",
    )
    used.add("fixed, sized for the peak (baseline)", f"{curve.fixed_gpu_seconds:.0f}", "1.00x", "0%")
    used.add(
        "autoscaled (spec.autoscaling)",
        f"{curve.gpu_seconds:.0f}",
        f"{curve.gpu_seconds / curve.fixed_gpu_seconds:.2f}x",
        f"{curve.short_s / curve.duration_s:.0%} ({curve.short_s:.0f} s)",
    )
    return [react, used]


def curve_text(levels: list[float]) -> str:
    return ",".join(f"{x:g}" for x in levels)


def run(steps: int, levels: list[float], hold: float) -> Result:
    reaction, curve, period, rec = measure(steps, levels, hold, log=lambda m: print(m, file=sys.stderr))
    return Result(
        name="autoscaling",
        title="Autoscaling: load change to serving GPUs, and GPUs used over a load curve",
        summary=(__doc__ or "").split("\n\n", 2)[2].strip(),
        tables=tables(reaction, curve, period, rec),
        command=f"python -m bench.autoscaling --steps {steps} --curve {curve_text(levels)} --hold {hold:g}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaling", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed 1 -> 3 GPU steps (default 8)")
    parser.add_argument(
        "--curve",
        default="0.4,1.3,2.6,3.7,2.2,1.1,0.3",
        help="load levels in GPUs' worth at the target (default 0.4,1.3,2.6,3.7,2.2,1.1,0.3)",
    )
    parser.add_argument("--hold", type=float, default=3, help="sync periods each level is held (default 3)")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    levels = [float(x) for x in args.curve.split(",")]
    if not levels or max(levels) > MAX_GPUS or min(levels) < 0:
        parser.error(f"--curve: levels between 0 and maxGPUs ({MAX_GPUS})")
    emit(run(args.steps, levels, args.hold), results_dir_arg(args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
