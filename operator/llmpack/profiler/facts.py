"""What one profiling run is asked to measure, and the model and GPU facts a Profile records.

The model's shape comes from the command line (`--num-layers --num-kv-heads --head-dim
--weight-bytes`, rendered by the operator from `spec.model.architecture`) where given, else from
the built-in catalogue (advisor/architectures.py); a model neither knows is a user error that
says which flags to pass. Pure: no processes, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.memory import dtype_bytes, kv_bytes_per_token
from llmpack.api.profile import GPUFacts, ModelFacts, WorkloadShape
from llmpack.cli import UserError
from llmpack.hardware import UnknownGPUError, parse_gpu_product

ARCHITECTURE_FLAGS = ("--num-layers", "--num-kv-heads", "--head-dim", "--weight-bytes")


@dataclass(frozen=True)
class ArchitectureOverride:
    """The architecture flags as given; any of them may be absent."""

    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    weight_bytes: int | None = None

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
        if self.prompt_tokens + self.output_tokens > self.max_model_len:
            raise UserError(
                f"--prompt-tokens {self.prompt_tokens} + --output-tokens {self.output_tokens} exceed "
                f"--max-model-len {self.max_model_len}: vLLM would reject every request; raise "
                "--max-model-len or shorten the workload"
            )
        for flag, value in zip(ARCHITECTURE_FLAGS, self.architecture._values(), strict=True):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")

    def model_facts(self, measured_weight_bytes: int | None = None) -> ModelFacts:
        """The model as served. Weight bytes measured by the engine win over flags and catalogue."""
        return model_facts(
            self.model,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            revision=self.revision,
            architecture=self.architecture,
            measured_weight_bytes=measured_weight_bytes,
        )

    def workload(self, **extra: object) -> WorkloadShape:
        return WorkloadShape(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, **extra)


def model_facts(
    model: str,
    *,
    dtype: str,
    max_model_len: int,
    revision: str | None = None,
    architecture: ArchitectureOverride | None = None,
    measured_weight_bytes: int | None = None,
) -> ModelFacts:
    """ModelFacts from the architecture flags, completed from the catalogue where they are partial.
    Raises UserError for a model the catalogue does not know and the flags do not describe."""
    override = architecture or ArchitectureOverride()
    arch = find_architecture(model)
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
    data = facts.model_dump() if facts else {}
    data.update(
        name=model,
        revision=revision,
        dtype=dtype,
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        weight_bytes=weights,
        kv_bytes_per_token=kv_bytes_per_token(layers, kv_heads, head_dim, dtype),
        max_model_len=max_model_len,
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
