"""The `vllm` backend: one `vllm serve` with --max-num-seqs = the largest candidate, then closed-loop
load at each candidate concurrency with `vllm bench serve` (fixed prompt and output lengths,
EOS ignored), /metrics scraped and NVML sampled while each point runs (FACTS.md 2.1-2.4, 5).

One boot serves every point: the client's --max-concurrency B keeps B requests in flight, which
is what --max-num-seqs B would let run (FACTS 2.3, the single-boot alternative).

The KV pool is sized here, never left to vLLM's default: `--kv-cache-memory-bytes` holds the
largest candidate batch of the workload (or one max-model-len request, whichever is more) with a
margin. Without it vLLM reserves --gpu-memory-utilization (0.92) of the device, and its CPU build
0.92 of the machine's RAM, failing whenever less is free (../shared/REAL-ENGINE.md). What the
engine then reports (KV capacity in tokens, block size, its config line) goes into the profile.

Everything that knows vLLM's formats is a pure function tested on outputs captured from the real
engine (tests/fixtures/vllm, hack/engine/capture_fixtures.py): the two command lines, the
benchmark's result JSON, the Prometheus text, the start-up log (engine_log.py) and `vllm
--version`. `VllmBackend` only drives processes and threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llmpack.advisor.kv_layout import KVLayout, layout_of
from llmpack.advisor.memory import round_up_to_block
from llmpack.advisor.model_config import kv_capacity_tokens
from llmpack.api.profile import EngineFacts, ModelFacts, Profile, ProfilePoint
from llmpack.profiler.backend import Backend, BackendError
from llmpack.profiler.engine_log import StartupFacts, parse_startup_log, root_cause
from llmpack.profiler.facts import ProfileRequest, gpu_facts
from llmpack.profiler.nvml import GpuSummary, Nvml, NvmlSampler
from llmpack.profiler.sweep import PointFailed

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
PROMPTS_PER_BATCH = 8  # requests per point = max(8 x B, MIN_PROMPTS): 8 turnovers of the batch
MIN_PROMPTS = 64
# A point fails when more than this share of its requests failed: the figures would describe a
# server that was erroring, not serving.
MAX_FAILED_SHARE = 0.05


# KV pool of a profiling run: the largest batch's sequences, each rounded up to a block this large
# (vLLM's block: 16 tokens on CUDA, 128 on its CPU build, 64 for latent attention there), times
# this margin (the scheduler admits a request when its prompt fits, then grows it).
KV_ROUNDING_TOKENS = 256
KV_MARGIN = 1.25
MIN_KV_CACHE_BYTES = 16 * MIB


def profiling_kv_cache_bytes(
    *,
    max_batch: int,
    prompt_tokens: int,
    output_tokens: int,
    max_model_len: int,
    kv_bytes_per_token: int,
    layout: KVLayout | None = None,
) -> int:
    """--kv-cache-memory-bytes for a profiling run: room for `max_batch` requests of the workload
    without preemption, and for one request of max_model_len (vLLM refuses to start with less:
    vllm/v1/core/kv_cache_utils.py::_check_enough_kv_cache_memory), at least 16 MiB; whole MiB.
    A model with state layers (`layout`) also gets each request's state, which holds no tokens."""
    per_sequence = round_up_to_block(prompt_tokens + output_tokens, KV_ROUNDING_TOKENS)
    tokens = max(max_batch * per_sequence, round_up_to_block(max_model_len, KV_ROUNDING_TOKENS))
    wanted = max(math.ceil(tokens * KV_MARGIN) * kv_bytes_per_token, MIN_KV_CACHE_BYTES)
    if layout is not None and not layout.is_full_attention:
        # every request's blocks by its layers' rules, whatever the engine's block size and budget
        blocks = max(
            layout.pool_blocks(
                batch=max_batch,
                tokens=prompt_tokens + output_tokens,
                block_size=KV_ROUNDING_TOKENS,
                in_flight_tokens=max_model_len,
            ),
            layout.blocks_per_request(
                max_model_len, block_size=KV_ROUNDING_TOKENS, in_flight_tokens=max_model_len
            ),
        )
        wanted = max(wanted, math.ceil(blocks * KV_MARGIN) * layout.bytes_per_block(KV_ROUNDING_TOKENS))
    return math.ceil(wanted / MIB) * MIB


