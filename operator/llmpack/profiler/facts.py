"""What one profiling run is asked to measure, and the model and GPU facts a Profile records.

The model's shape comes from the command line (`--num-layers --num-kv-heads --head-dim
--weight-bytes`, rendered by the operator from `spec.model.architecture`) where given, else from
the model's own config.json with vLLM's rules (advisor/model_config.py; the caller reads it), else
from the built-in catalogue (advisor/architectures.py); a model none of them knows is a user
error that says which flags to pass. Pure: no processes, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpack.advisor.architectures import Architecture, find_architecture
from llmpack.advisor.memory import context_problem, dtype_bytes, kv_bytes_per_token
from llmpack.advisor.model_config import ModelConfigError, ModelShape, model_shape
from llmpack.advisor.parallelism import Parallelism, per_worker
from llmpack.api.engine_flags import engine_flags
from llmpack.api.llmdeployment import Architecture as SpecArchitecture
from llmpack.api.profile import GPUFacts, KVLayoutFacts, ModelFacts, WorkloadShape
from llmpack.errors import UserError
from llmpack.hardware import UnknownGPUError, parse_gpu_product

ARCHITECTURE_FLAGS = ("--num-layers", "--num-kv-heads", "--head-dim", "--weight-bytes")


@dataclass(frozen=True)
class ArchitectureOverride:
    """The architecture flags as given; any of them may be absent."""

    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    weight_bytes: int | None = None
    # layers that keep less than the whole context (--sliding-window ... --state-bytes-per-layer)
    kv_layout: KVLayoutFacts | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in self._values())

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self._values())

    def missing(self) -> list[str]:
        return [flag for flag, v in zip(ARCHITECTURE_FLAGS, self._values(), strict=True) if v is None]

    def _values(self) -> tuple[int | None, ...]:
        return (self.num_layers, self.num_kv_heads, self.head_dim, self.weight_bytes)


def override_for(arch: SpecArchitecture | None) -> ArchitectureOverride:
    """The override a spec's model.architecture gives (what the operator renders as flags)."""
    if arch is None:
        return ArchitectureOverride()
    layout = None
    if arch.special_layers:
        layout = KVLayoutFacts(
            sliding_window=arch.sliding_window,
            sliding_window_layers=arch.sliding_window_layers or 0,
            attention_chunk_size=arch.attention_chunk_size,
            chunked_attention_layers=arch.chunked_attention_layers or 0,
            state_layers=arch.state_layers or 0,
            state_bytes_per_layer=arch.state_bytes_per_layer,
        )
    return ArchitectureOverride(
        arch.num_layers, arch.num_kv_heads, arch.head_dim, arch.parameter_bytes, layout
    )


@dataclass(frozen=True)
class ProfileRequest:
    """One `llmpack profile` run for the vllm and simulated backends, validated."""

    model: str
    gpu_product: str
    dtype: str
    max_model_len: int
    prompt_tokens: int
    output_tokens: int
    revision: str | None = None
    architecture: ArchitectureOverride = ArchitectureOverride()
    # the model's config.json (a local folder's, or what transformers fetched), when it was read
    config: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # engine flags of the spec that change the measurement (serving.extraArgs less the server's own)
    engine_args: tuple[str, ...] = ()

    @property
    def kv_cache_dtype(self) -> str:
        """--kv-cache-dtype among the engine flags (`auto` when absent)."""
        return flag_value(self.engine_args, "--kv-cache-dtype") or "auto"

    @property
    def context_limit(self) -> tuple[int | None, str]:
        """The longest context the model allows, and where that comes from (`model_context_limit`)."""
        return model_context_limit(self.model, self.shape)

    @property
    def shape(self) -> ModelShape | None:
        """The model's shape by vLLM's rules from its config, if it was read."""
        if self.config is None:
            return None
        try:
            return model_shape(self.config, read_layout=self.architecture.kv_layout is None)
        except ModelConfigError as err:
            raise UserError(f"--model {self.model}: {err}") from None

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise UserError("--model is empty: give a Hugging Face id or a local path")
        try:
            dtype_bytes(self.dtype)
        except ValueError as err:
            raise UserError(f"--dtype: {err}") from None
        for flag, value in (
            ("--max-model-len", self.max_model_len),
            ("--prompt-tokens", self.prompt_tokens),
            ("--output-tokens", self.output_tokens),
        ):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        limit, source = self.context_limit
        if limit is not None:
            problem = context_problem(
                self.model,
                limit,
                source,
                length=(self.max_model_len, "--max-model-len"),
                workload=(
                    self.prompt_tokens + self.output_tokens,
                    f"--prompt-tokens {self.prompt_tokens} + --output-tokens {self.output_tokens}",
                ),
                workload_fix="the workload (spec.workload)",
            )
            if problem is not None:
                raise UserError(problem)
        if self.prompt_tokens + self.output_tokens > self.max_model_len:
            raise UserError(
                f"--prompt-tokens {self.prompt_tokens} + --output-tokens {self.output_tokens} exceed "
                f"--max-model-len {self.max_model_len}: vLLM would reject every request; raise "
                "--max-model-len or shorten the workload"
            )
        try:
            dtype_bytes(self.kv_cache_dtype)
        except ValueError as err:
            raise UserError(f"--kv-cache-dtype in --engine-args: {err}") from None
        for flag, size in zip(ARCHITECTURE_FLAGS, self.architecture._values(), strict=True):
            if size is not None and size < 1:
                raise UserError(f"{flag} must be at least 1, got {size}")

    def model_facts(self, measured_weight_bytes: int | None = None) -> ModelFacts:
        """The model as served, by one GPU: under --tensor-parallel-size or --pipeline-parallel-size
        one worker's share (advisor/parallelism.py). Weight bytes measured by the engine (one
        worker's) win over flags and catalogue; with --disable-hybrid-kv-cache-manager,
        local-attention layers keep the whole context."""
        flags = engine_flags(list(self.engine_args))
        facts = model_facts(
            self.model,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            revision=self.revision,
            architecture=self.architecture,
            shape=self.shape,
            kv_cache_dtype=self.kv_cache_dtype,
        )
        layout = facts.kv_layout
        if layout is not None and not flags.hybrid_kv_cache_manager:
            facts = facts.model_copy(update={"kv_layout": layout.without_hybrid_manager(facts.num_layers)})
        facts = per_worker(facts, Parallelism.of(flags))
        if measured_weight_bytes:
            facts = facts.model_copy(update={"weight_bytes": measured_weight_bytes})
        return facts

    def workload(self, **extra: Any) -> WorkloadShape:
        return WorkloadShape(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, **extra)


