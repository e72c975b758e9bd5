"""What the profiler publishes: progress lines, the summary, the merge patch and the termination
message. (Patching a real ConfigMap is an integration test against the local control plane.)"""

from __future__ import annotations

import json

import pytest

from llmpack.advisor.loaders import load_paper_profile
from llmpack.api.profile import Profile, ProfilePoint
from llmpack.profiler.publish import (
    DATA_PROFILE,
    DATA_PROGRESS,
    ConfigMapPublisher,
    configmap_patch,
    default_namespace,
    failure_line,
    profile_data,
    progress_message,
    summary_line,
    truncate,
    write_termination_log,
)
from llmpack.profiler.sweep import Measurement


def point(batch=64, tps=5210.4, itl=12.34, preemptions=0) -> ProfilePoint:
    return ProfilePoint(max_num_seqs=batch, total_tokens_per_s=tps, itl_mean_ms=itl, preemptions=preemptions)


def test_progress_of_an_exhaustive_sweep():
    text = progress_message(Measurement(64, point()), 4, 9, "exhaustive")
    assert text == "point 4/9: B=64, 5,210 tok/s, ITL 12.3 ms"


def test_progress_of_an_adaptive_sweep_names_the_candidates():
    text = progress_message(Measurement(64, point(preemptions=3)), 4, 13, "adaptive")
    assert text == "point 4 (adaptive, 13 candidates): B=64, 5,210 tok/s, ITL 12.3 ms, 3 preemptions"


def test_progress_of_a_failed_point_is_one_line():
    error = "vllm serve died during the point:\nCUDA out of memory.\n  Tried to allocate 2.00 GiB"
    text = progress_message(Measurement(512, error=error), 9, 9, "exhaustive")
    assert text.startswith("point 9/9: B=512 failed: vllm serve died")
    assert "\n" not in text and "CUDA out of memory" in text


def test_summary_line():
    profile = load_paper_profile("opt-1.3b")
    text = summary_line(profile)
    best = max(profile.points, key=lambda p: p.total_tokens_per_s)
    assert text == (
        f"profiled facebook/opt-1.3b on NVIDIA-H100-64GB-HBM2e: {len(profile.points)} points, "
        f"best {best.total_tokens_per_s:,.0f} tok/s at B={best.max_num_seqs}"
    )
    assert "(2 failed)" in summary_line(profile, failed=2)


def test_merge_patch_sets_only_the_given_keys():
    assert configmap_patch({DATA_PROGRESS: "point 1/3: B=1, 380 tok/s"}) == {
        "data": {"progress": "point 1/3: B=1, 380 tok/s"}
    }
    with pytest.raises(TypeError, match="strings"):
        configmap_patch({"profile.json": {"points": []}})


def test_profile_data_is_what_the_operator_reads():
    profile = load_paper_profile("opt-2.7b", 390)
    data = profile_data(profile, "profiled ...")
    assert set(data) == {DATA_PROFILE, DATA_PROGRESS} == {"profile.json", "progress"}
    assert Profile.model_validate_json(data[DATA_PROFILE]) == profile  # as controller/reconciler.py reads it
    assert json.loads(data[DATA_PROFILE])["points"][0]["max_num_seqs"] == 1
    assert data[DATA_PROGRESS] == "done: profiled ..."


def test_termination_message_is_bounded():
    long = "x" * 10_000
    assert len(truncate(long).encode()) == 4096 and truncate(long).endswith("[...]")
    assert truncate("é" * 3000).encode("utf-8").decode("utf-8")  # never cuts a character in two
    assert failure_line("  ") == "profiling failed: unknown error"


def test_termination_log_explicit_path(tmp_path):
    path = tmp_path / "termination-log"
    assert write_termination_log("profiled m on g: 3 points", str(path))
    assert path.read_text() == "profiled m on g: 3 points\n"


def test_termination_log_default_only_inside_a_pod(monkeypatch, tmp_path):
    missing = tmp_path / "dev" / "termination-log"
    monkeypatch.setattr("llmpack.profiler.publish.DEFAULT_TERMINATION_LOG", str(missing))
    assert not write_termination_log("x", None)
    assert not missing.exists()


def test_unwritable_termination_log_does_not_raise(tmp_path):
    assert not write_termination_log("x", str(tmp_path / "no" / "such" / "dir" / "log"))


def test_namespace_from_the_downward_api():
    assert default_namespace({"POD_NAMESPACE": "team-a"}) == "team-a"


def test_publisher_builds_no_client_until_used():
    publisher = ConfigMapPublisher("p-result", "team-a", kubeconfig="/nonexistent/kubeconfig")
    assert publisher.name == "p-result" and publisher._core is None
