"""What every benchmark shares: tables printed with rich and written as Markdown to
bench/results/<name>.md with the date and the machine, and, for the benchmarks that run the
operator, the testbed, the operator process and the profile cache.

    python -m bench.common operator [llmpack operator flags]

runs `llmpack operator` exactly as `python -m llmpack.cli operator` does, plus one gauge on its
--metrics-port, `llmpack_bench_kube_requests`: the API requests its KubeClient has sent (the
client counts them; nothing else exposes the count outside the process). The benchmarks divide it
by `llmpack_reconcile_duration_seconds_count` for API requests per reconcile.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
TESTBED_DIR = ROOT / "hack" / "testbed"
CRD_FILE = ROOT / "crds" / "llmpack.io_llmdeployments.yaml"
OPERATOR_NAMESPACE = "llmpack-system"
REQUESTS_GAUGE = "llmpack_bench_kube_requests"
RECONCILES_METRIC = "llmpack_reconcile_duration_seconds_count"


# --- tables and result files -----------------------------------------------------------------


@dataclass
class Table:
    """One table of a result: a title, column headers, rows of already formatted cells, and a
    note printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        def row(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        aligns = ["---" if i == 0 else "--:" for i in range(len(self.columns))]
        lines = [f"### {self.title}", "", row(self.columns), "|" + "|".join(aligns) + "|"]
        lines += [row(r) for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def rich(self):
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, caption=self.note or None, caption_justify="left")
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
        for r in self.rows:
            table.add_row(*r)
        return table


@dataclass
class Result:
    """What one benchmark run measured: written to bench/results/<name>.md and printed."""

    name: str  # module name: bench/<name>.py, bench/results/<name>.md
    title: str
    summary: str  # what is measured against which baseline, in a paragraph
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    command: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    verbatim: str = ""  # a benchmark's own printed output, kept as it printed it

    def markdown(self) -> str:
        machine = self.machine or machine_facts()
        lines = [
            f"# {self.title}",
            "",
            self.summary,
            "",
            f"- Date: {machine['date']}",
            f"- Machine: {machine_line(machine)}",
            f"- Command: `{self.command or 'python -m bench.' + self.name}`",
            f"- Commit: {machine['commit']}",
            "",
        ]
        for table in self.tables:
            lines += [table.markdown(), ""]
        if self.verbatim:
            lines += ["```", self.verbatim, "```", ""]
        if self.notes:
            lines += ["### Notes", ""]
            lines += [f"- {note}" for note in self.notes]
            lines.append("")
        return "\n".join(lines)


def machine_facts() -> dict[str, str]:
    """Date, CPUs, memory, Python and commit of this run (the figures depend on all of them)."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(usable),
        "cpu": cpu_model or platform.processor() or "unknown CPU",
        "memory": memory or "unknown",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "commit": _git_commit(),
    }


def machine_line(machine: dict[str, str]) -> str:
    return (
        f"nproc {machine['nproc']} ({machine['cpu']}), {machine['memory']} memory, "
        f"{machine['python']}, {machine['os']}"
    )


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() or "unknown"


def emit(result: Result, results_dir: str | Path | None = RESULTS_DIR) -> Path | None:
    """Print the result's tables with rich and write bench/results/<name>.md (unless
    `results_dir` is None). Returns the file written."""
    from rich.console import Console

    result.machine = result.machine or machine_facts()
    console = Console(width=None if sys.stdout.isatty() else 240)
    console.rule(result.title)
    console.print(result.summary, highlight=False)
    console.print(f"{result.machine['date']}; {machine_line(result.machine)}", highlight=False)
    for table in result.tables:
        console.print(table.rich())
    if result.verbatim:
        console.print(result.verbatim, highlight=False, markup=False)
    for note in result.notes:
        console.print(f"- {note}", highlight=False)
    if results_dir is None:
        return None
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.name}.md"
    path.write_text(result.markdown())
    console.print(f"written to {_relative(path)}", highlight=False)
    return path


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        default=str(RESULTS_DIR),
        metavar="DIR",
        help="where <name>.md goes (default bench/results); '-' prints only",
    )


def results_dir_arg(value: str) -> Path | None:
    return None if value == "-" else Path(value)


def paper_data_main(name: str, doc: str, run: Callable[[str | None], Result], argv: list[str] | None) -> int:
    """The command line of a benchmark over the paper's profiles: --paper-data and --results-dir."""
    command = f"python -m bench.{name}"
    parser = argparse.ArgumentParser(prog=command, description=doc.splitlines()[0])
    parser.add_argument("--paper-data", metavar="DIR", help="folder holding profiles.csv")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    result = run(args.paper_data)
    result.command = command
    emit(result, results_dir_arg(args.results_dir))
    return 0


