"""The GPU a profile was measured on, as the advisor and the performance model plan with it."""

from __future__ import annotations

from llmpack.api.profile import Profile
from llmpack.hardware import GPU, UnknownGPUError, lookup_gpu


def gpu_for_profile(profile: Profile) -> GPU:
    """The catalogue entry of the GPU the profile was measured on; for a product the catalogue
    does not know, a GPU built from the profile's own facts."""
    try:
        return lookup_gpu(profile.gpu.product)
    except UnknownGPUError:
        total = profile.gpu.memory_bytes
        return GPU(
            product=profile.gpu.product,
            description=f"{profile.gpu.product} (from the profile)",
            memory_bytes=total,
            reported_memory_mib=total >> 20,
            usable_memory_bytes=total,
            bandwidth_bytes_per_s=profile.gpu.bandwidth_bytes_per_s or 0.0,
            fp16_dense_tflops=0.0,
        )
