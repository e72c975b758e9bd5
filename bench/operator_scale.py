"""The operator at scale on the testbed: many LLMDeployments with a cached profile.

    python -m bench.operator_scale [--count 1000] [--counts 10,100,300] [--control-plane-qps 500]
        [--results-dir DIR]

For each count N (10 always runs first: it is the baseline), on a fresh testbed with
max(100, N/8 + 1) fake nodes of 8 whole H100 80GB GPUs each: the profile cache holds the profile
(filed as the operator files one, see bench.common.seed_profile_cache), the operator runs as its own
process (`llmpack operator`, default 8 workers, plus a gauge of its API requests), one warm-up
LLMDeployment becomes Ready, then N LLMDeployments of OPT-1.3B (exclusive, one GPU each) are
created one after another through the API. Measured:

- time from the first create until every one is Ready (status.phase Ready for its generation),
  and per object; the baseline is the time per object at N = 10, so the ratio shows how the
  operator (and the control plane beside it on the same cores) scales;
- the operator's peak resident memory (VmHWM of /proc/<pid>/status), against the 10-object run;
- API requests the operator's KubeClient sent per reconcile (kopf's watch streams are extra and
  not counted), reconciles per LLMDeployment, and operator CPU seconds per LLMDeployment;
- steady state: once all are Ready and the operator is idle, one node's label changes (what the
  cluster offers may have changed, so every LLMDeployment gets a pass, as after a resync), and the
  N passes over unchanged LLMDeployments whose objects already match are measured: API requests
  and operator CPU per reconcile.

The testbed's Service range is widened to a /16 (its /24 holds 253 Services, one per
LLMDeployment). The testbed's controller-manager and scheduler keep their default client rate
limits (20 and 50 API requests/s), which pace ReplicaSets, pods and their status at this scale;
`--control-plane-qps` runs every count a second time with those limits raised, which leaves the
operator and the shared CPU as the limit.

Goals: 1,000 LLMDeployments Ready in <= 120 s, operator peak RSS <= 300 MiB; at N = 1,000, at most
1 API request per steady-state reconcile, and from create to Ready at most 3 requests per reconcile
and 25 ms of operator CPU per LLMDeployment.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

from bench.common import (
    OperatorProcess,
    Result,
    Table,
    Watcher,
    add_results_argument,
    cpu_seconds,
    create_namespace,
    emit,
    import_testbed,
    is_ready,
    kube_client,
    llmd_path,
    llmdeployment,
    percentile,
    results_dir_arg,
    seed_profile_cache,
    start_testbed,
)

BASELINE_COUNT = 10
GPUS_PER_NODE = 8
MIN_NODES = 100
NAMESPACE = "bench-scale"
WARMUP_NAMESPACE = "bench-warmup"
SPEC = {
    "model": {"name": "facebook/opt-1.3b"},
    "workload": {"promptTokens": 256, "outputTokens": 256},
    "sharing": {"mode": "exclusive"},
    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 1},
}
# Every LLMDeployment has a ClusterIP Service; the testbed's default range holds only 253.
SERVICE_CIDR = "10.0.0.0/16"
GOAL_SECONDS = 120.0
GOAL_RSS_MIB = 300.0
GOAL_COUNT = 1000


@dataclass(frozen=True)
class ScaleRun:
    count: int
    nodes: int
    create_s: float  # creating the N objects (the client's part)
    all_deployments_s: float  # first create -> the operator has created every serving Deployment
    all_ready_s: float  # first create -> last Ready
    latency_p50_s: float  # one object's create -> Ready
    latency_p99_s: float
    reconciles: int
    requests: int
    peak_rss_mib: float
    idle_rss_mib: float  # after the warm-up, before the N objects
    control_plane_qps: int | None  # the controller-manager's and scheduler's --kube-api-qps, if raised
    cpu_s: float  # operator CPU time during the run
    cpu_by_process: dict[str, float]  # CPU seconds of every process of the run, the operator's too
    steady_reconciles: int = 0  # passes over the N unchanged, Ready LLMDeployments
    steady_requests: int = 0
    steady_cpu_s: float = 0.0

    @property
    def steady_requests_per_reconcile(self) -> float:
        return self.steady_requests / self.steady_reconciles if self.steady_reconciles else float("nan")

    @property
    def steady_cpu_ms_per_reconcile(self) -> float:
        return 1000 * self.steady_cpu_s / self.steady_reconciles if self.steady_reconciles else float("nan")

    @property
    def operator_cpu_share(self) -> float:
        return self.cpu_s / sum(self.cpu_by_process.values())

    @property
    def per_object_ms(self) -> float:
        return 1000 * self.all_ready_s / self.count

    @property
    def requests_per_reconcile(self) -> float:
        return self.requests / self.reconciles if self.reconciles else float("nan")


def nodes_for(count: int) -> int:
    """Nodes with a GPU for each LLMDeployment and the warm-up one, and a node to spare."""
    return max(MIN_NODES, math.ceil((count + 1) / GPUS_PER_NODE) + 1)


def raise_control_plane_qps(tb, qps: int) -> None:
    """Restart the controller-manager and the scheduler with --kube-api-qps `qps` (their default,
    20 and 50 requests/s, paces the ReplicaSets and pods of 1,000 Deployments)."""
    for name in ("kube-controller-manager", "kube-scheduler"):
        args = [a for a in tb.launches[name][0] if not a.startswith(("--kube-api-qps", "--kube-api-burst"))]
        tb.launches[name][0] = [*args, f"--kube-api-qps={qps}", f"--kube-api-burst={2 * qps}"]
        tb.restart(name)


def measure(
    count: int, timeout: float | None = None, log=print, control_plane_qps: int | None = None
) -> ScaleRun:
    testbed = import_testbed()
    nodes = nodes_for(count)
    log(f"operator_scale: {count} LLMDeployments on {nodes} nodes: starting a testbed")
    tb = start_testbed(
        objects=testbed.whole_gpu_nodes(nodes, prefix="gpu-scale"), timeout=180, service_cidr=SERVICE_CIDR
    )
    operator = watcher = deployments = None
    try:
        if control_plane_qps:
            raise_control_plane_qps(tb, control_plane_qps)
        kube = kube_client(tb)
        seed_profile_cache(kube, SPEC, [NAMESPACE, WARMUP_NAMESPACE])
        for namespace in (NAMESPACE, WARMUP_NAMESPACE):
            create_namespace(kube, namespace)
        operator = OperatorProcess(tb)
        watcher = Watcher(kube, llmd_path(), is_ready)
        kube.create(llmdeployment("warmup", WARMUP_NAMESPACE, SPEC))
        watcher.wait(["warmup"], timeout=120)
        deployments = Watcher(kube, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
        requests0, reconciles0 = operator.counters()
        cpu0 = operator.cpu_seconds()
        processes = {**tb.pids, "operator": operator.pid, "benchmark client": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        idle_rss = operator.status_kib("VmRSS") / 1024
        names = [f"llmd-{i:05d}" for i in range(count)]
        created: dict[str, float] = {}
        log(f"operator_scale: creating {count}")
        started = time.perf_counter()
        for name in names:
            kube.create(llmdeployment(name, NAMESPACE, SPEC))
            created[name] = time.perf_counter()
        create_s = time.perf_counter() - started
        deadline = time.monotonic() + (timeout or max(300.0, 1.5 * count))
        while True:
            try:
                ready = watcher.wait(names, timeout=min(15.0, max(deadline - time.monotonic(), 0.1)))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                waited = time.perf_counter() - started
                log(f"operator_scale: {watcher.count() - 1}/{count} Ready after {waited:.0f} s")
        all_ready = max(ready.values()) - started
        all_deployments = max(deployments.wait(names, timeout=10).values()) - started
        requests1, reconciles1 = operator.counters()
        cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        cpu_run = operator.cpu_seconds() - cpu0
        steady = steady_state(kube, operator, count, log)
        latencies = [ready[n] - created[n] for n in names]
        run = ScaleRun(
            count=count,
            nodes=nodes,
            create_s=create_s,
            all_deployments_s=all_deployments,
            all_ready_s=all_ready,
            latency_p50_s=percentile(latencies, 0.5),
            latency_p99_s=percentile(latencies, 0.99),
            reconciles=round(reconciles1 - reconciles0),
            requests=round(requests1 - requests0),
            peak_rss_mib=operator.status_kib("VmHWM") / 1024,
            idle_rss_mib=idle_rss,
            cpu_s=cpu_run,
            cpu_by_process=cpu_used,
            control_plane_qps=control_plane_qps,
            steady_reconciles=steady[0],
            steady_requests=steady[1],
            steady_cpu_s=steady[2],
        )
        log(
            f"operator_scale: {count} Ready in {all_ready:.1f} s; {run.reconciles} reconciles, "
            f"{run.requests} requests, peak RSS {run.peak_rss_mib:.0f} MiB"
        )
        return run
    finally:
        for stream in (watcher, deployments):
            if stream is not None:
                stream.stop()
        if operator is not None:
            operator.stop()
        tb.down()


def wait_idle(operator, quiet_s: float = 3.0, timeout: float = 120.0) -> tuple[float, float]:
    """The operator's (requests, reconciles) once no reconcile has finished for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last = operator.counters()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = operator.counters()
        if now[1] != last[1]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


