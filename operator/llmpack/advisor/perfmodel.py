"""Performance model: decode throughput and inter-token latency (ITL) of one vLLM replica against
its batch size, and of R replicas sharing one GPU under MPS or each in a MIG slice.

This module holds the model (`PerfModel`, `Prediction`), its calibration on a profile
(`calibrate`) and what gains are measured against (`baseline`, `default_max_num_seqs`,
`replica_memory_bytes`). How well it predicts runs it was not fitted on, and the fit of its MPS
term, are in advisor/perfmodel_validation.py; the policy that uses it to choose how many MPS
replicas to put on a GPU is in advisor/perfmodel_packing.py.

Why a model at all: packing pays only where one instance leaves the GPU idle between decode steps
(the CPU schedules, samples and streams while no kernel runs). The operator must predict from a
single-instance profile whether a second replica fills those gaps or just queues for the same HBM.

One decode step of one replica whose running batch is b sequences (times in ms):

    step(b) = gpu(b) + idle(b)
    gpu(b)  = W / (eta_w * BW)  +  b * c * k / (eta_kv * BW)      memory traffic over bandwidth
    idle(b) = tau_0 + tau_1 * b                                   CPU time the GPU waits for

- W: weight bytes, read once per step. k: KV bytes per token. c = prompt + output/2: the mean
  context of a running sequence, so b*c*k is the KV cache the attention reads per step.
- BW: the GPU's peak memory bandwidth (catalogue; for the paper's H100 64 GB an estimate, which
  only rescales the efficiencies). eta_w, eta_kv: the fraction of it the weight
  GEMMs and the paged-attention reads achieve. Two efficiencies because they differ (the paper's
  Llama-2-13B streams its weights at ~0.85 of peak, its KV cache at ~0.5); eta_kv also absorbs that
  long sequences stay in the batch longer, so the mean running context exceeds c.
- tau_0, tau_1: the idle gap per step, fixed and per running sequence (scheduling, sampling,
  detokenising and streaming are per sequence in vLLM).

Calibration (`calibrate`): each measured point gives its mean ITL L and mean running batch b. The
GPU utilisation u (NVML: the fraction of time a kernel ran) splits it: u*L is GPU time, (1-u)*L is
idle. Weighted least squares (weights 1/L, i.e. relative errors) fits eta_w, eta_kv on the GPU
times and tau_0, tau_1 on the idle times. A profile without utilisation cannot tell the two apart;
then one efficiency and a fixed overhead are fitted on L itself (tau_1 = 0), which is conservative:
it attributes per-sequence CPU time to the GPU and so predicts little overlap for MPS.
Points with preemptions are left out (their batch never ran steady).

Throughput. The running batch b at --max-num-seqs B is what the profile measured (mean running
requests; interpolated, never decreasing, b <= B). Over a step each running sequence emits one
token, so output tokens/s = b / step, and total (prompt + output) tokens/s, the paper's Table IV
measure, is that times (prompt + output) / output. The mean ITL is the step time.

R replicas under MPS, each at batch B. Their kernels share the GPU's HBM, so their memory traffic
serialises; while one replica is in its idle gap the others' kernels run. That is a closed queue:
R replicas cycle between a delay station (their own idle time, overlapping freely) and one shared
server (the GPU, service time gpu(b) per step). Mean-value analysis gives the mean cycle (exact
for a product-form network; real steps vary less than that assumes, so it errs towards more
waiting, i.e. towards less gain and a longer ITL):

    Q_0 = 0;  for n = 1..R:  S_n = gpu * (1 + Q_{n-1});  X_n = n / (S_n + idle);  Q_n = X_n * S_n
    ITL_R = S_R + idle        tokens/s = R * b / ITL_R      (R = 1: ITL = gpu + idle, the single case)

With u = gpu/step of one replica, two replicas gain 2 / (1 + u^2): a GPU busy 69% of each step
(OPT-1.3B at B=96) gains 35%, one busy 95% (Llama-2-13B) 5%. Two refinements:
- The running batch per replica is the profile's measured fill at the same total concurrency R*B
  (b_R = B * fill(R*B)): a benchmark of N prompts drains the same way whether its concurrency
  sits in one replica or several, and the profile measured that drain.
- MPS_CONCURRENCY_GAIN (kappa): concurrent kernels of several replicas may move memory more
  efficiently than one; each efficiency closes kappa * (1 - 1/R) of its gap to the peak. It is
  fitted on the paper's replication runs (perfmodel_validation.py `fit_mps_concurrency_gain`,
  replication_calibration.csv: OPT-1.3B, one instance at 96/256/768, two and four MPS replicas at
  96); the fit finds almost none, i.e. the measured MPS gain is the overlap of idle gaps, which the
  queue above predicts alone.

One replica in a MIG slice: the slice's memory traffic flows at its share of the bandwidth and no
faster than its share of SMs can issue it, so gpu(b) is divided by min(bandwidth fraction, compute
fraction); the idle gap (CPU) is unchanged. Slices are isolated, so N slices give N times one.

Another GPU (`PerfModel.on_gpu`): the efficiencies and the idle gap carry over; the GPU time
scales with the bandwidth ratio. That ignores a different host CPU.

Memory is not the model's business: a prediction assumes each replica holds a KV cache for its
batch. `replica_memory_bytes` only states what such a replica needs, by advisor/memory.py's model.

What the model does not know: prefill. With chunked prefill off the prompts' prefill steps stall
decoding and the measured ITL includes those stalls; the fit absorbs them into the terms above, so
predictions hold for workloads shaped like the profile's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from llmpack.advisor import kv_layout, memory
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.gpus import gpu_for_profile
from llmpack.api.profile import Profile, ProfilePoint
from llmpack.hardware import GPU, MPS_MAX_CLIENTS, MIGProfile

GIB = 1 << 30

# Fitted by `fit_mps_concurrency_gain` (advisor/perfmodel_validation.py) on
# shared/paper-data/replication_calibration.csv against the OPT-1.3B background profile (least
# squares on the relative error of the measured MPS gains); tests/unit/test_perfmodel.py re-fits it
# from the CSV and fails when this constant drifts.
MPS_CONCURRENCY_GAIN = 0.014

# vLLM's default --max-num-seqs (FACTS 1.3, vLLM 0.33 EngineArgs.get_batch_defaults): 1024 on
# devices of >= 70 GiB that are not A100s (H100/H200/B200 class), else 256 (A100, L4, L40S, A10G,
# MIG slices, and the paper's 64 GB H100, whose CUDA total is 63.43 GiB).
VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_DEFAULT_MAX_NUM_SEQS_LARGE = 1024
LARGE_DEVICE_BYTES = 70 * GIB


@dataclass(frozen=True)
class Prediction:
    """What one configuration is predicted to deliver on one GPU (all replicas together)."""

    total_tokens_per_s: float  # prompt + output tokens per second over all replicas
    output_tokens_per_s: float  # generated tokens per second over all replicas
    itl_mean_ms: float  # mean inter-token latency each replica's requests see
    mode: str = "single"  # single, mps or mig
    replicas: int = 1
    batch: int = 1  # --max-num-seqs of each replica
    running_per_replica: float = 1.0  # mean running sequences per replica
    gpu_busy_fraction: float = 1.0  # predicted share of time a kernel runs (NVML utilisation)
    note: str = ""

    @property
    def tokens_per_s_per_replica(self) -> float:
        return self.total_tokens_per_s / self.replicas


@dataclass(frozen=True)
class FitPoint:
    """One measured point as the fit used it."""

    max_num_seqs: int
    running: float
    itl_ms: float
    total_tokens_per_s: float
    gpu_utilization: float | None


@dataclass(frozen=True)
class PerfModel:
    """The calibrated model of one model on one GPU for one workload shape (see the module doc)."""

    model_name: str
    gpu: GPU  # the GPU predictions are for
    bandwidth_bytes_per_s: float  # BW of that GPU (the efficiencies are fractions of it)
    weight_bytes: int  # W
    kv_bytes_per_token: int  # k
    prompt_tokens: int
    output_tokens: int
    weight_efficiency: float  # eta_w
    kv_efficiency: float  # eta_kv
    idle_fixed_ms: float  # tau_0
    idle_per_sequence_ms: float  # tau_1
    running_curve: tuple[tuple[int, float], ...]  # (max_num_seqs, mean running), never decreasing
    mps_concurrency_gain: float = MPS_CONCURRENCY_GAIN  # kappa
    used_utilization: bool = True  # False: GPU and idle time were not split (no utilisation data)
    points: tuple[FitPoint, ...] = ()
    measured_gpu_product: str = ""
    notes: tuple[str, ...] = field(default=())

    # The terms ------------------------------------------------------------------------------

    @property
    def context_tokens(self) -> float:
        """c = prompt + output / 2: the mean context of a sequence over its decoding."""
        return self.prompt_tokens + self.output_tokens / 2

    @property
    def total_per_output_token(self) -> float:
        """(prompt + output) / output: total tokens per generated token, for the Table IV measure."""
        return (self.prompt_tokens + self.output_tokens) / self.output_tokens

    def running(self, max_num_seqs: int, concurrency: int | None = None) -> float:
        """Mean running sequences of a replica at --max-num-seqs B when the whole deployment has
        `concurrency` slots (default B): B * fill(concurrency), fill = running / slots measured."""
        if max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        slots = concurrency or max_num_seqs
        return max_num_seqs * _running_at(self.running_curve, slots) / slots

    def gpu_ms(self, running: float, replicas: int = 1, bandwidth_fraction: float = 1.0) -> float:
        """GPU time of one step: weights and the KV cache of `running` sequences over the bandwidth
        (a `bandwidth_fraction` of it in a MIG slice; with R MPS replicas the efficiencies gain
        kappa * (1 - 1/R) of their gap to the peak)."""
        share = 1.0 - 1.0 / replicas
        eta_w = _boosted(self.weight_efficiency, self.mps_concurrency_gain * share)
        eta_kv = _boosted(self.kv_efficiency, self.mps_concurrency_gain * share)
        bandwidth = self.bandwidth_bytes_per_s * bandwidth_fraction
        kv_bytes = running * self.context_tokens * self.kv_bytes_per_token
        return 1000.0 * (self.weight_bytes / eta_w + kv_bytes / eta_kv) / bandwidth

    def idle_ms(self, running: float) -> float:
        """Idle gap of one step: tau_0 + tau_1 * running."""
        return self.idle_fixed_ms + self.idle_per_sequence_ms * running

    def step_ms(self, running: float) -> float:
        """Mean ITL of one replica alone with `running` sequences."""
        return self.gpu_ms(running) + self.idle_ms(running)

    # Predictions ----------------------------------------------------------------------------

    def single(self, batch: int) -> Prediction:
        """One replica alone on the GPU at --max-num-seqs `batch`."""
        return self.mps(1, batch)

    def mps(self, replicas: int, batch: int) -> Prediction:
        """`replicas` replicas at --max-num-seqs `batch` each, sharing one GPU under MPS."""
        check_count("replicas", replicas, MPS_MAX_CLIENTS)
        check_count("batch", batch)
        running = self.running(batch, replicas * batch)
        gpu = self.gpu_ms(running, replicas)
        idle = self.idle_ms(running)
        itl = _closed_queue_cycle_ms(gpu, idle, replicas)
        output = replicas * running / itl * 1000.0
        return Prediction(
            total_tokens_per_s=output * self.total_per_output_token,
            output_tokens_per_s=output,
            itl_mean_ms=itl,
            mode="single" if replicas == 1 else "mps",
            replicas=replicas,
            batch=batch,
            running_per_replica=running,
            gpu_busy_fraction=min(replicas * gpu / itl, 1.0),
            note=self._extrapolation_note(replicas * batch),
        )

    def mig(self, profile: MIGProfile, batch: int, instances: int = 1) -> Prediction:
        """One replica at --max-num-seqs `batch` in a MIG slice of `profile` of this model's GPU;
        with `instances` > 1, that many such slices (isolated, so throughput adds up)."""
        check_count("batch", batch)
        check_count("instances", instances, max(profile.max_instances, 1))
        fraction = min(profile.bandwidth_fraction, profile.compute_fraction)
        running = self.running(batch, instances * batch)
        gpu = self.gpu_ms(running, 1, fraction)
        itl = gpu + self.idle_ms(running)
        output = instances * running / itl * 1000.0
        return Prediction(
            total_tokens_per_s=output * self.total_per_output_token,
            output_tokens_per_s=output,
            itl_mean_ms=itl,
            mode="mig",
            replicas=instances,
            batch=batch,
            running_per_replica=running,
            gpu_busy_fraction=gpu / itl,
            note=f"MIG {profile.name}: {fraction:.3f} of {self.gpu.product}'s bandwidth "
            f"(memory {profile.bandwidth_fraction:.3f}, compute {profile.compute_fraction:.3f})"
            + (f"; {extra}" if (extra := self._extrapolation_note(instances * batch)) else ""),
        )

    def _extrapolation_note(self, slots: int) -> str:
        largest = self.running_curve[-1][0]
        if slots <= largest:
            return ""
        return (
            f"running batch extrapolated: {slots} slots in all exceed the largest measured batch "
            f"({largest}), whose fill is assumed to hold"
        )

    def on_gpu(self, gpu: GPU) -> PerfModel:
        """The same model on another GPU: GPU time scales with its bandwidth; efficiencies and the
        idle gap carry over (the host CPU is assumed alike)."""
        if gpu.product == self.gpu.product:
            return self
        if gpu.bandwidth_bytes_per_s <= 0:
            raise AdvisorError(f"{gpu.product} has no known memory bandwidth, so no prediction for it")
        return replace(
            self,
            gpu=gpu,
            bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s,
            notes=(
                *self.notes,
                f"calibrated on {self.measured_gpu_product}; scaled to {gpu.product} by bandwidth",
            ),
        )

    def describe(self) -> str:
        """The fitted equation, for people."""
        gpu_text = (
            f"gpu(b) = {self.weight_bytes / GIB:.2f} GiB / ({self.weight_efficiency:.3f} x BW) + "
            f"b x {self.context_tokens:.0f} tok x {self.kv_bytes_per_token} B / "
            f"({self.kv_efficiency:.3f} x BW), BW = {self.bandwidth_bytes_per_s / 1e12:.2f} TB/s"
        )
        idle_text = f"idle(b) = {self.idle_fixed_ms:.3f} ms + {self.idle_per_sequence_ms:.4f} ms x b"
        return (
            f"step(b) = gpu(b) + idle(b); {gpu_text}; {idle_text}; MPS kappa = {self.mps_concurrency_gain:g}"
        )


# Calibration ----------------------------------------------------------------------------------


def calibrate(
    profile: Profile,
    *,
    gpu: GPU | None = None,
    mps_concurrency_gain: float = MPS_CONCURRENCY_GAIN,
    exclude: Sequence[int] = (),
) -> PerfModel:
    """Fit the model on a profile's measured points; predictions are for `gpu` (default: the GPU
    the profile was measured on). `exclude` leaves batch sizes out (for leave-one-out). Raises
    AdvisorError when the profile has fewer than two usable points or no known bandwidth."""
    measured_gpu = gpu_for_profile(profile)
    bandwidth = profile.gpu.bandwidth_bytes_per_s or measured_gpu.bandwidth_bytes_per_s
    if not bandwidth or bandwidth <= 0:
        raise AdvisorError(
            f"the memory bandwidth of {profile.gpu.product} is unknown: set gpu.bandwidth_bytes_per_s "
            "in the profile or use a GPU from the catalogue"
        )
    points = [_fit_point(p) for p in profile.points if _usable(p) and p.max_num_seqs not in exclude]
    if len({round(p.running, 6) for p in points}) < 2:
        raise AdvisorError(
            "the performance model needs at least two measured batch sizes with a mean ITL and no "
            f"preemptions; {profile.model.name} has {len(points)}: profile more batch sizes"
        )
    model = profile.model
    workload = profile.workload
    context = workload.prompt_tokens + workload.output_tokens / 2
    weight_ms = 1000.0 * model.weight_bytes / bandwidth
    # bytes a decode step reads per token of context: fewer than kv_bytes_per_token where layers
    # keep only a window or a state (advisor/kv_layout.py)
    layout = kv_layout.layout_of(model)
    kv_read = (
        model.kv_bytes_per_token if layout.is_full_attention else round(layout.read_bytes_per_token(context))
    )
    kv_ms_per_seq = 1000.0 * context * kv_read / bandwidth
    notes: list[str] = []

    with_util = [p for p in points if p.gpu_utilization is not None]
    if len({round(p.running, 6) for p in with_util}) >= 2:
        inv_w, inv_kv, tau0, tau1 = _fit_split(with_util, weight_ms, kv_ms_per_seq)
        used_util = True
    else:
        inv_w, tau0 = _fit_unsplit(points, weight_ms, kv_ms_per_seq)
        inv_kv, tau1, used_util = inv_w, 0.0, False
        notes.append(
            "the profile has no GPU utilisation, so GPU and idle time were not split: one bandwidth "
            "efficiency and a fixed overhead were fitted, which predicts little gain from MPS"
        )
    eta_w, eta_kv = 1.0 / inv_w, 1.0 / inv_kv
    if max(eta_w, eta_kv) > 1.0:
        notes.append(
            f"fitted bandwidth efficiency above 1 ({max(eta_w, eta_kv):.2f}): the catalogue bandwidth "
            f"of {measured_gpu.product} ({bandwidth / 1e12:.2f} TB/s) is probably too low"
        )
    perf = PerfModel(
        model_name=model.name,
        gpu=measured_gpu,
        bandwidth_bytes_per_s=bandwidth,
        weight_bytes=model.weight_bytes,
        kv_bytes_per_token=kv_read,
        prompt_tokens=workload.prompt_tokens,
        output_tokens=workload.output_tokens,
        weight_efficiency=eta_w,
        kv_efficiency=eta_kv,
        idle_fixed_ms=tau0,
        idle_per_sequence_ms=tau1,
        running_curve=_monotone_curve(points),
        mps_concurrency_gain=mps_concurrency_gain,
        used_utilization=used_util,
        points=tuple(points),
        measured_gpu_product=measured_gpu.product,
        notes=tuple(notes),
    )
    return perf.on_gpu(gpu) if gpu is not None else perf


def _usable(point: ProfilePoint) -> bool:
    itl = point.itl_or_tpot_mean_ms
    return point.preemptions == 0 and point.total_tokens_per_s > 0 and itl is not None and itl > 0


def _fit_point(point: ProfilePoint) -> FitPoint:
    itl = point.itl_or_tpot_mean_ms
    assert itl is not None
    running = point.mean_running if point.mean_running else float(point.max_num_seqs)
    return FitPoint(
        max_num_seqs=point.max_num_seqs,
        running=min(max(running, 1e-3), float(point.max_num_seqs)),
        itl_ms=itl,
        total_tokens_per_s=point.total_tokens_per_s,
        gpu_utilization=point.gpu_utilization,
    )


def _fit_split(
    points: Sequence[FitPoint], weight_ms: float, kv_ms_per_seq: float
) -> tuple[float, float, float, float]:
    """1/eta_w, 1/eta_kv from the GPU times u*L, and tau_0, tau_1 from the idle times (1-u)*L."""
    weights = [1.0 / p.itl_ms for p in points]
    busy = [p.gpu_utilization * p.itl_ms for p in points]  # type: ignore[operator]
    idle = [p.itl_ms - b for p, b in zip(points, busy, strict=True)]
    kv = [kv_ms_per_seq * p.running for p in points]
    solved = _wls2([weight_ms] * len(points), kv, busy, weights)
    if solved is not None and solved[0] > 0 and solved[1] > 0:
        inv_w, inv_kv = solved
    else:  # the two traffics cannot be told apart: one efficiency for both
        inv_w = inv_kv = _wls1([weight_ms + x for x in kv], busy, weights)
    if inv_w <= 0:
        raise AdvisorError("the profile's GPU times do not grow with memory traffic; cannot calibrate")
    tau0, tau1 = _fit_line_nonneg([p.running for p in points], idle, weights)
    return inv_w, inv_kv, tau0, tau1


def _fit_unsplit(points: Sequence[FitPoint], weight_ms: float, kv_ms_per_seq: float) -> tuple[float, float]:
    """1/eta and a fixed overhead tau_0 from the mean ITL alone (no utilisation to split it)."""
    weights = [1.0 / p.itl_ms for p in points]
    traffic = [weight_ms + kv_ms_per_seq * p.running for p in points]
    itl = [p.itl_ms for p in points]
    solved = _wls2(traffic, [1.0] * len(points), itl, weights)
    if solved is not None and solved[0] > 0 and solved[1] >= 0:
        return solved[0], solved[1]
    inv = _wls1(traffic, itl, weights)
    if inv <= 0:
        raise AdvisorError("the profile's ITL does not grow with memory traffic; cannot calibrate")
    return inv, 0.0


def _fit_line_nonneg(x: Sequence[float], y: Sequence[float], w: Sequence[float]) -> tuple[float, float]:
    """a + b*x by weighted least squares with a, b >= 0."""
    solved = _wls2([1.0] * len(x), x, y, w)
    if solved is not None and solved[0] >= 0 and solved[1] >= 0:
        return solved
    candidates = [(max(_wls1([1.0] * len(x), y, w), 0.0), 0.0), (0.0, max(_wls1(x, y, w), 0.0))]
    return min(candidates, key=lambda c: _wsse(x, y, w, c))


def _wsse(x: Sequence[float], y: Sequence[float], w: Sequence[float], line: tuple[float, float]) -> float:
    return sum((wi * (line[0] + line[1] * xi - yi)) ** 2 for xi, yi, wi in zip(x, y, w, strict=True))


def _wls1(x: Sequence[float], y: Sequence[float], w: Sequence[float]) -> float:
    """a minimising sum (w (a x - y))^2."""
    sxx = sum((wi * xi) ** 2 for xi, wi in zip(x, w, strict=True))
    sxy = sum(wi * wi * xi * yi for xi, yi, wi in zip(x, y, w, strict=True))
    return sxy / sxx if sxx > 0 else 0.0


def _wls2(
    x1: Sequence[float], x2: Sequence[float], y: Sequence[float], w: Sequence[float]
) -> tuple[float, float] | None:
    """(a, b) minimising sum (w (a x1 + b x2 - y))^2; None when x1 and x2 are collinear."""
    s11 = sum((wi * a) ** 2 for a, wi in zip(x1, w, strict=True))
    s22 = sum((wi * b) ** 2 for b, wi in zip(x2, w, strict=True))
    s12 = sum(wi * wi * a * b for a, b, wi in zip(x1, x2, w, strict=True))
    s1y = sum(wi * wi * a * yi for a, yi, wi in zip(x1, y, w, strict=True))
    s2y = sum(wi * wi * b * yi for b, yi, wi in zip(x2, y, w, strict=True))
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * s11 * s22:
        return None
    return (s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det


def _monotone_curve(points: Sequence[FitPoint]) -> tuple[tuple[int, float], ...]:
    """(B, running) pairs sorted by B, running made non-decreasing (noise must not make a larger
    batch run fewer sequences) and never above B."""
    curve: list[tuple[int, float]] = []
    best = 0.0
    for p in sorted(points, key=lambda p: p.max_num_seqs):
        best = min(max(best, p.running), float(p.max_num_seqs))
        curve.append((p.max_num_seqs, best))
    return tuple(curve)


def _running_at(curve: Sequence[tuple[int, float]], slots: float) -> float:
    """Mean running sequences at `slots` concurrency: linear between measured batch sizes, the
    nearest measured fill (running / B) outside them."""
    first_b, first_r = curve[0]
    if slots <= first_b:
        return slots * first_r / first_b
    for (b0, r0), (b1, r1) in itertools.pairwise(curve):
        if slots <= b1:
            return r0 + (r1 - r0) * (slots - b0) / (b1 - b0)
    last_b, last_r = curve[-1]
    return slots * last_r / last_b


def _boosted(efficiency: float, closed: float) -> float:
    return efficiency + closed * max(1.0 - efficiency, 0.0)


def _closed_queue_cycle_ms(gpu_ms: float, idle_ms: float, replicas: int) -> float:
    """Mean cycle (= ITL) of `replicas` replicas that alternate `idle_ms` on their own CPU with
    `gpu_ms` on one shared GPU: exact mean-value analysis of that closed network."""
    queued = 0.0
    response = gpu_ms
    for n in range(1, replicas + 1):
        response = gpu_ms * (1.0 + queued)
        queued = n / (response + idle_ms) * response
    return response + idle_ms


def check_count(name: str, value: int, upper: int | None = None) -> None:
    """Raise AdvisorError unless `value` is a whole number from 1 to `upper` (replicas, batch sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AdvisorError(f"{name} must be a whole number of at least 1, got {value!r}")
    if upper is not None and value > upper:
        raise AdvisorError(f"{name} must be at most {upper}, got {value}")


# What the operator compares against ----------------------------------------------------------


def default_max_num_seqs(gpu: GPU) -> int:
    """vLLM's default --max-num-seqs on this GPU (FACTS 1.3): 1024 on H100/H200/B200-class devices
    of >= 70 GiB, 256 elsewhere (A100s whatever their memory, smaller GPUs, MIG slices)."""
    if gpu.usable_memory_bytes >= LARGE_DEVICE_BYTES and "A100" not in gpu.product.upper():
        return VLLM_DEFAULT_MAX_NUM_SEQS_LARGE
    return VLLM_DEFAULT_MAX_NUM_SEQS


def replica_memory_bytes(profile: Profile, batch: int) -> int:
    """Memory one replica sized for `batch` needs: non-KV memory + a KV cache for `batch` sequences
    of the profile's prompt + output (the advisor's memory model, advisor/memory.py; the context
    follows from that pool, so the profiled --max-model-len does not size it)."""
    model, workload = profile.model, profile.workload
    layout = kv_layout.layout_of(model)
    if layout.is_full_attention:
        budget = memory.kv_budget(
            batch=batch,
            prompt_tokens=workload.prompt_tokens,
            output_tokens=workload.output_tokens,
            bytes_per_token=model.kv_bytes_per_token,
            block_size=profile.block_size,
        )
    else:
        gpu = gpu_for_profile(profile)
        budget = memory.layout_kv_budget(
            layout,
            batch=batch,
            prompt_tokens=workload.prompt_tokens,
            output_tokens=workload.output_tokens,
            in_flight_tokens=kv_layout.in_flight_tokens(
                kv_layout.vllm_default_max_num_batched_tokens(gpu.memory_bytes, gpu.product)
            ),
            block_size=profile.block_size,
        )
    return memory.non_kv_memory(profile, batch).bytes + budget.bytes


def baseline(
    perf: PerfModel, profile: Profile, gpu: GPU | None = None, batch: int | None = None
) -> Prediction:
    """One instance alone on `gpu` (default: the model's GPU), the figure gains are measured against.

    - `batch` given: one instance at that --max-num-seqs (the paper's Table IV comparison: the
      packed replicas' batch B_opt against one instance at B_opt).
    - otherwise: one instance with vLLM's defaults: --max-num-seqs 256 or 1024 (see
      `default_max_num_seqs`), running no more sequences than its default KV pool holds
      (--gpu-memory-utilization 0.92 of the device minus the non-KV memory, or the pool the profile
      measured when it is the same GPU)."""
    gpu = gpu or perf.gpu
    perf = perf.on_gpu(gpu)
    if batch is not None:
        prediction = perf.single(batch)
        return replace(prediction, note=f"one instance at --max-num-seqs {batch}")
    default = default_max_num_seqs(gpu)
    k = profile.model.kv_bytes_per_token
    layout = kv_layout.layout_of(profile.model)
    tokens = profile.workload.prompt_tokens + profile.workload.output_tokens
    sequence = memory.round_up_to_block(tokens, profile.block_size)
    if gpu.product == perf.measured_gpu_product and profile.kv_capacity_tokens and layout.is_full_attention:
        fits = max(profile.kv_capacity_tokens // sequence, 1)
        pool_source = "the profile's measured KV pool"
    else:
        non_kv = memory.non_kv_memory(profile, default).bytes
        pool = max(
            math.floor(gpu.usable_memory_bytes * memory.VLLM_DEFAULT_GPU_MEMORY_UTILIZATION) - non_kv, 0
        )
        if layout.is_full_attention:
            fits = max(pool // k // sequence, 1)
        else:  # what each request keeps while decoding, by its layers' rules
            fits = max(
                layout.num_blocks(pool, profile.block_size)
                // layout.resident_blocks(tokens, block_size=profile.block_size),
                1,
            )
        pool_source = "vLLM's default KV pool"
    effective = min(default, fits)
    prediction = perf.single(effective)
    note = f"one instance with vLLM defaults: --max-num-seqs {default}"
    if effective < default:
        note += f", of which {pool_source} holds {fits} sequences of {sequence} tokens"
    return replace(prediction, note=note)


__all__ = [
    "MPS_CONCURRENCY_GAIN",
    "FitPoint",
    "PerfModel",
    "Prediction",
    "baseline",
    "calibrate",
    "check_count",
    "default_max_num_seqs",
    "replica_memory_bytes",
]
