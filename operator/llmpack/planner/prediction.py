"""The performance model as the planner needs it: tokens/s per GPU and ITL for each candidate
mode, and the baseline every gain is measured against (one replica with vLLM defaults). How many
replicas share a GPU is the advisor's decision (advisor/recommend.py shared_replicas).

Pure (no API calls).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor import AdvisorError, perfmodel
from llmpack.api.profile import Profile
from llmpack.api.recommendation import Recommendation
from llmpack.hardware import GPU


@dataclass
class Predictions:
    model: perfmodel.PerfModel | None  # None: the profile could not calibrate the model
    gpu: GPU
    b_opt: int
    baseline_tokens_per_s: float | None
    # GPUs the profiled engine spanned (tensor x pipeline parallel): its tokens/s are all of theirs
    gpus_per_engine: int = 1

    @classmethod
    def build(cls, profile: Profile, rec: Recommendation, gpu: GPU) -> Predictions:
        try:
            model = perfmodel.calibrate(profile, gpu=gpu)  # another GPU: rescaled by bandwidth
        except AdvisorError:
            # Serving does not depend on predictions: the advisor packed by memory and said why.
            return cls(None, gpu, rec.b_opt, None)
        baseline = perfmodel.baseline(model, profile, gpu)
        per_engine = profile.model.gpus_per_engine
        return cls(model, gpu, rec.b_opt, baseline.total_tokens_per_s / per_engine, per_engine)

    def predict(self, replicas_per_gpu: int, mig_profile: str | None) -> tuple[float | None, float | None]:
        """(tokens/s per GPU, mean ITL in ms of one replica) of this packing; an engine spanning
        several GPUs shares its tokens/s among them."""
        if self.model is None:
            return None, None
        if mig_profile:
            one = self.model.mig(self.gpu.mig_profile(mig_profile), self.b_opt)
            return one.total_tokens_per_s * replicas_per_gpu, one.itl_mean_ms
        packed = (
            self.model.single(self.b_opt)
            if replicas_per_gpu == 1
            else self.model.mps(replicas_per_gpu, self.b_opt)
        )
        return packed.total_tokens_per_s / self.gpus_per_engine, packed.itl_mean_ms
