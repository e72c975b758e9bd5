"""The vllm backend's command lines and its parsing of vLLM's outputs (tests/fixtures/vllm, captured
from the real engine by hack/engine/capture_fixtures.py; GPU-only log lines inline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.kv_layout import layout_of
from llmpack.api.profile import Profile
from llmpack.profiler.engine_log import engine_config, parse_startup_log, root_cause, split_top_level
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
    profiling_kv_cache_bytes,
    read_bench_result,
    serve_command,
    summarise_metrics,
    why_it_stopped,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"
GIB = 1 << 30
MIB = 1 << 20
# A GPU start-up log in vLLM 0.33's formats (FACTS.md 1.2; not capturable without a GPU): OPT-1.3B
# on an H100 80GB, 23,231 blocks of 16 tokens.
GPU_LOG = """\
(APIServer pid=640) INFO 11-24 09:11:52 [api_server.py:1896] vLLM API server version 0.33.0
(EngineCore_DP0 pid=812) INFO 11-24 09:12:09 [core.py:77] Initializing a V1 LLM engine (v0.33.0) with \
config: model='facebook/opt-1.3b', tokenizer='facebook/opt-1.3b', revision=None, dtype=torch.float16, \
max_seq_len=2048, quantization=None, enforce_eager=False, kv_cache_dtype=auto, device_config=cuda, \
enable_prefix_caching=True, compilation_config={"level": 3, "cudagraph_capture_sizes": [512, 504]}
(EngineCore_DP0 pid=812) INFO 11-24 09:12:15 [gpu_model_runner.py:2653] Model loading took 2.4520 GiB \
and 2.874329 seconds
(EngineCore_DP0 pid=812) INFO 11-24 09:12:29 [gpu_worker.py:298] Available KV cache memory: 68.06 GiB
(EngineCore_DP0 pid=812) INFO 11-24 09:12:29 [kv_cache_utils.py:1087] GPU KV cache size: 371,696 tokens
(EngineCore_DP0 pid=812) INFO 11-24 09:12:41 [gpu_worker.py:391] Free memory on device (78.65/79.19 \
GiB) on startup. Desired GPU memory utilization is (0.92, 72.85 GiB). Actual usage is 3.08 GiB for \
consumed memory (weights + non-torch), 1.32 GiB for peak activation, and 0.39 GiB for CUDAGraph \
memory. Replace gpu_memory_utilization config with `--kv-cache-memory=72921582141` (67.91 GiB) to \
fit into requested memory, or `--kv-cache-memory=77187258941` (71.89 GiB) to fully utilize gpu memory.
"""


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- command lines --------------------------------------------------------------------------------


def test_serve_command_sizes_the_kv_pool():
    argv = serve_command(
        "facebook/opt-1.3b",
        max_num_seqs=512,
        max_model_len=2048,
        kv_cache_memory_bytes=1 << 30,
        dtype="auto",
        revision="main",
        port=8123,
        extra_args=["--kv-cache-dtype", "fp8"],
    )
    assert argv[:3] == ["vllm", "serve", "facebook/opt-1.3b"]
    assert flag(argv, "--max-num-seqs") == "512"
    assert flag(argv, "--max-model-len") == "2048"
    assert flag(argv, "--kv-cache-memory-bytes") == str(1 << 30)
    assert flag(argv, "--dtype") == "auto"
    assert flag(argv, "--revision") == "main"
    assert flag(argv, "--port") == "8123" and flag(argv, "--host") == "127.0.0.1"
    assert argv[-2:] == ["--kv-cache-dtype", "fp8"]
    # removed flags would make vLLM 0.32+ refuse to start
    for absent in ("--gpu-memory-utilization", "--disable-log-requests", "--swap-space"):
        assert absent not in argv


def test_the_profiling_kv_pool_holds_the_largest_batch_or_one_full_context():
    # 512 x (512+256 -> 768) x 1.25 tokens of 196,608 bytes (OPT-1.3B)
    assert (
        profiling_kv_cache_bytes(
            max_batch=512,
            prompt_tokens=512,
            output_tokens=256,
            max_model_len=2048,
            kv_bytes_per_token=196_608,
        )
        == math.ceil(512 * 768 * 1.25 * 196_608 / MIB) * MIB
    )
    # one request of max_model_len is more than the batch: vLLM refuses to start with less
    assert (
        profiling_kv_cache_bytes(
            max_batch=1, prompt_tokens=32, output_tokens=32, max_model_len=32768, kv_bytes_per_token=131_072
        )
        == math.ceil(32768 * 1.25 * 131_072 / MIB) * MIB
    )
    # tiny models still get 16 MiB
    assert (
        profiling_kv_cache_bytes(
            max_batch=8, prompt_tokens=32, output_tokens=32, max_model_len=2048, kv_bytes_per_token=512
        )
        == 16 * MIB
    )


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
    assert result.completed == 64 and result.failed == 0 and result.max_concurrency == 4
    assert f["total_tokens_per_s"] == pytest.approx(6652.987799609736)
    assert f["output_tokens_per_s"] == pytest.approx(3319.200734129291)
    assert f["requests_per_s"] == pytest.approx(103.72502294154035)
    assert f["itl_mean_ms"] == pytest.approx(0.900923507575703)
    assert f["itl_p50_ms"] == pytest.approx(0.8510139999771127)  # median_itl_ms
    assert f["itl_p99_ms"] == pytest.approx(2.7587078099918476)
    assert f["tpot_mean_ms"] == pytest.approx(0.899107129536236)
    assert f["ttft_mean_ms"] == pytest.approx(10.254761140624069)
    assert f["ttft_p99_ms"] == pytest.approx(61.80671827000765)
    assert f["duration_s"] == pytest.approx(0.6170160120000219)


def bench_json(**changes):
    data = json.loads(fixture("bench-serve-result.json"))
    data.update(changes)
    return data


def test_bench_result_with_failed_requests_fails_the_point():
    with pytest.raises(PointFailed, match="100 of 512 requests failed"):
        parse_bench_result(bench_json(completed=412, failed=100))


def test_bench_result_of_an_older_release_without_failed_field():
    data = bench_json(completed=400, num_prompts=512)
    del data["failed"]
    with pytest.raises(PointFailed, match="112 of 512"):
        parse_bench_result(data)
    data = bench_json(completed=510, num_prompts=512)  # 2 lost of 512: within tolerance, still a point
    del data["failed"]
    assert parse_bench_result(data).failed == 2


def test_bench_result_that_completed_nothing():
    with pytest.raises(PointFailed, match="no request completed"):
        parse_bench_result(bench_json(completed=0, failed=512))


def test_bench_result_without_total_throughput_derives_it():
    data = bench_json()
    del data["total_token_throughput"]
    fields = parse_bench_result(data).fields
    # output tokens/s + input tokens / duration
    assert fields["total_tokens_per_s"] == pytest.approx(3319.200734129291 + 2057 / 0.6170160120000219)


def test_missing_or_broken_result_file(tmp_path):
    with pytest.raises(PointFailed, match="wrote no result"):
        read_bench_result(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PointFailed, match="cannot read"):
        read_bench_result(tmp_path / "bad.json")


# -- /metrics -------------------------------------------------------------------------------------


def test_metrics_fixture():
    sample = parse_metrics(fixture("metrics.txt"))  # scraped right after a point: idle
    assert sample.kv_cache_usage == 0.0 and sample.preemptions_total == 0.0
    assert sample.requests_running == 0.0 and sample.requests_waiting == 0.0
    assert (sample.num_gpu_blocks, sample.block_size) == (256, 128)  # the CPU build's block
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


def test_startup_log_of_the_cpu_engine():
    facts = parse_startup_log(fixture("serve.log"))
    assert facts.version == "0.32.0"
    assert (facts.kv_cache_device, facts.kv_cache_tokens) == ("CPU", 32_768)  # "CPU KV cache size"
    assert facts.kv_cache_set_bytes == round(0.02 * GIB) and facts.node_memory_bytes == round(16.96 * GIB)
    assert facts.device == "cpu" and facts.dtype == "bfloat16"
    assert facts.config["kv_cache_dtype"] == "auto" and facts.config["enable_prefix_caching"] == "True"
    assert facts.config["max_seq_len"] == "2048" and facts.config["quantization"] == "None"
    # the CPU build logs no weight or memory-profiling line
    assert facts.weight_bytes is None and facts.non_kv_bytes is None


def test_startup_log_of_a_gpu():
    facts = parse_startup_log(GPU_LOG)
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
    assert (facts.kv_cache_device, facts.kv_cache_tokens) == ("GPU", 371_696)
    assert facts.device == "cuda" and facts.dtype == "float16"


def test_the_config_line_is_split_outside_brackets_and_quotes():
    line = "model='a, b', dtype=torch.bfloat16, compilation_config={'x': [1, 2], 'y': 'p, q'}, seed=0"
    assert split_top_level(line) == [
        "model='a, b'",
        "dtype=torch.bfloat16",
        "compilation_config={'x': [1, 2], 'y': 'p, q'}",
        "seed=0",
    ]
    assert engine_config(line) == {"dtype": "bfloat16", "seed": "0"}


# -- why a start failed ---------------------------------------------------------------------------


def test_root_cause_of_a_kv_pool_too_small():
    log = fixture("serve-fails-kv-cache.log")
    assert "See root cause above" in "\n".join(log.strip().splitlines()[-5:])
    cause = root_cause(log)
    assert cause is not None and cause.exception == "ValueError"
    assert cause.message.startswith("No available memory for the cache blocks.")
    assert cause.message.endswith("for more details.")  # the next log record is not part of it
    assert cause.location is not None and cause.location.startswith("vllm/v1/core/kv_cache_utils.py:")


def test_root_cause_of_a_context_beyond_the_model():
    cause = root_cause(fixture("serve-fails-max-model-len.log"))
    assert cause is not None and cause.exception == "ValidationError"
    assert "User-specified max_model_len (4096) is greater than the derived max_model_len" in cause.message
    assert "errors.pydantic.dev" not in cause.message
    # the engine's own frame, not pydantic's validator
    assert cause.location is not None and cause.location.startswith("vllm/engine/arg_utils.py:")


def test_root_cause_skips_wrappers_and_says_none_without_an_exception():
    wrapper = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    assert root_cause(wrapper) is None
    assert root_cause("INFO 11-29 17:29:49 [core.py:133] all good\n") is None


def test_why_it_stopped_puts_the_root_cause_first(tmp_path):
    log = tmp_path / "vllm-serve.log"
    log.write_text(fixture("serve-fails-kv-cache.log"))
    text = why_it_stopped("vllm serve exited with status 1 at start", log)
    first = text.splitlines()[0]
    assert first.startswith("vllm serve exited with status 1 at start: ValueError: No available memory")
    assert "RuntimeError: Engine core initialization failed" in text  # the log's last lines follow


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
    text = GPU_LOG + "\nINFO [gpu_model_runner.py:2653] Model loading took 2.5000 GiB and 1.0 seconds\n"
    assert parse_startup_log(text).weight_bytes == round(2.5 * GIB)


def test_empty_log_has_no_facts():
    facts = parse_startup_log("")
    assert facts.weight_bytes is None and facts.version is None and facts.kv_cache_tokens is None
    assert facts.config == {}


# -- one point and the profile --------------------------------------------------------------------


def test_point_from_all_sources():
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    during = MetricsSample(kv_cache_usage=0.0125, preemptions_total=0.0, requests_running=4.0)
    metrics = summarise_metrics([during], None, parse_metrics(fixture("metrics.txt")))
    gpu = GpuSummary(
        samples=30,
        memory_used_peak_bytes=74 * GIB,
        gpu_utilization=0.83,
        memory_busy=0.41,
        dram_bandwidth_utilization=0.37,
        sm_occupancy=0.22,
        absent={},
    )
    point = build_point(4, bench, metrics, gpu, kv_capacity_tokens=32_768)
    assert point.max_num_seqs == 4
    assert point.total_tokens_per_s == pytest.approx(6652.987799609736)
    assert point.ttft_p99_ms == pytest.approx(61.80671827000765)
    assert point.kv_cache_usage_peak == pytest.approx(0.0125)
    assert point.preemptions == 0
    assert point.mean_running == 4.0
    assert point.kv_capacity_tokens == 32_768
    assert point.gpu_memory_used_bytes == 74 * GIB
    assert (point.gpu_utilization, point.memory_busy_fraction) == (0.83, 0.41)
    assert (point.dram_bandwidth_utilization, point.sm_occupancy) == (0.37, 0.22)


def test_point_without_gpu_metrics_leaves_them_absent():
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    point = build_point(4, bench, None, GpuSummary(absent={"gpu_utilization": "NVML unavailable"}))
    assert point.gpu_utilization is None and point.dram_bandwidth_utilization is None
    assert point.preemptions == 0


def test_profile_from_the_engine_facts_of_a_gpu():
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
    backend.startup = parse_startup_log(GPU_LOG)
    backend.version = backend.startup.version
    # the pool llmpack asked for, in blocks of 16 tokens of 196,608 bytes
    blocks = backend.kv_cache_memory_bytes // (16 * 196_608)
    backend.cache_config = MetricsSample(num_gpu_blocks=blocks, block_size=16, gpu_memory_utilization=0.92)
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    profile = backend.profile([build_point(64, bench, kv_capacity_tokens=backend.kv_capacity_tokens)], [])
    profile = Profile.from_json(profile.to_json())
    assert profile.backend == "vllm" and profile.engine.version == "0.33.0"
    assert profile.engine.device == "cuda" and profile.engine.config["enable_prefix_caching"] == "True"
    assert profile.engine.kv_cache_memory_bytes == backend.kv_cache_memory_bytes
    assert "--kv-cache-memory-bytes" in profile.engine.args and "--port" not in profile.engine.args
    assert profile.model.dtype == "float16"  # --dtype auto, as the engine resolved it
    assert profile.model.weight_bytes == round(2.4520 * GIB)  # measured beats the catalogue
    assert profile.model.kv_bytes_per_token == 2 * 24 * 32 * 64 * 2
    assert profile.kv_capacity_tokens == blocks * 16  # /metrics wins over the log's line
    assert profile.model.kv_bytes_per_token_config is None  # the engine agrees with llmpack
    assert profile.gpu_memory_utilization == 0.92
    assert profile.non_kv_memory_bytes == backend.startup.non_kv_bytes
    # the device total vLLM saw (as the paper loader records it), not the catalogue's capacity
    assert profile.gpu.product == "NVIDIA-H100-80GB-HBM3"
    assert profile.gpu.memory_bytes == round(79.19 * GIB)
    assert any("--kv-cache-memory=72921582141" in note for note in profile.notes)
    assert not any("KV cache: the engine holds" in note for note in profile.notes)


def test_the_engines_kv_capacity_wins_over_llmpacks_reading_and_the_disagreement_is_kept():
    request = ProfileRequest(
        model="facebook/opt-1.3b",
        gpu_product="NVIDIA-H100-80GB-HBM3",
        dtype="float16",
        max_model_len=2048,
        prompt_tokens=512,
        output_tokens=256,
    )
    backend = VllmBackend(request, [1, 64])
    pool = backend.kv_cache_memory_bytes
    # the engine holds a third fewer tokens than 196,608 bytes per token predict
    blocks = pool // (16 * 196_608) * 2 // 3
    backend.cache_config = MetricsSample(num_gpu_blocks=blocks, block_size=16)
    bench = read_bench_result(FIXTURES / "bench-serve-result.json")
    profile = backend.profile([build_point(64, bench)], [])
    assert profile.model.kv_bytes_per_token == math.ceil(pool / (blocks * 16))
    assert profile.model.kv_bytes_per_token > 196_608 == profile.model.kv_bytes_per_token_config
    note = next(n for n in profile.notes if n.startswith("KV cache: the engine holds"))
    assert f"holds {blocks * 16} tokens in {pool} bytes" in note and "gives 196608" in note


def test_the_captured_profile_is_a_valid_profile():
    profile = Profile.from_json(fixture("profile.json"))
    assert profile.engine.device == "cpu" and profile.block_size == 128
    assert profile.kv_capacity_tokens == 32_768 and profile.model.kv_bytes_per_token == 512
    assert profile.batch_sizes == [1, 2, 4, 8]


def test_an_engine_flag_of_the_spec_replaces_the_profilers_own():
    argv = serve_command("m", max_num_seqs=8, max_model_len=512, dtype="auto", extra_args=["--seed", "1"])
    assert argv.count("--seed") == 1 and argv[-2:] == ["--seed", "1"]
    argv = serve_command("m", max_num_seqs=8, max_model_len=512, dtype="auto", extra_args=["--dtype=half"])
    assert "--dtype" not in argv and argv[-1] == "--dtype=half"


def test_a_restarted_servers_failure_is_reported_by_its_own_root_cause(tmp_path):
    """A server restarted before a point appends to the same log: the second failure is reported
    by the second run's exception, not the first one's."""
    log = tmp_path / "vllm-serve.log"
    log.write_text("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory at B=64\n")
    since = log.stat().st_size
    with log.open("a") as f:
        f.write(fixture("serve-fails-kv-cache.log"))
    first_line = why_it_stopped("vllm serve exited with status 1 at start", log, since=since).splitlines()[0]
    assert "No available memory for the cache blocks" in first_line and "OutOfMemoryError" not in first_line
    whole = why_it_stopped("vllm serve exited with status 1 at start", log).splitlines()[0]
    assert "OutOfMemoryError" in whole  # what the whole file's first exception would have said


def test_the_kv_cache_dtype_is_read_in_every_spelling_vllm_takes():
    from llmpack.profiler.facts import flag_value

    assert flag_value(["--kv_cache_dtype", "fp8"], "--kv-cache-dtype") == "fp8"
    assert flag_value(["--kv-cache-dtype=fp8_e5m2"], "--kv-cache-dtype") == "fp8_e5m2"
    assert flag_value(["--kv-cache-dtype", "fp8", "--kv_cache_dtype=auto"], "--kv-cache-dtype") == "auto"
    assert flag_value(["--kv-cache-dtypes", "x"], "--kv-cache-dtype") is None


def _gemma_request() -> ProfileRequest:
    return ProfileRequest(
        model="google/gemma-3-1b-it",
        gpu_product="NVIDIA-L4",
        dtype="bfloat16",
        max_model_len=16384,
        prompt_tokens=16000,
        output_tokens=300,
    )


def test_a_sliding_window_model_agrees_with_the_engine_by_its_block_count():
    """Gemma-3-1B (22 sliding + 4 full layers): a block costs 4 layers' pages, so the pool's block
    count is what the engine reports when llmpack reads the layout right; the logged token count
    (concurrency x context) is not a bytes-per-token figure for such a model."""
    backend = VllmBackend(_gemma_request(), [1, 8])
    blocks = backend.kv_cache_memory_bytes // (4 * 16 * 1024)
    backend.cache_config = MetricsSample(num_gpu_blocks=blocks, block_size=16)
    profile = backend.profile([build_point(8, read_bench_result(FIXTURES / "bench-serve-result.json"))], [])
    assert profile.model.kv_bytes_per_token == 26 * 1024 and profile.model.kv_bytes_per_token_config is None
    # an engine holding half the blocks: its figure wins, per attention layer
    backend.cache_config = MetricsSample(num_gpu_blocks=blocks // 2, block_size=16)
    profile = backend.profile([build_point(8, read_bench_result(FIXTURES / "bench-serve-result.json"))], [])
    assert profile.model.kv_bytes_per_token_config == 26 * 1024
    assert profile.model.kv_bytes_per_token == 26 * math.ceil(
        backend.kv_cache_memory_bytes / (blocks // 2) / 64
    )


def test_the_profiling_pool_of_a_state_model_holds_every_requests_state():
    """Qwen3-Next: 36 layers keep 1.1 MB of state per request beside 12 attention layers, so 64
    requests need their states too, which 24,576 bytes per token alone would not hold."""
    facts = find_architecture("Qwen/Qwen3-Next-80B-A3B-Instruct").model_facts(dtype="bfloat16")
    workload = {"max_batch": 64, "prompt_tokens": 4000, "output_tokens": 1000, "max_model_len": 8192}
    sized = profiling_kv_cache_bytes(
        **workload, kv_bytes_per_token=facts.kv_bytes_per_token, layout=layout_of(facts)
    )
    tokens_only = profiling_kv_cache_bytes(**workload, kv_bytes_per_token=facts.kv_bytes_per_token)
    assert sized > tokens_only and sized >= 64 * 5000 * 24576 + 64 * 36 * 1_097_728
