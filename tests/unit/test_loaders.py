"""Profile JSON (the contract) and the paper CSV loader, including where the paper data is found."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmpack.advisor.errors import PaperDataError, UnknownModelError
from llmpack.advisor.loaders import (
    ENV_PAPER_DATA,
    load_paper_profile,
    load_profile,
    paper_data_candidates,
    resolve_paper_data_dir,
)
from llmpack.api.profile import Profile, ProfileError

GIB = 1 << 30


@pytest.fixture(scope="module")
def paper_dir() -> Path:
    return resolve_paper_data_dir()


# Finding the paper data -----------------------------------------------------------------------


def test_default_location_is_shared_beside_the_repo():
    repo = Path(__file__).resolve().parents[2]
    default = resolve_paper_data_dir(env={})
    assert default == repo.parent / "shared" / "paper-data"
    assert default in paper_data_candidates()


def test_explicit_dir_then_env_win(paper_dir, tmp_path):
    assert resolve_paper_data_dir(paper_dir, env={}) == paper_dir
    assert resolve_paper_data_dir(env={ENV_PAPER_DATA: str(paper_dir)}) == paper_dir
    with pytest.raises(PaperDataError, match=r"--paper-data points at .* holds no profiles\.csv"):
        resolve_paper_data_dir(tmp_path, env={ENV_PAPER_DATA: str(paper_dir)})
    with pytest.raises(PaperDataError, match=r"\$LLMPACK_PAPER_DATA points at"):
        resolve_paper_data_dir(env={ENV_PAPER_DATA: str(tmp_path)})


def test_not_found_names_the_three_ways(monkeypatch, tmp_path):
    import llmpack.advisor.loaders as loaders

    monkeypatch.setattr(loaders, "_source_repo_root", lambda: tmp_path / "repo")
    with pytest.raises(PaperDataError) as err:
        resolve_paper_data_dir(env={}, cwd=tmp_path)
    message = str(err.value)
    assert "--paper-data DIR" in message and ENV_PAPER_DATA in message
    assert "shared/paper-data beside the repository root" in message


def test_installed_package_finds_it_from_the_git_checkout_around_cwd(monkeypatch, tmp_path, paper_dir):
    import llmpack.advisor.loaders as loaders

    checkout = tmp_path / "clone"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "sub").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "paper-data").symlink_to(paper_dir)
    monkeypatch.setattr(loaders, "_source_repo_root", lambda: tmp_path / "site-packages")
    assert resolve_paper_data_dir(env={}, cwd=checkout / "sub") == tmp_path / "shared" / "paper-data"


# The paper CSV --------------------------------------------------------------------------------


def test_background_profile():
    profile = load_paper_profile("opt-1.3b")
    assert profile.batch_sizes == [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 640, 768]
    assert profile.model.name == "facebook/opt-1.3b" and profile.model.kv_bytes_per_token == 196_608
    assert profile.model.weight_bytes == round(2.4509 * GIB)
    assert profile.gpu.product == "NVIDIA-H100-64GB-HBM2e"
    assert profile.gpu.memory_bytes == round(63.43 * GIB)
    assert profile.workload.prompt_tokens == 111 and profile.workload.output_tokens == 292
    assert profile.gpu_memory_utilization == 0.9 and profile.block_size == 16
    assert profile.kv_capacity_tokens == 297_168
    assert profile.backend == "paper" and profile.notes == []
    point = profile.point(96)
    assert point.total_tokens_per_s == pytest.approx(9032.7894)
    assert point.itl_mean_ms == pytest.approx(13.8938)
    assert point.kv_cache_usage_peak == pytest.approx(0.159838)
    assert point.preemptions == 0 and point.completed == 2000


def test_advisor_family_profile():
    profile = load_paper_profile("Llama-2-7b", output_len=390)
    assert profile.workload.prompt_tokens == 250 and profile.workload.output_tokens == 391
    assert profile.workload.chunked_prefill is True
    assert profile.model.max_model_len == 4096
    assert profile.point(256).preemptions == 540


def test_paper_model_names_are_forgiving():
    assert load_paper_profile("meta-llama/Llama-2-13b-hf").model.num_layers == 40
    with pytest.raises(
        UnknownModelError, match=re.escape("use one of opt-1.3b, opt-2.7b, llama-2-7b, llama-2-13b")
    ):
        load_paper_profile("gpt2")
    with pytest.raises(UnknownModelError):
        load_paper_profile("Qwen/Qwen2.5-0.5B-Instruct")  # catalogued, but the paper never ran it


def test_unmeasured_output_length_lists_the_measured_ones():
    with pytest.raises(PaperDataError, match="output lengths 130, 260, 390, 520, not 400"):
        load_paper_profile("opt-1.3b", output_len=400)


def test_failed_runs_become_notes():
    profile = load_paper_profile("llama-2-13b", output_len=260)
    assert profile.point(1) is None and profile.point(2) is None
    assert profile.notes == [
        "B=1 missing: the run failed (port_bind_error)",
        "B=2 missing: the run failed (port_bind_error)",
    ]


# Profile JSON ---------------------------------------------------------------------------------


def _profile_dict() -> dict:
    return json.loads(load_paper_profile("opt-1.3b", output_len=390).to_json())


def test_profile_json_round_trip(tmp_path):
    profile = load_paper_profile("opt-2.7b")
    path = tmp_path / "profile.json"
    profile.dump(path)
    loaded = load_profile(path)
    assert loaded == profile
    data = json.loads(path.read_text())
    assert data["points"][0]["max_num_seqs"] == 1  # snake_case contract
    assert "total_tokens_per_s" in data["points"][0]


def test_points_are_sorted_and_unique():
    data = _profile_dict()
    data["points"].reverse()
    assert Profile.from_data(data).batch_sizes == sorted(p["max_num_seqs"] for p in data["points"])
    data["points"].append(dict(data["points"][0]))
    with pytest.raises(ProfileError, match="each batch size may appear once; repeated max_num_seqs"):
        Profile.from_data(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("total_tokens_per_s", float("nan"), "points[0].total_tokens_per_s: Input should be a finite number"),
        (
            "total_tokens_per_s",
            -5.0,
            "points[0].total_tokens_per_s: Input should be greater than or equal to 0",
        ),
        ("total_tokens_per_s", 1e12, "points[0].total_tokens_per_s: Input should be less than or equal to"),
        ("itl_mean_ms", float("inf"), "points[0].itl_mean_ms: Input should be a finite number"),
        ("max_num_seqs", 0, "points[0].max_num_seqs: Input should be greater than or equal to 1"),
        ("kv_cache_usage_peak", 85.0, "85 looks like a percentage, divide it by 100"),
        ("preemptions", -1, "points[0].preemptions: Input should be greater than or equal to 0"),
    ],
)
def test_bad_point_values_are_rejected_with_a_readable_message(field, value, message):
    data = _profile_dict()
    data["points"][0][field] = value
    with pytest.raises(ProfileError) as err:
        Profile.from_data(data)
    assert message in str(err.value)
    assert str(err.value).startswith("invalid profile: ")


def test_profile_needs_points_and_its_parts():
    data = _profile_dict()
    data["points"] = []
    with pytest.raises(ProfileError, match="points: a profile needs at least one measured point"):
        Profile.from_data(data)
    with pytest.raises(ProfileError, match="model: Field required"):
        Profile.from_data({k: v for k, v in _profile_dict().items() if k != "model"})
    with pytest.raises(ProfileError, match="a profile is a JSON object, got list"):
        Profile.from_data([])


def test_profile_file_errors(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match=r"bad\.json: not valid JSON"):
        load_profile(bad)
    nan = tmp_path / "nan.json"
    data = _profile_dict()
    text = json.dumps(data).replace('"total_tokens_per_s": 445.8891', '"total_tokens_per_s": NaN', 1)
    assert "NaN" in text
    nan.write_text(text)
    with pytest.raises(ProfileError, match="finite number"):
        load_profile(nan)


def test_unknown_fields_are_ignored_for_forward_compatibility():
    data = _profile_dict()
    data["points"][0]["future_metric"] = 3
    data["something_new"] = {"a": 1}
    assert Profile.from_data(data).point(1) is not None


# -- KV bytes per token of the catalogue, by vLLM's rules (issue 12, item 3) ---------------------


def test_catalogue_kv_bytes_follow_vllms_rules_for_head_dim_and_latent_attention():
    from llmpack.profiler.facts import model_facts

    # Qwen3-0.6B: config head_dim 128 while hidden_size / heads = 64
    qwen3 = model_facts("Qwen/Qwen3-0.6B", dtype="bfloat16", max_model_len=4096)
    assert qwen3.kv_bytes_per_token == 2 * 28 * 8 * 128 * 2 == 114_688
    # DeepSeek-V2-Lite (MLA): 27 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes
    mla = model_facts("deepseek-ai/DeepSeek-V2-Lite-Chat", dtype="bfloat16", max_model_len=4096)
    assert mla.kv_bytes_per_token == 27 * (512 + 64) * 2 == 31_104
    assert mla.latent_attention and mla.num_kv_heads == 1 and mla.head_dim == 576
    # an fp8 KV cache halves it
    fp8 = model_facts(
        "meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", max_model_len=4096, kv_cache_dtype="fp8"
    )
    assert fp8.kv_bytes_per_token == 2 * 32 * 8 * 128 == 65_536
