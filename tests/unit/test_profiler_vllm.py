"""The vllm backend's command lines and its parsing of vLLM's outputs (tests/fixtures/vllm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmpack.api.profile import Profile
from llmpack.profiler.facts import ProfileRequest
from llmpack.profiler.nvml import GpuSummary
from llmpack.profiler.sweep import PointFailed
from llmpack.profiler.vllm import (
    MetricsSample,
    VllmBackend,
    bench_command,
    build_point,
    num_prompts_for,
    parse_bench_result,
    parse_metrics,
    parse_startup_log,
    parse_version,
    read_bench_result,
    serve_command,
    summarise_metrics,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"
GIB = 1 << 30


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- command lines --------------------------------------------------------------------------------


def test_serve_command_measures_vllm_defaults():
    argv = serve_command(
        "facebook/opt-1.3b", max_num_seqs=512, max_model_len=2048, dtype="auto", revision="main", port=8123
    )
    assert argv[:3] == ["vllm", "serve", "facebook/opt-1.3b"]
    assert flag(argv, "--max-num-seqs") == "512"
    assert flag(argv, "--max-model-len") == "2048"
    assert flag(argv, "--dtype") == "auto"
    assert flag(argv, "--revision") == "main"
    assert flag(argv, "--port") == "8123" and flag(argv, "--host") == "127.0.0.1"
    # profiling measures the default pool; removed flags would make vLLM 0.33 refuse to start
    for absent in (
        "--kv-cache-memory-bytes",
        "--gpu-memory-utilization",
        "--disable-log-requests",
        "--swap-space",
    ):
        assert absent not in argv


def test_serve_command_without_revision():
    argv = serve_command("m", max_num_seqs=8, max_model_len=512, dtype="bfloat16")
    assert "--revision" not in argv


def test_bench_command_is_a_closed_loop_with_fixed_lengths(tmp_path):
    argv = bench_command(
        "facebook/opt-1.3b",
        batch=64,
        prompt_tokens=512,
        output_tokens=256,
        result_dir=tmp_path,
        result_filename="bench-64.json",
        base_url="http://127.0.0.1:8123",
    )
    assert argv[:3] == ["vllm", "bench", "serve"]
    assert flag(argv, "--dataset-name") == "random"
    assert flag(argv, "--random-input-len") == "512"
    assert flag(argv, "--random-output-len") == "256"
    assert "--ignore-eos" in argv
    assert flag(argv, "--max-concurrency") == "64"
    assert flag(argv, "--num-prompts") == str(num_prompts_for(64)) == "512"
    assert flag(argv, "--request-rate") == "inf"
    assert "--save-result" in argv
    assert flag(argv, "--result-dir") == str(tmp_path)
    assert flag(argv, "--result-filename") == "bench-64.json"
    assert flag(argv, "--base-url") == "http://127.0.0.1:8123"
    assert "itl" in flag(argv, "--percentile-metrics").split(",")
    assert flag(argv, "--metric-percentiles") == "50,99"


def test_small_batches_still_send_enough_requests():
    assert num_prompts_for(1) == 64
    assert num_prompts_for(512) == 4096


# -- the result JSON ------------------------------------------------------------------------------


def test_bench_result_fixture():
    result = read_bench_result(FIXTURES / "bench-serve-result.json")
    f = result.fields
    assert result.completed == 512 and result.failed == 0 and result.max_concurrency == 64
    assert f["total_tokens_per_s"] == pytest.approx(23218.86, rel=1e-6)
    assert f["output_tokens_per_s"] == pytest.approx(7739.62, rel=1e-6)
    assert f["requests_per_s"] == pytest.approx(30.2329, rel=1e-5)
    assert (f["itl_mean_ms"], f["itl_p50_ms"], f["itl_p99_ms"]) == (8.12, 7.96, 13.77)
    assert (f["tpot_mean_ms"], f["tpot_p50_ms"], f["tpot_p99_ms"]) == (8.131, 8.118, 8.402)
    assert (f["ttft_mean_ms"], f["ttft_p50_ms"], f["ttft_p99_ms"]) == (46.3, 41.87, 112.4)
    assert f["duration_s"] == pytest.approx(16.9352)


def bench_json(**changes):
    data = json.loads(fixture("bench-serve-result.json"))
    data.update(changes)
    return data


def test_bench_result_with_failed_requests_fails_the_point():
    with pytest.raises(PointFailed, match="100 of 512 requests failed"):
        parse_bench_result(bench_json(completed=412, failed=100))


def test_bench_result_of_an_older_release_without_failed_field():
    data = bench_json(completed=400)
    del data["failed"]
    with pytest.raises(PointFailed, match="112 of 512"):
        parse_bench_result(data)
    data = bench_json(completed=510)  # 2 lost of 512: within tolerance, still a point
    del data["failed"]
    assert parse_bench_result(data).failed == 2


def test_bench_result_that_completed_nothing():
    with pytest.raises(PointFailed, match="no request completed"):
        parse_bench_result(bench_json(completed=0, failed=512))


def test_bench_result_without_total_throughput_derives_it():
    data = bench_json()
    del data["total_token_throughput"]
    fields = parse_bench_result(data).fields
    assert fields["total_tokens_per_s"] == pytest.approx(23218.86, rel=1e-4)


def test_missing_or_broken_result_file(tmp_path):
    with pytest.raises(PointFailed, match="wrote no result"):
        read_bench_result(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PointFailed, match="cannot read"):
        read_bench_result(tmp_path / "bad.json")


# -- /metrics -------------------------------------------------------------------------------------


def test_metrics_fixture():
    sample = parse_metrics(fixture("metrics.txt"))
    assert sample.kv_cache_usage == pytest.approx(0.12734)
    assert sample.preemptions_total == 3.0
    assert sample.requests_running == 63.0 and sample.requests_waiting == 1.0
    assert (sample.num_gpu_blocks, sample.block_size) == (23231, 16)
    assert sample.gpu_memory_utilization == 0.92


def test_metrics_of_the_v0_engine_use_the_old_kv_name():
    text = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_preemptions_total{model_name="m"} 2\n'
    sample = parse_metrics(text)
    assert sample.kv_cache_usage == 0.5 and sample.preemptions_total == 2


def test_metrics_that_are_not_prometheus_text():
    with pytest.raises(ValueError, match="Prometheus"):
        parse_metrics("<html>502 Bad Gateway</html>\n{{{")


def test_metrics_summary_of_a_point():
    before = MetricsSample(kv_cache_usage=0.0, preemptions_total=3.0, requests_running=0.0)
    during = [
        MetricsSample(kv_cache_usage=0.10, preemptions_total=3.0, requests_running=64.0),
        MetricsSample(kv_cache_usage=0.31, preemptions_total=5.0, requests_running=60.0),
        MetricsSample(kv_cache_usage=0.02, preemptions_total=7.0, requests_running=0.0),
    ]
    after = MetricsSample(kv_cache_usage=0.0, preemptions_total=7.0, requests_running=0.0)
    summary = summarise_metrics(during, before, after)
    assert summary.kv_cache_usage_peak == 0.31
    assert summary.preemptions == 4  # the counter's growth, not its value
    assert summary.mean_running == 62.0  # over busy scrapes only


def test_metrics_summary_without_scrapes():
    summary = summarise_metrics([], None, None)
    assert summary.kv_cache_usage_peak is None and summary.preemptions == 0 and summary.mean_running is None


# -- the start-up log -----------------------------------------------------------------------------


def test_startup_log_fixture():
    facts = parse_startup_log(fixture("serve.log"))
    assert facts.version == "0.33.0"
    assert facts.weight_bytes == round(2.4520 * GIB)
    assert facts.device_free_bytes == round(78.65 * GIB) and facts.device_total_bytes == round(79.19 * GIB)
    assert facts.gpu_memory_utilization == 0.92
    assert facts.consumed_bytes == round(3.08 * GIB)
    assert facts.peak_activation_bytes == round(1.32 * GIB)
    assert facts.cuda_graph_bytes == round(0.39 * GIB)
    assert facts.non_kv_bytes == round(3.08 * GIB) + round(1.32 * GIB) + round(0.39 * GIB)
    assert facts.suggested_kv_cache_bytes == 72921582141
    assert facts.available_kv_cache_bytes == round(68.06 * GIB)
    assert facts.kv_cache_tokens == 371_696


def test_startup_log_of_an_earlier_v1_release():
    line = (
        "(EngineCore_DP0 pid=7) DEBUG 06-02 10:00:00 [gpu_worker.py:270] Free memory on device "
        "(78.1/79.19 GiB) on startup. Desired GPU memory utilization is (0.9, 71.27 GiB). Actual usage "
        "is 14.96 GiB for weight, 1.23 GiB for peak activation, 0.45 GiB for non-torch memory, and "
        "2.10 GiB for CUDAGraph memory. Replace gpu_memory_utilization config with "
        "`--kv-cache-memory=56000000000` (52.15 GiB) to fit into requested memory, or "
        "`--kv-cache-memory=62000000000` (57.74 GiB) to fully utilize gpu memory."
    )
    facts = parse_startup_log(line)
    assert facts.consumed_bytes == round(14.96 * GIB) + round(0.45 * GIB)
    assert facts.peak_activation_bytes == round(1.23 * GIB)
    assert facts.suggested_kv_cache_bytes == 56_000_000_000


def test_startup_log_of_the_paper_era_engine():
    facts = parse_startup_log(
        "INFO 10-18 12:00:00 model_runner.py:1067] Loading model weights took 2.4509 GB\n"
    )
    assert facts.weight_bytes == round(2.4509 * GIB)
    assert facts.non_kv_bytes is None


def test_startup_log_takes_the_last_boot():
    text = (
        fixture("serve.log")
        + "\nINFO [gpu_model_runner.py:2653] Model loading took 2.5000 GiB and 1.0 seconds\n"
    )
    assert parse_startup_log(text).weight_bytes == round(2.5 * GIB)


def test_empty_log_has_no_facts():
    facts = parse_startup_log("")
    assert facts.weight_bytes is None and facts.version is None and facts.kv_cache_tokens is None


def test_version_after_log_lines():
    assert parse_version(fixture("version.txt")) == "0.33.0"
    assert parse_version("0.11.0rc2.dev15+g1a2b3c\n") == "0.11.0rc2.dev15+g1a2b3c"
    assert parse_version("Traceback (most recent call last):\n  ImportError: no module\n") is None


# -- one point and the profile --------------------------------------------------------------------


def test_point_from_all_sources():
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    metrics = summarise_metrics([parse_metrics(fixture("metrics.txt"))], None, None)
    gpu = GpuSummary(
        samples=30,
        memory_used_peak_bytes=74 * GIB,
        gpu_utilization=0.83,
        memory_busy=0.41,
        dram_bandwidth_utilization=0.37,
        sm_occupancy=0.22,
        absent={},
    )
    point = build_point(64, bench, metrics, gpu, kv_capacity_tokens=371_696)
    assert point.max_num_seqs == 64
    assert point.total_tokens_per_s == pytest.approx(23218.86, rel=1e-6)
    assert point.itl_mean_ms == 8.12 and point.ttft_p99_ms == 112.4
    assert point.kv_cache_usage_peak == pytest.approx(0.12734)
    assert point.preemptions == 0  # one scrape: no growth seen
    assert point.mean_running == 63.0
    assert point.kv_capacity_tokens == 371_696
    assert point.gpu_memory_used_bytes == 74 * GIB
    assert (point.gpu_utilization, point.memory_busy_fraction) == (0.83, 0.41)
    assert (point.dram_bandwidth_utilization, point.sm_occupancy) == (0.37, 0.22)


def test_point_without_gpu_metrics_leaves_them_absent():
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    point = build_point(64, bench, None, GpuSummary(absent={"gpu_utilization": "NVML unavailable"}))
    assert point.gpu_utilization is None and point.dram_bandwidth_utilization is None
    assert point.preemptions == 0


def test_profile_from_the_engine_facts(tmp_path):
    request = ProfileRequest(
        model="facebook/opt-1.3b",
        gpu_product="NVIDIA-H100-80GB-HBM3",
        dtype="auto",
        max_model_len=2048,
        prompt_tokens=512,
        output_tokens=256,
    )
    backend = VllmBackend(request, [1, 64, 512])
    assert backend.max_num_seqs == 512
    backend.startup = parse_startup_log(fixture("serve.log"))
    backend.cache_config = parse_metrics(fixture("metrics.txt"))
    backend.version = parse_version(fixture("version.txt"))
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    profile = backend.profile([build_point(64, bench, kv_capacity_tokens=backend.kv_capacity_tokens)], [])
    profile = Profile.from_json(profile.to_json())
    assert profile.backend == "vllm" and profile.engine.version == "0.33.0"
    assert profile.model.dtype == "float16"  # --dtype auto, as the engine resolved it
    assert profile.model.weight_bytes == round(2.4520 * GIB)  # measured beats the catalogue
    assert profile.model.kv_bytes_per_token == 2 * 24 * 32 * 64 * 2
    assert profile.kv_capacity_tokens == 23231 * 16 == backend.startup.kv_cache_tokens
    assert profile.gpu_memory_utilization == 0.92
    assert profile.non_kv_memory_bytes == backend.startup.non_kv_bytes
    # the device total vLLM saw (as the paper loader records it), not the catalogue's capacity
    assert profile.gpu.product == "NVIDIA-H100-80GB-HBM3"
    assert profile.gpu.memory_bytes == round(79.19 * GIB)
    assert any("--kv-cache-memory=72921582141" in note for note in profile.notes)


def test_auto_dtype_is_recorded_as_the_engine_resolved_it():
    assert parse_startup_log(fixture("serve.log")).dtype == "float16"
