"""The performance model as the planner needs it: tokens/s per GPU and ITL for each candidate
packing, and the baseline every gain is measured against (one replica with vLLM defaults).

Pure (no API calls); it lives beside the reconciler because it binds spec fields to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor import AdvisorError, perfmodel
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.profile import Profile
from llmpack.api.recommendation import Recommendation
from llmpack.hardware import GPU


@dataclass
class Predictions:
    model: perfmodel.PerfModel | None  # None: the profile could not calibrate the model
    gpu: GPU
    b_opt: int
    spec: LLMDeploymentSpec
    baseline_tokens_per_s: float | None
    packing_reason: str = ""

    @classmethod
    def build(cls, profile: Profile, rec: Recommendation, gpu: GPU, spec: LLMDeploymentSpec) -> Predictions:
        try:
            return cls._calibrated(profile, rec, gpu, spec)
        except AdvisorError as err:
            # Serving does not depend on predictions: pack by memory, show no gain, say why.
            return cls(
                None, gpu, rec.b_opt, spec, None, f"no performance prediction ({err}); packed by memory."
            )

    @classmethod
    def _calibrated(
        cls, profile: Profile, rec: Recommendation, gpu: GPU, spec: LLMDeploymentSpec
    ) -> Predictions:
        model = perfmodel.calibrate(profile)
        if profile.gpu.product != gpu.product:
            model = model.on_gpu(gpu)  # a profile measured on another GPU, rescaled by bandwidth
        baseline = perfmodel.baseline(model, profile, gpu)
        return cls(model, gpu, rec.b_opt, spec, baseline.total_tokens_per_s)

    def replicas_per_gpu(self, memory_fit: int) -> int:
        """Replicas per GPU under MPS: what memory allows, trimmed to where one more still pays
        (spec.advisor.minReplicaGain) and the SLO holds. A fixed advisor.replicasPerGPU wins."""
        if self.spec.advisor.replicas_per_gpu is not None:
            self.packing_reason = "replicas per GPU fixed by advisor.replicasPerGPU."
            return self.spec.advisor.replicas_per_gpu
        if self.model is None:
            return max(1, min(memory_fit, self.spec.sharing.max_replicas_per_gpu))
        memory_fit = max(1, memory_fit)
        decision = perfmodel.pack(
            self.model,
            self.b_opt,
            max_replicas=self.spec.sharing.max_replicas_per_gpu,
            min_gain=self.spec.advisor.min_replica_gain,
            slo_itl_ms=self.spec.slo.itl_mean_ms,
            memory_fit=memory_fit,
        )
        self.packing_reason = decision.reason
        return max(1, decision.replicas)

    def predict(self, replicas_per_gpu: int, mig_profile: str | None) -> tuple[float | None, float | None]:
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
        return packed.total_tokens_per_s, packed.itl_mean_ms
