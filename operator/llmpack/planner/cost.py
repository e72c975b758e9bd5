"""Cost of a deployment and the basis of its figures: pure functions of a recommendation, a price
and the profile it rests on.

Cost is priced per GPU-hour of the product (the cluster admin's chart value cost.gpuHourPrices,
e.g. what the cloud bills for an on-demand GPU). It takes the recommendation's predictions as they
are: the cost of a million tokens assumes the replicas run at the advised load (B_opt sequences
each), so a deployment serving less traffic pays more per token than this says. Limits: the GPU's
price only (no CPU, memory, storage or network), and whole GPU-hours as billed by the hour of use.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmpack.api.llmdeployment import CostStatus, RecommendationStatus
from llmpack.api.profile import Profile

SECONDS_PER_HOUR = 3600
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices per million tokens, as model APIs quote them


def cost_status(*, recommendation: RecommendationStatus, gpu_hour_price: float, currency: str) -> CostStatus:
    """The cost block of `recommendation` at `gpu_hour_price` (currency units per GPU-hour)."""
    gpu_hours = recommendation.replicas / recommendation.replicas_per_gpu
    tokens_per_s = recommendation.predicted_tokens_per_second_per_gpu
    baseline = recommendation.baseline_tokens_per_second_per_gpu
    per_million = per_million_tokens(gpu_hour_price, tokens_per_s)
    baseline_per_million = per_million_tokens(gpu_hour_price, baseline)
    saving = None
    if per_million is not None and baseline_per_million is not None:
        saving = f"{(1 - per_million / baseline_per_million) * 100:.1f}%"
    return CostStatus(
        currency=currency,
        gpu_hour_price=gpu_hour_price,
        gpu_hours_per_hour=round(gpu_hours, 4),
        cost_per_hour=round(gpu_hours * gpu_hour_price, 4),
        cost_per_million_tokens=_round(per_million),
        baseline_cost_per_million_tokens=_round(baseline_per_million),
        saving=saving,
    )


def pool_member_cost(
    *, alone: CostStatus, shares: Sequence[float], tokens_per_s: float, pool: str
) -> CostStatus:
    """The cost of a GPUPool member: `shares` are its fractions of the memory in use on each pool
    GPU it sits on (so a pool's GPUs are paid for in full by its members), `tokens_per_s` what the
    pool predicts its replicas deliver together; `alone` is its cost block as if it ran alone,
    whose price, currency and baseline it keeps."""
    gpu_hours = sum(shares)
    per_million = None
    if tokens_per_s > 0:
        per_million = (
            alone.gpu_hour_price * gpu_hours / (tokens_per_s * SECONDS_PER_HOUR) * TOKENS_PER_PRICE_UNIT
        )
    baseline = alone.baseline_cost_per_million_tokens
    saving = None
    if per_million is not None and baseline:
        saving = f"{(1 - per_million / baseline) * 100:.1f}%"
    return alone.model_copy(
        update={
            "gpu_hours_per_hour": round(gpu_hours, 4),
            "cost_per_hour": round(gpu_hours * alone.gpu_hour_price, 4),
            "cost_per_million_tokens": _round(per_million),
            "saving": saving,
            "pool_share": " + ".join(f"{s:.2f}" for s in shares) + f" of GPUs of the GPUPool {pool}",
        }
    )


def per_million_tokens(gpu_hour_price: float, tokens_per_s_per_gpu: float | None) -> float | None:
    """Price of a million tokens at `tokens_per_s_per_gpu` on GPUs of `gpu_hour_price`."""
    if not tokens_per_s_per_gpu or tokens_per_s_per_gpu <= 0:
        return None
    return gpu_hour_price / (tokens_per_s_per_gpu * SECONDS_PER_HOUR) * TOKENS_PER_PRICE_UNIT


def basis(profile: Profile, product: str) -> str:
    """What the figures of a decision for `product` rest on (RecommendationStatus.basis)."""
    if profile.engine.version == "simulated":
        return "simulated"
    device = profile.engine.device
    if device is not None and device != "cuda":
        return f"rescaled from {device}"
    if profile.gpu.product != product:
        return f"rescaled from {profile.gpu.product}"
    return "measured"


def _round(value: float | None) -> float | None:
    """Four significant digits: a price of 0.0123 keeps its figures, one of 1234.5 loses cents."""
    return None if value is None else float(f"{value:.4g}")
