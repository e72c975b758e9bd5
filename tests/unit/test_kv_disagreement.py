"""When the engine's measured KV capacity disagrees with llmpack's reading of the model's config,
the engine's figure sizes the deployment and the status says so (issue 12, item 3)."""

from __future__ import annotations

from test_badinput_pure import BASE_SPEC, reconcile_through, simulated_profile

from llmpack.api.llmdeployment import LLMDeploymentSpec


def test_the_engines_kv_figure_sizes_the_replica_and_the_status_names_both():
    spec = LLMDeploymentSpec.model_validate(BASE_SPEC)
    profile = simulated_profile(spec)
    agreed = reconcile_through(BASE_SPEC, profile_json=profile.model_dump_json())
    measured = profile.model.kv_bytes_per_token * 3 // 2
    model = profile.model.model_copy(
        update={"kv_bytes_per_token": measured, "kv_bytes_per_token_config": profile.model.kv_bytes_per_token}
    )
    disagreed = reconcile_through(
        BASE_SPEC, profile_json=profile.model_copy(update={"model": model}).model_dump_json()
    )

    before, after = agreed.status["recommendation"], disagreed.status["recommendation"]
    assert "KV cache per token" not in before["explanation"]
    assert after["kvCacheBytes"] > before["kvCacheBytes"]  # sized with the engine's larger figure
    sentence = (
        f"KV cache per token: the engine measured {measured:,} bytes, llmpack's reading of the model's "
        f"config gives {profile.model.kv_bytes_per_token:,}"
    )
    assert sentence in after["explanation"]
    assert any(e[1] == "KVBytesPerTokenDisagree" for e in disagreed.events)