# -- command lines ----------------------------------------------------------------------------


def _flags(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """[("--a", 1), ("--b", True), ("--c", None)] -> ["--a", "1", "--b"]: True is a bare flag,
    None or False leaves the flag out."""
    argv: list[str] = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def serve_command(
    model: str,
    *,
    max_num_seqs: int,
    max_model_len: int,
    dtype: str,
    kv_cache_memory_bytes: int | None = None,
    revision: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    seed: int | None = 0,
    extra_args: Sequence[str] = (),
    executable: str = "vllm",
) -> list[str]:
    """`vllm serve` for profiling: the batch cap, the context length, the KV pool's size, then
    `extra_args` (engine flags of the spec that change what is measured; where they set one of the
    flags here, such as --seed, theirs is the one given: serving runs with it). None of the flags
    recent releases removed (--disable-log-requests, --swap-space; FACTS 1.3)."""
    given = {a.split("=", 1)[0].replace("_", "-") for a in extra_args if a.startswith("--")}
    own = [
        ("--host", host),
        ("--port", port),
        ("--max-num-seqs", max_num_seqs),
        ("--max-model-len", max_model_len),
        ("--kv-cache-memory-bytes", kv_cache_memory_bytes),
        ("--dtype", dtype),
        ("--revision", revision or None),
        ("--seed", seed),
    ]
    return [executable, "serve", model, *_flags([(f, v) for f, v in own if f not in given]), *extra_args]


def num_prompts_for(batch: int) -> int:
    return max(PROMPTS_PER_BATCH * batch, MIN_PROMPTS)


def bench_command(
    model: str,
    *,
    batch: int,
    prompt_tokens: int,
    output_tokens: int,
    result_dir: str | Path,
    result_filename: str,
    base_url: str = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
    num_prompts: int | None = None,
    seed: int = 0,
    executable: str = "vllm",
) -> list[str]:
    """`vllm bench serve` for one point: `batch` requests in flight (closed loop: all requests
    queued at once, --max-concurrency keeps B running), every prompt `prompt_tokens` long, every
    answer exactly `output_tokens` (--ignore-eos), the result saved as JSON (FACTS 2.1)."""
    return [
        executable,
        "bench",
        "serve",
        *_flags(
            [
                ("--backend", "vllm"),
                ("--base-url", base_url),
                ("--model", model),
                ("--dataset-name", "random"),
                ("--random-input-len", prompt_tokens),
                ("--random-output-len", output_tokens),
                ("--ignore-eos", True),
                ("--max-concurrency", batch),
                ("--num-prompts", num_prompts if num_prompts is not None else num_prompts_for(batch)),
                ("--request-rate", "inf"),
                ("--percentile-metrics", "ttft,tpot,itl,e2el"),
                ("--metric-percentiles", "50,99"),
                ("--seed", seed),
                ("--save-result", True),
                ("--result-dir", result_dir),
                ("--result-filename", result_filename),
            ]
        ),
    ]


# -- the benchmark's result JSON --------------------------------------------------------------


def _number(data: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


@dataclass(frozen=True)
class BenchResult:
    """What `vllm bench serve --save-result` measured for one point."""

    fields: dict[str, Any]  # ProfilePoint fields
    num_prompts: int | None
    completed: int
    failed: int
    max_concurrency: int | None


def parse_bench_result(data: Mapping[str, Any]) -> BenchResult:
    """The ProfilePoint figures in a result JSON. Raises PointFailed for a run that completed
    nothing or failed too many requests."""
    if not isinstance(data, Mapping):
        raise PointFailed("the benchmark result is not a JSON object")
    completed = int(_number(data, "completed") or 0)
    failed = int(_number(data, "failed") or 0)
    num_prompts = _number(data, "num_prompts")
    if failed == 0 and num_prompts is not None and completed < num_prompts:
        failed = int(num_prompts) - completed  # older releases do not write "failed"
    if completed == 0:
        raise PointFailed(f"no request completed ({failed} failed)")
    if failed > MAX_FAILED_SHARE * (completed + failed):
        raise PointFailed(f"{failed} of {completed + failed} requests failed")
    total = _number(data, "total_token_throughput")
    output = _number(data, "output_throughput")
    duration = _number(data, "duration")
    if total is None and output is not None and duration:
        total = output + (_number(data, "total_input_tokens") or 0) / duration
    if total is None:
        raise PointFailed("the benchmark result has no throughput (total_token_throughput)")
    fields: dict[str, Any] = {
        "total_tokens_per_s": total,
        "output_tokens_per_s": output,
        "requests_per_s": _number(data, "request_throughput"),
        "completed": completed,
        "duration_s": duration if duration and duration > 0 else None,
    }
    for metric in ("itl", "tpot", "ttft"):
        fields[f"{metric}_mean_ms"] = _number(data, f"mean_{metric}_ms")
        fields[f"{metric}_p50_ms"] = _number(data, f"median_{metric}_ms", f"p50_{metric}_ms")
        fields[f"{metric}_p99_ms"] = _number(data, f"p99_{metric}_ms")
    concurrency = _number(data, "max_concurrency")
    return BenchResult(
        fields=fields,
        num_prompts=int(num_prompts) if num_prompts is not None else None,
        completed=completed,
        failed=failed,
        max_concurrency=int(concurrency) if concurrency is not None else None,
    )


def read_bench_result(path: str | Path) -> BenchResult:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PointFailed(f"the benchmark wrote no result ({path})") from None
    except (OSError, ValueError) as err:
        raise PointFailed(f"cannot read the benchmark result {path}: {err}") from None
    return parse_bench_result(data)


# -- /metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSample:
    """One scrape of vLLM's /metrics (FACTS 2.4); None where the metric was not exposed."""

    kv_cache_usage: float | None = None  # vllm:kv_cache_usage_perc (1.0 = full)
    preemptions_total: float | None = None  # vllm:num_preemptions_total
    requests_running: float | None = None
    requests_waiting: float | None = None
    num_gpu_blocks: int | None = None  # vllm:cache_config_info labels
    block_size: int | None = None
    gpu_memory_utilization: float | None = None


_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, pre-V1 name


def parse_metrics(text: str) -> MetricsSample:
    """Sum each metric over its series (one per engine); the KV usage is the fullest engine's."""
    values: dict[str, list[float]] = {}
    info: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values.setdefault(sample.name, []).append(float(sample.value))
                if sample.name == "vllm:cache_config_info":
                    info = dict(sample.labels)
    except ValueError as err:
        raise ValueError(f"not Prometheus text: {err}") from None

    def total(*names: str) -> float | None:
        for name in names:
            if name in values:
                return sum(values[name])
        return None

    kv = next((max(values[n]) for n in _KV_USAGE if n in values), None)
    return MetricsSample(
        kv_cache_usage=kv,
        preemptions_total=total("vllm:num_preemptions_total", "vllm:num_preemptions"),
        requests_running=total("vllm:num_requests_running"),
        requests_waiting=total("vllm:num_requests_waiting"),
        num_gpu_blocks=_int_label(info, "num_gpu_blocks"),
        block_size=_int_label(info, "block_size"),
        gpu_memory_utilization=_float_label(info, "gpu_memory_utilization"),
    )


def _int_label(labels: Mapping[str, str], name: str) -> int | None:
    value = _float_label(labels, name)
    return int(value) if value is not None else None


def _float_label(labels: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(labels[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class MetricsSummary:
    kv_cache_usage_peak: float | None
    preemptions: int
    mean_running: float | None  # over scrapes with at least one running request


def summarise_metrics(
    samples: Sequence[MetricsSample], before: MetricsSample | None, after: MetricsSample | None
) -> MetricsSummary:
    """Peak KV use and mean running batch over the scrapes of a point; preemptions are the growth
    of the cumulative counter between the scrapes before and after it."""
    every = [s for s in (before, *samples, after) if s is not None]
    usage = [s.kv_cache_usage for s in every if s.kv_cache_usage is not None]
    running = [s.requests_running for s in samples if s.requests_running]
    counts = [s.preemptions_total for s in every if s.preemptions_total is not None]
    preemptions = round(max(counts) - counts[0]) if counts else 0
    return MetricsSummary(
        kv_cache_usage_peak=min(max(usage), 1.0) if usage else None,
        preemptions=max(preemptions, 0),
        mean_running=sum(running) / len(running) if running else None,
    )


# -- one point from its parts -----------------------------------------------------------------


def build_point(
    batch: int,
    bench: BenchResult,
    metrics: MetricsSummary | None = None,
    gpu: GpuSummary | None = None,
    kv_capacity_tokens: int | None = None,
) -> ProfilePoint:
    """The ProfilePoint of one measured batch: the benchmark's figures, the server's peak KV use,
    preemptions and running batch, and the GPU's memory and utilisation."""
    fields = {k: v for k, v in bench.fields.items() if v is not None}
    fields["max_num_seqs"] = batch
    if metrics is not None:
        fields["preemptions"] = metrics.preemptions
        if metrics.kv_cache_usage_peak is not None:
            fields["kv_cache_usage_peak"] = metrics.kv_cache_usage_peak
        if metrics.mean_running is not None:
            fields["mean_running"] = min(metrics.mean_running, float(batch))
    if kv_capacity_tokens:
        fields["kv_capacity_tokens"] = kv_capacity_tokens
    if gpu is not None:
        optional = {
            "gpu_memory_used_bytes": gpu.memory_used_peak_bytes,
            "gpu_utilization": gpu.gpu_utilization,
            "memory_busy_fraction": gpu.memory_busy,
            "dram_bandwidth_utilization": gpu.dram_bandwidth_utilization,
            "sm_occupancy": gpu.sm_occupancy,
        }
        fields.update({k: v for k, v in optional.items() if v is not None})
    return ProfilePoint.model_validate(fields)


# -- driving the processes --------------------------------------------------------------------


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, ""


def read_log(path: Path, since: int = 0) -> str:
    """The log from byte `since` on: one server's part of a log that restarts append to."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def why_it_stopped(what_happened: str, log_path: Path, *, since: int = 0, lines: int = 12) -> str:
    """`what_happened`, the root cause from the engine's log from byte `since` on (the server that
    stopped: a restarted one appends to the same file), which vLLM logs far above the last lines,
    then those last lines. The cause comes first because the termination message keeps the start
    of a long text."""
    text = read_log(log_path, since)
    cause = root_cause(text)
    head = f"{what_happened}: {cause}" if cause else what_happened
    last = "\n".join(text.strip().splitlines()[-lines:])
    return f"{head}\nlast lines of its log ({log_path.name}):\n{last}" if last else head


class MetricsPoller:
    """Scrapes /metrics in a thread while a point runs."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[MetricsSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape(self) -> MetricsSample | None:
        status, body = http_get(self.url)
        if status != 200:
            return None
        try:
            return parse_metrics(body)
        except ValueError:
            return None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            sample = self.scrape()
            if sample is not None:
                self.samples.append(sample)

    def stop(self) -> list[MetricsSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        return self.samples


@dataclass
class VllmSettings:
    executable: str = "vllm"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    startup_timeout_s: float = 1800.0  # first boots download weights and compile
    point_timeout_s: float = 3600.0
    scrape_interval_s: float = 1.0
    nvml_interval_s: float = 0.5
    nvml_index: int = 0
    seed: int = 0
    workdir: Path | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class VllmBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        request: ProfileRequest,
        candidates: Sequence[int],
        settings: VllmSettings | None = None,
        nvml: Nvml | None = None,
    ) -> None:
        self.request = request
        self.settings = settings or VllmSettings()
        self.max_num_seqs = max(candidates)
        self.kv_cache_memory_bytes = profiling_kv_cache_bytes(
            max_batch=self.max_num_seqs,
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            max_model_len=request.max_model_len,
            kv_bytes_per_token=request.model_facts().kv_bytes_per_token,
            layout=layout_of(request.model_facts()),
        )
        self.nvml = nvml or Nvml(index=self.settings.nvml_index)
        self.workdir = self.settings.workdir or Path(tempfile.mkdtemp(prefix="llmpack-profile-"))
        self.log_path = self.workdir / "vllm-serve.log"
        self.log_offset = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.version: str | None = None
        self.startup = StartupFacts()
        self.cache_config = MetricsSample()
        self.notes: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.env}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nvml.open()  # when it cannot, the profile's notes say which metrics are absent and why
        self._start_server()

    @property
    def serve_command(self) -> list[str]:
        return serve_command(
            self.request.model,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.request.max_model_len,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            dtype=self.request.dtype,
            revision=self.request.revision,
            host=self.settings.host,
            port=self.settings.port,
            seed=self.settings.seed,
            extra_args=self.request.engine_args,
            executable=self.settings.executable,
        )

    def _start_server(self) -> None:
        # where this server's part of the log begins (a restart appends to the same file)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.serve_command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise BackendError(
                    f"{self.settings.executable!r} not found: the vllm backend runs where vLLM is "
                    "installed (the profiler image), or give its path with --vllm"
                ) from None
        try:
            self._wait_healthy()
        except BackendError:
            self._stop_server()
            raise
        self.startup = parse_startup_log(read_log(self.log_path, self.log_offset))
        self.version = self.startup.version
        status, body = http_get(self.base_url + "/metrics")
        if status == 200:
            with contextlib.suppress(ValueError):
                self.cache_config = parse_metrics(body)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise BackendError(
                    why_it_stopped(
                        f"vllm serve exited with status {code} at start", self.log_path, since=self.log_offset
                    )
                )
            if http_get(self.base_url + "/health", timeout_s=2.0)[0] == 200:
                return
            time.sleep(2.0)
        raise BackendError(
            why_it_stopped(
                f"vllm serve was not healthy after {self.settings.startup_timeout_s:g} s",
                self.log_path,
                since=self.log_offset,
            )
        )

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        self._stop_server()
        self.nvml.close()

    def _stop_server(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    # -- one point ----------------------------------------------------------------------------

    def measure(self, batch: int) -> ProfilePoint:
        if not self._alive():
            self.notes.append(f"vllm serve was restarted before B={batch}")
            self._start_server()
        result = self.workdir / f"bench-{batch}.json"
        result.unlink(missing_ok=True)
        command = bench_command(
            self.request.model,
            batch=batch,
            prompt_tokens=self.request.prompt_tokens,
            output_tokens=self.request.output_tokens,
            result_dir=self.workdir,
            result_filename=result.name,
            base_url=self.base_url,
            seed=self.settings.seed,
            executable=self.settings.executable,
        )
        poller = MetricsPoller(self.base_url + "/metrics", self.settings.scrape_interval_s)
        sampler = NvmlSampler(self.nvml, self.settings.nvml_interval_s)
        before = poller.scrape()
        poller.start()
        sampler.start()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.settings.point_timeout_s,
                env=self._env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PointFailed(
                f"the benchmark did not finish within {self.settings.point_timeout_s:g} s"
            ) from None
        finally:
            samples = poller.stop()
            gpu = sampler.stop()
        (self.workdir / f"bench-{batch}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if not self._alive():
            raise PointFailed(
                why_it_stopped("vllm serve died during the point", self.log_path, since=self.log_offset)
            )
        if done.returncode != 0:
            last = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
            raise PointFailed(f"vllm bench serve exited with status {done.returncode}: {last}")
        bench = read_bench_result(result)
        status, text = http_get(self.base_url + "/metrics")
        after = None
        if status == 200:
            (self.workdir / f"metrics-{batch}.txt").write_text(text, encoding="utf-8")
            with contextlib.suppress(ValueError):
                after = parse_metrics(text)
        metrics = summarise_metrics(samples, before, after)
        return build_point(batch, bench, metrics, gpu, self.kv_capacity_tokens)

    # -- the profile --------------------------------------------------------------------------

    @property
    def kv_capacity_tokens(self) -> int | None:
        c = self.cache_config
        if c.num_gpu_blocks and c.block_size:
            return c.num_gpu_blocks * c.block_size
        return self.startup.kv_cache_tokens

    def profile(self, points: list[ProfilePoint], notes: list[str]) -> Profile:
        info = self.nvml.info
        request = self.request
        if request.dtype == "auto" and self.startup.dtype:
            request = dataclasses.replace(request, dtype=self.startup.dtype)  # what "auto" resolved to
        model = request.model_facts(measured_weight_bytes=self.startup.weight_bytes)
        kv_dtype = self.startup.kv_cache_dtype
        if kv_dtype and kv_dtype != "auto":
            model = model.model_copy(update={"kv_cache_dtype": kv_dtype})
        measured = self.measured_kv_bytes_per_token(model)
        if measured is not None:  # the engine's own figure wins; llmpack's reading is kept beside it
            model = model.model_copy(
                update={"kv_bytes_per_token": measured, "kv_bytes_per_token_config": model.kv_bytes_per_token}
            )
        gpu = gpu_facts(
            self.request.gpu_product,
            # the CUDA total vLLM sized its pool against, as the paper loader records it
            memory_bytes=self.startup.device_total_bytes or info.memory_total_bytes,
            bandwidth_bytes_per_s=info.bandwidth_bytes_per_s,
        )
        return Profile(
            model=model,
            gpu=gpu,
            engine=self.engine_facts(),
            workload=self.request.workload(
                dataset="random", num_prompts=None, request_rate=None, chunked_prefill=None
            ),
            points=points,
            block_size=self.cache_config.block_size or 16,
            gpu_memory_utilization=self.cache_config.gpu_memory_utilization
            or self.startup.gpu_memory_utilization,
            kv_capacity_tokens=self.kv_capacity_tokens,
            non_kv_memory_bytes=self.startup.non_kv_bytes,
            backend="vllm",
            source=f"vllm {self.version or '(version unknown)'}: bench serve, closed loop per batch",
            notes=[*self.notes, *notes, *self._engine_notes(model)],
        )

    def engine_facts(self) -> EngineFacts:
        """The engine as it reported itself, and the flags it was given (host and port left out)."""
        argv, args = self.serve_command[3:], []
        while argv:
            flag, *argv = argv
            if flag in ("--host", "--port"):
                argv = argv[1:]
            else:
                args.append(flag)
        return EngineFacts(
            version=self.version,
            image=self.settings.image,
            device=self.startup.device,
            args=args,
            config=self.startup.config,
            kv_cache_dtype=self.startup.kv_cache_dtype,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
        )

    def measured_kv_bytes_per_token(self, model: ModelFacts) -> int | None:
        """Bytes per token (over the attention layers) the engine's KV pool implies, when it
        disagrees with what llmpack reads from the model's config: from pool bytes / blocks held,
        an upper bound of the engine's real figure (it holds whole blocks only). None when they
        agree, or the engine reported no blocks (for a layout with windows or states, only its
        block count says what a block costs)."""
        computed, layout = model.kv_bytes_per_token, layout_of(model)
        block, reported = self.cache_config.block_size, self.kv_capacity_tokens
        if not block or not reported:
            return None
        memory = self.kv_cache_memory_bytes
        if layout.is_full_attention:
            if kv_capacity_tokens(memory, computed, block) == reported:
                return None
            return math.ceil(memory / reported)
        blocks = self.cache_config.num_gpu_blocks
        if not blocks or layout.num_blocks(memory, block) == blocks:
            return None
        group_size, _ = layout.groups()
        per_layer = math.ceil(memory / blocks / (group_size * layout.block_size(block)))
        return per_layer * layout.attention_layers

    def _engine_notes(self, model: ModelFacts) -> list[str]:
        notes = []
        absent = sorted(set(self.nvml.absent.values()))
        if absent:
            notes.append("GPU metrics absent: " + "; ".join(absent))
        if self.startup.device == "cpu":
            notes.append("measured on vLLM's CPU build: throughput and latency are this CPU's, not the GPU's")
        if self.startup.suggested_kv_cache_bytes:
            notes.append(
                f"vLLM suggested --kv-cache-memory={self.startup.suggested_kv_cache_bytes} for this model "
                "at its default memory utilisation"
            )
        if model.kv_bytes_per_token_config is not None:
            notes.append(
                f"KV cache: the engine holds {self.kv_capacity_tokens} tokens in "
                f"{self.kv_cache_memory_bytes} bytes ({model.kv_bytes_per_token} bytes per token); "
                f"llmpack's reading of the model's config gives {model.kv_bytes_per_token_config}: the "
                "engine's figure is used"
            )
        return notes