def model_context_limit(model: str, shape: ModelShape | None) -> tuple[int | None, str]:
    """The longest context `model` allows (the most --max-model-len vLLM accepts) and where the
    figure comes from: its config.json read by vLLM's rules, else llmpack's catalogue; (None, "")
    when neither names one (vLLM then assumes 2,048 and accepts any --max-model-len given)."""
    if shape is not None:
        if shape.max_position_embeddings:
            return shape.max_position_embeddings, "derived from its config.json as vLLM does"
        return None, ""
    arch = find_architecture(model)
    if arch is not None:
        return arch.max_position_embeddings, "max_position_embeddings in llmpack's catalogue"
    return None, ""


def model_facts(
    model: str,
    *,
    dtype: str,
    max_model_len: int,
    revision: str | None = None,
    architecture: ArchitectureOverride | None = None,
    measured_weight_bytes: int | None = None,
    shape: ModelShape | None = None,
    kv_cache_dtype: str = "auto",
) -> ModelFacts:
    """ModelFacts from the architecture flags, completed from the model's config (`shape`) or the
    catalogue where they are partial. Raises UserError for a model none of them describes."""
    override = architecture or ArchitectureOverride()
    limit, _ = model_context_limit(model, shape)
    arch = find_architecture(model)
    if shape is None and arch is not None and not override.given:
        shape = arch.shape()  # the catalogue, read by the same rules as a config.json
    if shape is not None and not override.given:
        if override.kv_layout is not None:  # the layout as given, the rest as the config says
            shape = dataclasses.replace(shape, kv_layout=override.kv_layout)
        return _facts_from_shape(
            model,
            shape,
            dtype=dtype,
            max_model_len=max_model_len,
            revision=revision,
            weight_bytes=measured_weight_bytes,
            kv_cache_dtype=kv_cache_dtype,
        )
    if arch is None and not override.complete:
        if override.given:
            raise UserError(
                f"model {model!r} is not in the built-in catalogue and its architecture is incomplete: "
                f"also pass {', '.join(override.missing())}"
            )
        raise UserError(
            f"unknown model {model!r}: the built-in catalogue does not know its architecture; pass "
            f"{' N, '.join(ARCHITECTURE_FLAGS)} N (layers, KV heads, head dim, bytes of the weights), "
            "or set spec.model.architecture in the LLMDeployment"
        )
    if arch is not None:
        facts = arch.model_facts(name=model, dtype=dtype, max_model_len=max_model_len, revision=revision)
    else:
        facts = None
    layers = override.num_layers or (facts.num_layers if facts else None)
    kv_heads = override.num_kv_heads or (facts.num_kv_heads if facts else None)
    head_dim = override.head_dim or (facts.head_dim if facts else None)
    weights = measured_weight_bytes or override.weight_bytes or (facts.weight_bytes if facts else None)
    assert layers and kv_heads and head_dim and weights  # guaranteed by the checks above
    layout = _layout(override, layers, shape, arch)
    if layout is not None and layout.special_layers > layers:
        raise UserError(
            f"the architecture names {layout.special_layers} sliding-window, chunked and state layers, "
            f"more than its {layers} layers"
        )
    attention_layers = layers - (layout.state_layers if layout else 0)
    data = facts.model_dump() if facts else {}
    data.update(
        name=model,
        revision=revision,
        dtype=dtype,
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        weight_bytes=weights,
        kv_bytes_per_token=kv_bytes_per_token(
            attention_layers, kv_heads, head_dim, kv_dtype_name(kv_cache_dtype, dtype)
        ),
        kv_layout=layout,
        kv_cache_dtype=None if kv_cache_dtype == "auto" else kv_cache_dtype,
        max_model_len=max_model_len,
        max_position_embeddings=limit,
    )
    if (
        arch is not None
        and override.given
        and (layers, kv_heads, head_dim)
        != (
            arch.num_layers,
            arch.num_kv_heads,
            arch.head_dim,
        )
    ):
        # the flags describe another shape than the catalogue's: its other figures do not apply
        for key in ("num_attention_heads", "hidden_size", "vocab_size", "num_parameters"):
            data[key] = None
    return ModelFacts.model_validate(data)


