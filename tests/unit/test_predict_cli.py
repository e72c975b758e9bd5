"""`llmpack predict`: the JSON contract of issue 7 (item 3), the human table, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmpack.api.profile import GPUFacts, ModelFacts, Profile, ProfilePoint, WorkloadShape
from llmpack.cli import main

LLMPACK = shutil.which("llmpack", path=str(Path(sys.executable).parent)) or "llmpack"
CONTRACT = ("total_tokens_per_s", "itl_mean_ms", "gain_vs_single")


def predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def predict_json(capsys, *args: str) -> dict:
    code, out, err = predict(capsys, *args, "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # one JSON object
    return json.loads(lines[0])


def test_console_script_prints_the_contract():
    proc = subprocess.run(
        [
            LLMPACK,
            "predict",
            "--paper-model",
            "opt-1.3b",
            "--replicas",
            "2",
            "--max-num-seqs",
            "96",
            "--mps",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in CONTRACT:
        assert isinstance(data[key], float), key
    # measured: 12,314 tokens/s, +35% over one instance at 96 (replication_calibration.csv)
    assert data["total_tokens_per_s"] == pytest.approx(12314, rel=0.05)
    assert data["gain_vs_single"] == pytest.approx(0.35, rel=0.10)
    assert data["mode"] == "mps" and data["replicas"] == 2 and data["max_num_seqs"] == 96


def test_gain_is_against_one_instance_at_the_same_batch(capsys):
    data = predict_json(
        capsys, "--paper-model", "opt-2.7b", "--replicas", "2", "--max-num-seqs", "128", "--mps"
    )
    single = data["single"]
    assert single["max_num_seqs"] == 128
    assert data["gain_vs_single"] == pytest.approx(
        data["total_tokens_per_s"] / single["total_tokens_per_s"] - 1
    )
    assert data["best_single"]["total_tokens_per_s"] >= single["total_tokens_per_s"]
    assert data["default_baseline"]["max_num_seqs"] == 256
    assert data["measured_single_total_tokens_per_s"] == pytest.approx(6586.4, rel=1e-4)
    assert data["itl_mean_ms"] > single["itl_mean_ms"]
    assert data["memory"]["fits"] is True


def test_one_replica_gains_nothing(capsys):
    data = predict_json(capsys, "--paper-model", "opt-1.3b", "--max-num-seqs", "96")
    assert data["mode"] == "single" and data["replicas"] == 1
    assert data["gain_vs_single"] == 0.0
    assert data["total_tokens_per_s"] == data["single"]["total_tokens_per_s"]


def test_replicas_imply_mps(capsys):
    explicit = predict_json(
        capsys, "--paper-model", "opt-1.3b", "--replicas", "2", "--max-num-seqs", "96", "--mps"
    )
    implied = predict_json(capsys, "--paper-model", "opt-1.3b", "--replicas", "2", "--max-num-seqs", "96")
    assert explicit["total_tokens_per_s"] == implied["total_tokens_per_s"]


def test_mig_on_a_mig_capable_gpu(capsys):
    data = predict_json(
        capsys,
        *("--paper-model", "opt-1.3b", "--max-num-seqs", "64", "--replicas", "2"),
        *("--mig", "3g.40gb", "--gpu", "NVIDIA-H100-80GB-HBM3"),
    )
    assert (
        data["mode"] == "mig" and data["mig_profile"] == "3g.40gb" and data["gpu"] == "NVIDIA-H100-80GB-HBM3"
    )
    assert data["measured_gpu"] == "NVIDIA-H100-64GB-HBM2e"
    assert data["tokens_per_s_per_replica"] < data["single"]["total_tokens_per_s"]


def test_a_model_too_large_to_pack_is_flagged(capsys):
    data = predict_json(capsys, "--paper-model", "llama-2-13b", "--replicas", "2", "--max-num-seqs", "80")
    assert data["memory"]["fits"] is False and data["memory"]["replicas_fit"] == 1
    assert any("do not fit" in note for note in data["notes"])
    assert data["gain_vs_single"] < 0.10


def test_loo_reports_both_fits(capsys):
    data = predict_json(capsys, "--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--loo")
    loo = data["leave_one_out"]
    assert len(loo["profile"]) == 15
    assert loo["profile_summary"]["max_abs_itl_error"] < 0.07
    labels = [row["point"] for row in loo["mps_calibration"]]
    assert labels == ["1x96 single", "1x256 single", "1x768 single", "2x96 MPS", "4x96 MPS"]
    assert loo["mps_calibration_summary"]["max_abs_gain_error"] < 0.03


def small_profile() -> Profile:
    """A profile of a made-up model on a GPU the catalogue does not know: 1 GB of weights read at
    60% of 1 TB/s, 64 KiB of KV per token at 40%, and a 0.5 ms idle gap per step."""
    points = []
    for b in (1, 4, 16, 64):
        gpu_ms = 1000 * (1e9 / 0.6 + b * 150 * 65536 / 0.4) / 1e12
        itl = gpu_ms + 0.5
        points.append(
            ProfilePoint(
                max_num_seqs=b,
                total_tokens_per_s=b / itl * 1000 * 2,
                itl_mean_ms=itl,
                gpu_utilization=gpu_ms / itl,
            )
        )
    return Profile(
        model=ModelFacts(
            name="test/small",
            num_layers=8,
            num_kv_heads=4,
            head_dim=64,
            weight_bytes=10**9,
            kv_bytes_per_token=65536,
            max_model_len=1024,
        ),
        gpu=GPUFacts(product="TEST-GPU-24GB", memory_bytes=24 << 30, bandwidth_bytes_per_s=1e12),
        workload=WorkloadShape(prompt_tokens=100, output_tokens=100),
        points=points,
    )


def test_profile_file_instead_of_paper_data(capsys, tmp_path):
    path = tmp_path / "profile.json"
    small_profile().dump(path)
    data = predict_json(capsys, "--profile", str(path), "--replicas", "3", "--max-num-seqs", "32")
    assert data["gpu"] == "TEST-GPU-24GB" and data["gain_vs_single"] > 0
    assert data["model_terms"]["weight_efficiency"] == pytest.approx(0.6)


def test_human_output(capsys):
    code, out, err = predict(
        capsys, "--paper-model", "opt-1.3b", "--replicas", "2", "--max-num-seqs", "96", "--loo"
    )
    assert code == 0 and err == ""
    for text in (
        "total tokens/s",
        "mean ITL ms",
        "one instance, same batch",
        "vLLM defaults",
        "Leave-one-out",
        "MPS calibration",
        "+36",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-num-seqs", "96"], "exactly one of --paper-model"),
        (["--paper-model", "opt-1.3b"], "--max-num-seqs is required"),
        (["--paper-model", "opt-1.3b", "--max-num-seqs", "lots"], "whole number"),
        (["--paper-model", "opt-1.3b", "--max-num-seqs", "0"], "at least 1"),
        (["--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--replicas", "49"], "at most 48"),
        (["--paper-model", "gpt-5", "--max-num-seqs", "96"], "unknown paper model"),
        (["--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--gpu", "RTX-9090"], "unknown GPU product"),
        (["--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--mig", "1g.10gb"], "has no MIG"),
        (
            [
                "--paper-model",
                "opt-1.3b",
                "--max-num-seqs",
                "96",
                "--gpu",
                "NVIDIA-H100-80GB-HBM3",
                "--mig",
                "5g.1gb",
            ],
            "valid profiles",
        ),
        (
            [
                *("--paper-model", "opt-1.3b", "--max-num-seqs", "9"),
                *("--gpu", "NVIDIA-H100-80GB-HBM3", "--mig", "7g.80gb", "--replicas", "2"),
            ],
            "at most 1",
        ),
        (
            ["--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--mps", "--mig", "1g.10gb"],
            "exclude each other",
        ),
        (
            ["--paper-model", "opt-1.3b", "--max-num-seqs", "96", "--paper-data", "/nonexistent"],
            "--paper-data",
        ),
        (["--profile", "/nonexistent.json", "--max-num-seqs", "96"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = predict(capsys, *args, "--json")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