def steady_state(kube, operator, count: int, log) -> tuple[int, int, float]:
    """(reconciles, API requests, operator CPU seconds) of one pass over every Ready, unchanged
    LLMDeployment, triggered by a label change on one node (every plan may depend on the nodes)."""
    requests0, reconciles0 = wait_idle(operator)
    cpu0 = operator.cpu_seconds()
    node = kube.list("Node")[0]["metadata"]["name"]
    kube.merge_patch(
        "Node", None, node, {"metadata": {"labels": {"llmpack.io/bench-resync": str(time.time_ns())}}}
    )
    deadline = time.monotonic() + max(60.0, count / 10)
    while time.monotonic() < deadline and operator.counters()[1] < reconciles0 + count + 1:
        time.sleep(0.5)
    requests1, reconciles1 = wait_idle(operator)
    cpu = operator.cpu_seconds() - cpu0
    done = round(reconciles1 - reconciles0)
    log(f"operator_scale: steady state: {done} reconciles, {round(requests1 - requests0)} requests")
    return done, round(requests1 - requests0), cpu


def table(runs: list[ScaleRun]) -> Table:
    base = runs[0]
    qps = base.control_plane_qps
    where = f", controller-manager and scheduler at {qps} QPS" if qps else ""
    out = Table(
        f"LLMDeployments until all Ready (baseline: time per object at N = {base.count}{where})",
        [
            "N",
            "nodes",
            "all Deployments s",
            "all Ready s",
            "per object ms",
            "per object vs N=10",
            "create->Ready p50 s",
            "p99 s",
            "reconciles/object",
            "API requests/reconcile",
            "operator CPU ms/object",
            "steady: requests/reconcile",
            "steady: CPU ms/reconcile",
            "operator share of CPU",
            "peak RSS MiB",
            "RSS vs N=10",
        ],
        note="Everything (API server, etcd, scheduler, controller-manager, kwok, the operator, this client) "
        "shares the machine's cores; operator share of CPU: its CPU seconds over all of theirs from the "
        "first create to the last Ready. Requests: the operator's KubeClient only (not kopf's watches). "
        "Steady: one pass over every Ready, unchanged LLMDeployment (triggered by a node label change).",
    )
    for r in runs:
        out.add(
            r.count,
            r.nodes,
            f"{r.all_deployments_s:.1f}",
            f"{r.all_ready_s:.1f}",
            f"{r.per_object_ms:.0f}",
            f"{r.per_object_ms / base.per_object_ms:.2f}x",
            f"{r.latency_p50_s:.2f}",
            f"{r.latency_p99_s:.2f}",
            f"{r.reconciles / r.count:.2f}",
            f"{r.requests_per_reconcile:.2f}",
            f"{1000 * r.cpu_s / r.count:.0f}",
            f"{r.steady_requests_per_reconcile:.2f}",
            f"{r.steady_cpu_ms_per_reconcile:.1f}",
            f"{r.operator_cpu_share:.0%}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.peak_rss_mib / base.peak_rss_mib:.2f}x",
        )
    return out