def _layout(
    override: ArchitectureOverride, layers: int, shape: ModelShape | None, arch: Architecture | None
) -> KVLayoutFacts | None:
    """The layers that keep less than the whole context: as given, else the config's or the
    catalogue's where it describes a model of as many layers (otherwise it is another model)."""
    if override.kv_layout is not None:
        return override.kv_layout
    if shape is not None and shape.num_layers == layers:
        return shape.kv_layout
    if arch is not None and arch.num_layers == layers:
        return arch.kv_layout
    return None


def flag_value(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    """The value of `flag` in an argument list (`--flag v` or `--flag=v`; underscores read as
    dashes, as vLLM's parser reads them; the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        name, eq, given = arg.partition("=")
        if name.replace("_", "-") != flag:
            continue
        if eq:
            value = given
        elif i + 1 < len(args):
            value = args[i + 1]
    return value


def kv_dtype_name(kv_cache_dtype: str, dtype: str) -> str:
    """The dtype of a KV element: the KV cache dtype, or the served dtype for `auto`."""
    return dtype if kv_cache_dtype.strip().lower() == "auto" else kv_cache_dtype


def _facts_from_shape(
    model: str,
    shape: ModelShape,
    *,
    dtype: str,
    max_model_len: int,
    revision: str | None,
    weight_bytes: int | None,
    kv_cache_dtype: str,
) -> ModelFacts:
    """ModelFacts of a model whose config was read. Weights: measured by the engine, else the
    catalogue's, else an estimate from the config (embeddings + 12 x hidden^2 per layer), which
    only sizes memory before the engine has measured it."""
    arch = find_architecture(model)
    if weight_bytes is None and arch is not None:
        weight_bytes = arch.weight_bytes(dtype)
    if weight_bytes is None:
        hidden = shape.hidden_size or shape.num_attention_heads * shape.head_dim
        params = 12 * hidden * hidden * shape.num_layers + 2 * hidden * (shape.vocab_size or 0)
        weight_bytes = max(params, 1) * dtype_bytes(dtype if dtype != "auto" else (shape.dtype or "auto"))
    return ModelFacts(
        name=model,
        revision=revision,
        dtype=dtype,
        kv_cache_dtype=None if kv_cache_dtype == "auto" else kv_cache_dtype,
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        num_attention_heads=shape.num_attention_heads,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        weight_bytes=weight_bytes,
        kv_bytes_per_token=shape.kv_bytes_per_token(kv_cache_dtype, dtype),
        latent_attention=shape.mla,
        kv_layout=shape.kv_layout,
        num_parameters=arch.num_parameters if arch is not None else None,
        max_model_len=max_model_len,
        max_position_embeddings=shape.max_position_embeddings,
    )


def gpu_facts(
    product: str, memory_bytes: int | None = None, bandwidth_bytes_per_s: float | None = None
) -> GPUFacts:
    """GPUFacts for a `nvidia.com/gpu.product` value. The memory the device reported (NVML) wins over
    the catalogue; the catalogue's datasheet bandwidth wins over one derived from NVML's clocks
    (that derivation is unverified for GDDR parts). A product the catalogue does not know needs the
    device's memory."""
    try:
        label = parse_gpu_product(product)
    except UnknownGPUError as err:
        if memory_bytes is None:
            raise UserError(
                f"--gpu: {err}; or profile on the GPU itself so NVML reports its memory"
            ) from None
        return GPUFacts(
            product=product.strip(), memory_bytes=memory_bytes, bandwidth_bytes_per_s=bandwidth_bytes_per_s
        )
    gpu = label.gpu
    if label.mig_profile is not None:
        mig = label.mig_profile
        return GPUFacts(
            product=product.strip(),
            memory_bytes=memory_bytes or mig.memory_bytes,
            bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s * mig.bandwidth_fraction,
            mig_profile=mig.name,
        )
    return GPUFacts(
        product=product.strip(),
        memory_bytes=memory_bytes or gpu.memory_bytes,
        bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s or bandwidth_bytes_per_s,
    )
