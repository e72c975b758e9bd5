"""The `simulated` backend: a Profile from a memory-traffic model instead of a GPU, for tests, the
demo and CI. Deterministic for a seed; small seeded noise so it looks measured.

One decode step of b running sequences (the same form as the performance model,
advisor/perfmodel.py, which calibrates these terms on measured profiles):

    step(b) = W / (eta_w * BW) + b * c * k / (eta_kv * BW)     weights + KV cache read per step
              + tau_0 + tau_1 * b                              CPU gap per step (scheduling, sampling)
              + (b / O) * prefill                              the prompts started meanwhile

W weight bytes, k KV bytes per token, c = prompt + output / 2 the mean context, BW the GPU's
bandwidth, O output tokens per request, prefill = 2 x parameters x prompt / (eta_c x FLOPS).
Each running sequence emits one token per step, so the mean ITL is step(b), output tokens/s is
b / step(b) (it plateaus at eta_kv * BW / (c * k)) and latency grows linearly with b.

Memory: vLLM's default pool is gmu x device memory minus the weights and the non-KV overhead.
Concurrency that needs more KV than the pool holds runs at what fits and preempts the rest.
The constants are plausible for vLLM on recent datacenter GPUs, not fitted: a simulated profile is
for exercising the operator, not for deciding a deployment.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from llmpack.advisor.engine_memory import engine_memory
from llmpack.advisor.kv_layout import in_flight_tokens, layout_of, vllm_default_max_num_batched_tokens
from llmpack.advisor.memory import DEFAULT_BLOCK_SIZE, GIB, VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, dtype_bytes
from llmpack.advisor.parallelism import Parallelism
from llmpack.api.engine_flags import engine_flags
from llmpack.api.profile import EngineFacts, Profile, ProfilePoint
from llmpack.errors import UserError
from llmpack.hardware import GPU, UnknownGPUError, parse_gpu_product
from llmpack.profiler.backend import Backend, BackendError
from llmpack.profiler.facts import ProfileRequest, flag_value, gpu_facts

MIB = 1 << 20


@dataclass(frozen=True)
class SimulationParameters:
    weight_efficiency: float = 0.85  # eta_w: GEMMs stream the weights near peak bandwidth
    kv_efficiency: float = 0.5  # eta_kv: paged attention reads the KV cache less efficiently
    compute_efficiency: float = 0.35  # eta_c: prefill GEMMs against dense fp16 TFLOPS
    idle_fixed_ms: float = 2.0  # tau_0
    idle_per_sequence_ms: float = 0.01  # tau_1
    non_kv_bytes: int = 2 * GIB  # CUDA context + activation peak + CUDA graphs
    gpu_memory_utilization: float = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    noise: float = 0.015  # relative standard deviation of throughput and latency
    prompts_per_batch: int = 8  # requests per point = max(prompts_per_batch x B, min_prompts)
    min_prompts: int = 64


class SimulatedBackend(Backend):
    name = "simulated"

    def __init__(
        self,
        request: ProfileRequest,
        seed: int = 0,
        parameters: SimulationParameters | None = None,
    ) -> None:
        try:
            label = parse_gpu_product(request.gpu_product)
        except UnknownGPUError as err:
            raise UserError(f"--gpu: {err} (the simulated backend needs the catalogue's figures)") from None
        self.request = request
        self.seed = seed
        self.p = parameters or SimulationParameters()
        self.gpu: GPU = label.gpu
        self.model = request.model_facts()
        # what the engine flags change: quantized or draft weights, LoRA slots, draft KV layers
        flags = engine_flags(list(request.engine_args))
        self.engine_memory = engine_memory(self.model, flags)
        self.model = self.model.model_copy(
            update={
                "weight_bytes": self.engine_memory.weight_bytes,
                "kv_bytes_per_token": self.engine_memory.kv_bytes_per_token,
            }
        )
        self.non_kv_bytes = self.p.non_kv_bytes + self.engine_memory.extra_bytes
        self.layout_notes: list[str] = []
        plain = dataclasses.replace(request, engine_args=()).model_facts().kv_layout
        local = plain is not None and bool(plain.sliding_window_layers or plain.chunked_attention_layers)
        if local and not flags.hybrid_kv_cache_manager:
            self.layout_notes.append(
                "--disable-hybrid-kv-cache-manager: vLLM keeps the whole context in the sliding-window "
                "and chunked layers beside full attention, and so are they sized here"
            )
        parallelism = Parallelism.of(flags)
        if parallelism.world_size > 1:
            self.layout_notes.append(
                f"{parallelism.flags()}: one engine on {parallelism.world_size} GPUs; memory is one GPU's "
                "share (vLLM's per-worker rules), tokens/s the engine's, each GPU reading its share at "
                "the GPU's bandwidth (the all-reduce and pipeline bubbles between GPUs are left out)"
            )
        self.gpu_facts = gpu_facts(request.gpu_product)
        self.bandwidth = self.gpu_facts.bandwidth_bytes_per_s or self.gpu.bandwidth_bytes_per_s
        usable = self.gpu.usable_memory_bytes
        if label.mig_profile is not None:
            usable = label.mig_profile.memory_bytes
            fraction = min(label.mig_profile.bandwidth_fraction, label.mig_profile.compute_fraction)
            self.flops = self.gpu.fp16_dense_tflops * 1e12 * fraction
        else:
            self.flops = self.gpu.fp16_dense_tflops * 1e12
        self.usable_bytes = usable
        pool = int(self.p.gpu_memory_utilization * usable) - self.model.weight_bytes - self.non_kv_bytes
        # vLLM's rule per kind of layer (advisor/kv_layout.py); with full attention only, the pool
        # holds blocks x block size tokens
        self.layout = layout_of(self.model)
        scheduled = flags.max_num_batched_tokens
        self.in_flight = in_flight_tokens(
            scheduled or vllm_default_max_num_batched_tokens(usable, self.gpu_facts.product),
            async_scheduling=flags.async_scheduling,
        )
        # --block-size where the spec sets it (vLLM's choices are checked by its parser), else CUDA's
        self.block_size = _int_flag(request.engine_args, "--block-size") or DEFAULT_BLOCK_SIZE
        self.kv_blocks = self.layout.num_blocks(pool, self.block_size)
        if self.layout.is_full_attention:
            self.kv_capacity_tokens = self.kv_blocks * self.block_size
        else:
            self.kv_capacity_tokens = self.layout.capacity_tokens(
                pool,
                max_model_len=request.max_model_len,
                block_size=self.block_size,
                in_flight_tokens=self.in_flight,
            )
        self.pool_bytes = max(pool, 0)

    def start(self) -> None:
        # vLLM refuses to start without room for one sequence of max-model-len (FACTS 1.1)
        request = self.request.prompt_tokens + self.request.output_tokens
        if not self.layout.is_full_attention:
            self._start_layout(request)
            return
        if self.kv_capacity_tokens < min(request, self.request.max_model_len):
            raise BackendError(
                f"{self.model.name} does not fit on {self.gpu_facts.product}: the KV cache left after "
                f"{self.model.weight_bytes / GIB:.1f} GiB of weights holds {self.kv_capacity_tokens:,} "
                f"tokens, fewer than one typical request of {request:,}: serve on a GPU with more memory "
                "or from a quantized checkpoint"
            )
        if self.kv_capacity_tokens < self.request.max_model_len:
            raise BackendError(
                f"{self.model.name} does not fit on {self.gpu_facts.product}: the KV cache left after "
                f"{self.model.weight_bytes / GIB:.1f} GiB of weights holds {self.kv_capacity_tokens:,} "
                "tokens, "
                f"fewer than --max-model-len {self.request.max_model_len}: set spec.model.maxModelLen to at "
                f"most {self.kv_capacity_tokens}, or serve on a GPU with more memory"
            )

    def _kv_read(self, context: float) -> float:
        """KV bytes a decode step reads per token of context (kv_layout.read_bytes_per_token)."""
        if self.layout.is_full_attention:
            return float(self.model.kv_bytes_per_token)
        return self.layout.read_bytes_per_token(context)

    def _start_layout(self, request: int) -> None:
        """vLLM's start-up check for a model whose layers keep less than the whole context: the
        pool holds one request of --max-model-len by each layer's rule."""
        layout, bs = self.layout, self.block_size
        one = layout.blocks_per_request(
            self.request.max_model_len, block_size=bs, in_flight_tokens=self.in_flight
        )
        if one <= self.kv_blocks:
            return
        longest = layout.longest_context(
            self.pool_bytes, limit=self.request.max_model_len, block_size=bs, in_flight_tokens=self.in_flight
        )
        where = (
            f"the KV cache left after {self.model.weight_bytes / GIB:.1f} GiB of weights holds "
            f"{self.kv_blocks:,} blocks of {layout.describe()}"
        )
        if longest < request:
            raise BackendError(
                f"{self.model.name} does not fit on {self.gpu_facts.product}: {where}, not one typical "
                f"request of {request:,} tokens: serve on a GPU with more memory or from a quantized "
                "checkpoint"
            )
        raise BackendError(
            f"{self.model.name} does not fit on {self.gpu_facts.product}: {where}, not one request of "
            f"--max-model-len {self.request.max_model_len}: set spec.model.maxModelLen to at most "
            f"{longest}, or serve on a GPU with more memory"
        )

    # -- the model ----------------------------------------------------------------------------

    def _rng(self, batch: int) -> random.Random:
        # seeded by the point itself, so a batch gets the same figures whatever the sweep order
        return random.Random(f"{self.seed}:{self.model.name}:{self.gpu_facts.product}:{batch}")

    def step_ms(self, running: float) -> float:
        prompt, output = self.request.prompt_tokens, self.request.output_tokens
        context = prompt + output / 2
        weights = self.model.weight_bytes / (self.p.weight_efficiency * self.bandwidth)
        kv = running * context * self._kv_read(context) / (self.p.kv_efficiency * self.bandwidth)
        idle = (self.p.idle_fixed_ms + self.p.idle_per_sequence_ms * running) / 1000
        return 1000 * (weights + kv + idle + running / output * self.prefill_s())

    def prefill_s(self) -> float:
        parameters = self.model.weight_bytes / dtype_bytes(self.model.dtype)
        return 2 * parameters * self.request.prompt_tokens / (self.p.compute_efficiency * self.flops)

    def measure(self, batch: int) -> ProfilePoint:
        p = self.p
        rng = self._rng(batch)
        prompt, output = self.request.prompt_tokens, self.request.output_tokens
        fits = self.kv_blocks / self.layout.resident_blocks(prompt + output, block_size=self.block_size)
        running = min(float(batch), fits)
        num_prompts = max(p.prompts_per_batch * batch, p.min_prompts)
        overflow = max(batch - fits, 0.0) / batch
        preemptions = math.ceil(overflow * num_prompts) if overflow > 0 else 0

        def noisy(value: float) -> float:
            return value * (1 + rng.gauss(0, p.noise))

        step = noisy(self.step_ms(running))
        prefill_ms = 1000 * self.prefill_s()
        queue_ms = (batch / running - 1) * output * step  # requests waiting for KV room
        ttft = prefill_ms + step + queue_ms
        e2e_s = (ttft + (output - 1) * step) / 1000
        requests_per_s = batch / e2e_s
        bytes_per_step = self.model.weight_bytes + running * (prompt + output / 2) * self._kv_read(
            prompt + output / 2
        )
        dram = min(bytes_per_step / (step / 1000) / self.bandwidth, 1.0)
        busy = 1 - (p.idle_fixed_ms + p.idle_per_sequence_ms * running) / step
        return ProfilePoint(
            max_num_seqs=batch,
            total_tokens_per_s=requests_per_s * (prompt + output),
            output_tokens_per_s=requests_per_s * output,
            requests_per_s=requests_per_s,
            itl_mean_ms=step,
            itl_p50_ms=step * 0.99,
            itl_p99_ms=step + prefill_ms,  # a step that carries a prefill
            tpot_mean_ms=step,
            tpot_p50_ms=step * 0.99,
            tpot_p99_ms=step * 1.05,
            ttft_mean_ms=ttft,
            ttft_p50_ms=ttft * 0.95,
            ttft_p99_ms=ttft * 1.5 + step,
            kv_cache_usage_peak=min(running / fits, 1.0),
            kv_capacity_tokens=self.kv_capacity_tokens,
            preemptions=preemptions,
            gpu_memory_used_bytes=min(
                int(p.gpu_memory_utilization * self.usable_bytes) + 512 * MIB, self.gpu_facts.memory_bytes
            ),
            gpu_utilization=min(max(busy, 0.0), 1.0),
            memory_busy_fraction=min(dram * 1.1, 1.0),
            dram_bandwidth_utilization=dram,
            sm_occupancy=min(0.05 + 0.6 * running / (running + 64), 1.0),
            mean_running=running,
            completed=num_prompts,
            duration_s=num_prompts / requests_per_s,
        )

    def profile(self, points: list[ProfilePoint], notes: list[str]) -> Profile:
        return Profile(
            model=self.model,
            gpu=self.gpu_facts,
            engine=EngineFacts(version="simulated"),
            workload=self.request.workload(dataset="random (simulated)"),
            points=points,
            block_size=self.block_size,
            gpu_memory_utilization=self.p.gpu_memory_utilization,
            kv_capacity_tokens=self.kv_capacity_tokens,
            non_kv_memory_bytes=self.model.weight_bytes + self.non_kv_bytes,
            backend="simulated",
            source=f"llmpack simulated backend, seed {self.seed}: memory-traffic model, not a measurement",
            notes=[*notes, *self.engine_memory.notes, *self.layout_notes],
        )


def _int_flag(args: tuple[str, ...], flag: str) -> int | None:
    """A whole-number engine flag's value, None when absent or not a plain number (the operator
    refuses those before any Job)."""
    value = flag_value(args, flag)
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None