GOAL_STEADY_REQUESTS = 1.0
GOAL_REQUESTS_PER_RECONCILE = 3.0
GOAL_CPU_MS = 25.0


def work_note(run: ScaleRun) -> str:
    """The operator's own work at the largest N against the goals."""

    def verdict(value: float, goal: float) -> str:
        return "met" if value <= goal else "NOT met"

    cpu_ms = 1000 * run.cpu_s / run.count
    steady = run.steady_requests_per_reconcile
    return (
        f"Operator work at N = {run.count}: {steady:.2f} API requests per "
        f"steady-state reconcile ({verdict(steady, GOAL_STEADY_REQUESTS)}, goal <= "
        f"{GOAL_STEADY_REQUESTS:g}); create to Ready {run.requests_per_reconcile:.2f} requests per reconcile "
        f"({verdict(run.requests_per_reconcile, GOAL_REQUESTS_PER_RECONCILE)}, goal <= "
        f"{GOAL_REQUESTS_PER_RECONCILE:g}) and {cpu_ms:.0f} ms of operator CPU per LLMDeployment "
        f"({verdict(cpu_ms, GOAL_CPU_MS)}, goal <= {GOAL_CPU_MS:g} ms)."
    )


def goal_notes(runs: list[ScaleRun]) -> list[str]:
    notes = [work_note(runs[-1])]
    largest = runs[-1]
    if largest.count >= GOAL_COUNT:
        time_ok = "met" if largest.all_ready_s <= GOAL_SECONDS else "NOT met"
        rss_ok = "met" if largest.peak_rss_mib <= GOAL_RSS_MIB else "NOT met"
        notes.append(
            f"Goal at {largest.count}: all Ready in {largest.all_ready_s:.0f} s "
            f"({time_ok}, goal <= {GOAL_SECONDS:.0f} s); "
            f"peak RSS {largest.peak_rss_mib:.0f} MiB "
            f"({rss_ok}, goal <= {GOAL_RSS_MIB:.0f} MiB)."
        )
    else:
        per_object = largest.all_ready_s / largest.count
        notes.append(
            f"Not run at {GOAL_COUNT} here (largest N = {largest.count}; `--count {GOAL_COUNT}` runs it). "
            f"Extrapolating the largest run linearly gives {per_object * GOAL_COUNT:.0f} s for "
            f"{GOAL_COUNT} (goal <= {GOAL_SECONDS:.0f} s); peak RSS {largest.peak_rss_mib:.0f} MiB at "
            f"N = {largest.count} (goal <= {GOAL_RSS_MIB:.0f} MiB at {GOAL_COUNT})."
        )
    return notes