# --- numbers ----------------------------------------------------------------------------------


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or
    below it (with 50 values, p99 is the largest)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


GIB = 1 << 30
MIB = 1 << 20


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


# --- the testbed and the operator (benchmarks that talk to a control plane) -------------------


def import_testbed():
    """hack/testbed/testbed.py (and player.py beside it), as the tests import them."""
    if str(TESTBED_DIR) not in sys.path:
        sys.path.insert(0, str(TESTBED_DIR))
    import testbed

    return testbed


def testbed_bin_dir() -> Path:
    """The control-plane binaries: $LLMPACK_TESTBED_BIN, else what hack/testbed/build prints
    (it builds them the first time, then only prints the folder)."""
    if os.environ.get("LLMPACK_TESTBED_BIN"):
        return Path(os.environ["LLMPACK_TESTBED_BIN"])
    build = subprocess.run([str(TESTBED_DIR / "build")], capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(f"hack/testbed/build failed:\n{build.stderr[-3000:]}")
    return Path(build.stdout.strip().splitlines()[-1])


def start_testbed(objects: list[dict] | None = None, timeout: float = 120, service_cidr: str | None = None):
    """A fresh testbed (its processes die with this one) with `objects` (default: the standard
    fake nodes), the CRD established and the operator's namespace created. `service_cidr`
    replaces the testbed's Service range (10.0.0.0/24: 253 Services, one per LLMDeployment)."""
    testbed = import_testbed()
    if service_cidr is not None:
        testbed.SERVICE_CIDR = service_cidr  # read by up() when it starts the API server
    tb = testbed.up(testbed_bin_dir(), objects=objects, timeout=timeout, die_with_parent=True)
    try:
        tb.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        tb.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=60s")
        tb.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    except BaseException:
        tb.down()
        raise
    return tb


def kube_client(tb):
    from llmpack.controller.client import KubeClient

    return KubeClient.from_config(str(tb.kubeconfig))


def create_namespace(kube, name: str, timeout: float = 30) -> None:
    """A namespace whose `default` ServiceAccount exists (pods need it)."""
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    deadline = time.monotonic() + timeout
    while kube.get("ServiceAccount", name, "default") is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {name}: no default ServiceAccount after {timeout:.0f} s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the operator when the benchmark dies (Linux prctl), as the
    testbed's components do, so an interrupted run leaves nothing behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class OperatorProcess:
    """`llmpack operator` as its own process (as the e2e tests run it) with the request gauge, its
    metrics on a free port, its log in a temporary file."""

    def __init__(self, tb, workers: int | None = None, log_level: str = "WARNING"):
        self.metrics_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="llmpack-bench-operator-", suffix=".log")[1])
        argv = [sys.executable, "-m", "bench.common", "operator"]
        argv += ["--operator-namespace", OPERATOR_NAMESPACE, "--metrics-port", str(self.metrics_port)]
        argv += ["--liveness", "", "--log-level", log_level]
        if workers is not None:
            argv += ["--workers", str(workers)]
        env = {**tb.env(), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait_metrics()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_metrics(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no operator metrics after {timeout:.0f} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus metrics, unlabelled samples and label sets as written."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def counters(self) -> tuple[float, float]:
        """(API requests sent by the operator's KubeClient, reconciles finished) so far."""
        samples = self.metrics()
        return samples.get(REQUESTS_GAUGE, 0.0), samples.get(RECONCILES_METRIC, 0.0)

    def status_kib(self, field_name: str) -> int:
        """A figure of /proc/<pid>/status in KiB: VmHWM is the peak resident set, VmRSS the current."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no {field_name}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator process has used."""
        return cpu_seconds(self.pid)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


def llmdeployment(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def seed_profile_cache(kube, spec: dict[str, Any], namespaces: Sequence[str]) -> list[str]:
    """Put the profile the operator would measure for `spec` into its cache, as the operator
    itself files one: the profiling Job's own `llmpack profile` arguments run here with the
    simulated backend (what hack/testbed/player.py does on the testbed), the result stored with
    the operator's ProfileCache under the operator's key for each of `namespaces` (keys are per
    namespace, the chart's default). Returns the keys."""
    from llmpack.api.llmdeployment import LLMDeploymentSpec
    from llmpack.api.profile import Profile
    from llmpack.controller.cache import ProfileCache
    from llmpack.controller.reconciler import OperatorConfig
    from llmpack.planner.planning import profile_key, profiling_plan
    from llmpack.render.plan import OwnerRef

    parsed = LLMDeploymentSpec.model_validate(spec)
    config = OperatorConfig(operator_namespace=OPERATOR_NAMESPACE)
    image = parsed.profiling.image or config.profiler_image
    keys = [profile_key(parsed, image, scope=namespace) for namespace in namespaces]
    owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="seed", uid="seed")
    plan = profiling_plan(name="seed", namespace="seed", owner=owner, spec=parsed, key=keys[0], image=image)
    args = _without_flags(plan.args, ("--result-configmap", "--profile-key", "--backend"))
    with tempfile.TemporaryDirectory(prefix="llmpack-bench-profile-") as tmp:
        out = Path(tmp) / "profile.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "llmpack.cli",
                "profile",
                "--backend",
                "simulated",
                *args,
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"llmpack profile failed: {done.stderr[-2000:]}")
        profile = Profile.load(out)
    cache = ProfileCache(kube, OPERATOR_NAMESPACE)
    for key in keys:
        cache.put(key, profile.model_copy(update={"key": key}))
    return keys


def _without_flags(args: list[str], flags: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


class Watcher:
    """Records when each object of one kind first satisfied a predicate, from a watch stream in a
    thread (started before the objects exist, so no event is missed). `path` is the collection's
    API path, e.g. /apis/apps/v1/namespaces/ns/deployments."""

    def __init__(self, kube, path: str, predicate: Callable[[dict], bool] = lambda obj: True):
        self.kube = kube
        self.path = path
        self.predicate = predicate
        self.first_seen: dict[str, float] = {}
        self.error: BaseException | None = None
        self._response = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"watch of {path} did not start")

    def _run(self) -> None:
        try:
            listing = self.kube.request("GET", self.path)
            version = listing["metadata"]["resourceVersion"]
            for obj in listing.get("items", []):
                self._see(obj)
            self._ready.set()
            while not self._stop.is_set():
                version = self._stream(version)
        except BaseException as err:  # reported by wait()
            if self._stop.is_set():
                return
            self.error = err
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    def _stream(self, version: str) -> str:
        query = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "60",
        }
        method, url, headers, _, _ = self.kube.api.param_serialize(
            "GET", self.path, query_params=list(query.items()), header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )  # fmt: skip
        response = self.kube.api.call_api(method, url, headers, _request_timeout=(10, 90))
        raw = self._response = response.response  # the urllib3 response, streamed line by line
        buffer = b""
        for chunk in raw.stream(65536, decode_content=True):
            if self._stop.is_set():
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise RuntimeError(f"watch {self.path}: {obj.get('message')}")
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._see(obj)
        raw.release_conn()
        return version

    def _see(self, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if name not in self.first_seen and self.predicate(obj):
            with self._changed:
                self.first_seen[name] = time.perf_counter()
                self._changed.notify_all()

    def wait(self, names: Iterable[str], timeout: float) -> dict[str, float]:
        """Wait until every name has been seen; returns their times (time.perf_counter())."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not wanted <= self.first_seen.keys():
                if self.error is not None:
                    raise RuntimeError(f"watch {self.path} failed: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(wanted - self.first_seen.keys())
                    raise TimeoutError(f"{len(missing)} not seen within {timeout:.0f} s: {missing[:5]}")
                self._changed.wait(min(left, 1.0))
            return {name: self.first_seen[name] for name in wanted}

    def count(self) -> int:
        with self._changed:
            return len(self.first_seen)

    def stop(self) -> None:
        """End the stream (an open watch would hold the API server's shutdown for its grace period)."""
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()
        self._thread.join(timeout=5)


def is_ready(obj: dict) -> bool:
    """An LLMDeployment whose status says Ready for its current generation."""
    status = obj.get("status") or {}
    return status.get("phase") == "Ready" and status.get("observedGeneration") == obj["metadata"].get(
        "generation"
    )


def llmd_path(namespace: str | None = None) -> str:
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/llmpack.io/v1alpha1{where}/llmdeployments"


# --- `python -m bench.common operator`: the operator with its request count exported ---------------


def run_operator_with_request_gauge(argv: list[str]) -> int:
    from prometheus_client import Gauge

    from llmpack.cli import main as llmpack_main
    from llmpack.runtime import kube

    clients: list[Any] = []
    original_init = kube.KubeClient.__init__

    def counting_init(self, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        clients.append(self)

    kube.KubeClient.__init__ = counting_init  # type: ignore[method-assign]
    gauge = Gauge(REQUESTS_GAUGE, "API requests the operator's KubeClient has sent (benchmark shim).")
    gauge.set_function(lambda: sum(c.requests for c in clients))
    return llmpack_main(["operator", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["operator"]:
        print("usage: python -m bench.common operator [llmpack operator flags]", file=sys.stderr)
        return 2
    return run_operator_with_request_gauge(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