def busy(run: ScaleRun) -> float:
    return sum(run.cpu_by_process.values()) / (run.all_ready_s * (os.cpu_count() or 1))


def cpu_note(run: ScaleRun) -> str:
    total = sum(run.cpu_by_process.values())
    parts = sorted(run.cpu_by_process.items(), key=lambda item: -item[1])
    shares = ", ".join(f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in parts)
    cores = os.cpu_count() or 1
    return (
        f"CPU at N = {run.count}: {total:.1f} CPU seconds in {run.all_ready_s:.0f} s on {cores} cores "
        f"({busy(run):.0%} busy): {shares}."
    )


def split_note(runs: list[ScaleRun]) -> str:
    largest = runs[-1]
    return (
        f"At N = {largest.count} the operator had created every serving Deployment "
        f"{largest.all_deployments_s:.0f} s after the first create, of the {largest.all_ready_s:.0f} s until "
        "all were Ready; the rest is the controller-manager and scheduler turning Deployments into "
        "ReplicaSets, pods and ready status, and the operator's passes that see it."
    )


def run(counts: list[int], timeout: float | None = None, control_plane_qps: int | None = None) -> Result:
    """Every count on the testbed as it is; with `control_plane_qps`, every count again with the
    controller-manager and scheduler allowed that many API requests per second."""
    counts = sorted(set(counts) | {BASELINE_COUNT})

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    runs = [measure(n, timeout, log) for n in counts]
    raised = [measure(n, timeout, log, control_plane_qps) for n in counts] if control_plane_qps else []
    notes = [*goal_notes(runs), cpu_note(runs[-1]), split_note(runs)]
    if raised:
        notes += [
            f"With the controller-manager and scheduler at {control_plane_qps} QPS (second table): "
            + goal_notes(raised)[0],
            cpu_note(raised[-1]),
            "Their default client rate limits (20 and 50 requests/s) pace the first table: the machine's "
            f"cores were {busy(runs[-1]):.0%} busy there and {busy(raised[-1]):.0%} with the limits raised. "
            "Real clusters run the controller-manager with the same default unless tuned.",
        ]
    qps_flag = f" --control-plane-qps {control_plane_qps}" if control_plane_qps else ""
    return Result(
        name="operator_scale",
        title="Operator scale: LLMDeployments with cached profiles on fake GPU nodes",
        summary=(__doc__ or "").split("\n\n", 2)[2].strip(),
        tables=[table(runs), *([table(raised)] if raised else [])],
        notes=[
            *notes,
            f"Spec of every LLMDeployment: {SPEC}; profile cached before the operator starts, so no "
            "profiling Job runs; one warm-up LLMDeployment is Ready before the clock starts.",
        ],
        command=f"python -m bench.operator_scale --counts {','.join(map(str, counts))}{qps_flag}",
    )


def parse_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give positive whole numbers, e.g. 10,100,300")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--count", type=int, help=f"the largest N (the issue's is {GOAL_COUNT}); runs {BASELINE_COUNT} and it"
    )
    parser.add_argument(
        "--counts", type=parse_counts, help="several N, e.g. 10,100,300,1000 (default 10,100)", default=None
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds to wait for all Ready (default max(300, 1.5 N))"
    )
    parser.add_argument(
        "--control-plane-qps",
        type=int,
        metavar="QPS",
        help="run every count a second time with the testbed's controller-manager and scheduler "
        "at this --kube-api-qps (theirs: 20 and 50), to see the operator's part",
    )
    add_results_argument(parser)
    args = parser.parse_args(argv)
    counts = list(args.counts or ([] if args.count else [10, 100]))
    if args.count:
        counts.append(args.count)
    emit(run(counts, args.timeout, args.control_plane_qps), results_dir_arg(args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
