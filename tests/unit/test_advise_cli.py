"""`llmpack advise`: the contract users and other parts rely on (issue 2, section 8)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmpack.advisor.loaders import load_paper_profile
from llmpack.cli import main

# The installed console script (`llmpack = llmpack.cli:main`), next to this Python.
LLMPACK = shutil.which("llmpack", path=str(Path(sys.executable).parent)) or "llmpack"


def advise(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["advise", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_says_b_opt_96():
    """The issue's 'done when': `llmpack advise --paper-model opt-1.3b --json` says "b_opt": 96."""
    proc = subprocess.run(
        [LLMPACK, "advise", "--paper-model", "opt-1.3b", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object
    data = json.loads(lines[0])
    assert data["b_opt"] == 96


def test_json_has_the_contract_fields(capsys):
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--output-len", "390", "--json")
    assert code == 0
    data = json.loads(out)
    for key in ("b_opt", "kv_cache_bytes", "memory_freed_fraction", "replicas_per_gpu", "vllm_args"):
        assert key in data
    assert data["b_opt"] == 128
    assert data["memory_freed_fraction"] == pytest.approx(0.632, abs=0.01)
    assert isinstance(data["vllm_args"], list) and all(isinstance(a, str) for a in data["vllm_args"])
    assert data["vllm_args"][:2] == ["--max-num-seqs", "128"]
    assert len(data["candidates"]) == 10


def test_human_output_has_the_table_and_the_recommendation(capsys):
    code, out, err = advise(capsys, "--paper-model", "opt-1.3b")
    assert code == 0 and err == ""
    for text in ("batch", "tokens/s", "mean ITL", "efficiency", "verdict", "B_opt", "KV cache"):
        assert text in out
    assert "--kv-cache-memory-bytes" in out and "replicas per GPU" in out and "memory freed" in out
    assert "efficiency 0.195 <= epsilon" in out  # B=128's verdict


def test_policy_epsilon_slo_and_gpu_options(capsys):
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--policy", "plateau", "--json")
    assert code == 0 and json.loads(out)["b_opt"] == 192
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--epsilon", "0.3", "--json")
    assert code == 0 and json.loads(out)["b_opt"] == 64
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--slo-itl-ms", "10", "--json")
    assert code == 0 and json.loads(out)["b_opt"] == 32
    code, out, _ = advise(
        capsys, "--paper-model", "opt-1.3b", "--gpu", "NVIDIA-H100-80GB-HBM3-SHARED", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["gpu_product"] == "NVIDIA-H100-80GB-HBM3" and data["mig_profile"] == "1g.20gb"


def test_the_output_names_the_binding_constraint(capsys):
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--slo-itl-p99-ms", "30")
    assert code == 0
    text = " ".join(out.split())  # rich wraps the explanation
    assert "B_opt = 64" in text and "Binding constraint: the p99 ITL SLO (30 ms)" in text
    assert "p99 ITL 30.79 ms > SLO 30 ms" in text and "Without slo.itlP99Ms it would be B=96." in text
    code, _, err = advise(capsys, "--paper-model", "opt-1.3b", "--slo-itl-p99-ms", "1")
    assert code != 0
    assert (
        "p99 ITL SLO (1 ms): the lowest p99 ITL measured is 4.49 ms (B=1)" in err and "relax the SLO" in err
    )


def test_profile_file(capsys, tmp_path):
    path = tmp_path / "profile.json"
    load_paper_profile("opt-2.7b").dump(path)
    code, out, _ = advise(capsys, "--profile", str(path), "--json")
    assert code == 0 and json.loads(out)["b_opt"] == 128


def test_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "plots" / "opt.png"
    code, out, _ = advise(capsys, "--paper-model", "opt-1.3b", "--plot", str(path), "--json")
    assert code == 0 and json.loads(out)["b_opt"] == 96
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def _profile_without_usable_points(tmp_path):
    data = json.loads(load_paper_profile("opt-1.3b").to_json())
    for point in data["points"]:
        point["preemptions"] = 5
    path = tmp_path / "preempted.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--profile", "{tmp}/missing.json"], "missing.json: no such file"),
        (["--profile", "{tmp}/preempted.json"], "no usable measured point"),
        (["--paper-model", "gpt-4"], "unknown paper model 'gpt-4': use one of opt-1.3b"),
        (["--paper-model", "opt-1.3b", "--slo-itl-ms", "1"], "no measured batch size meets the latency cap"),
        (["--paper-model", "opt-1.3b", "--output-len", "100"], "output lengths 130, 260, 390, 520"),
        (["--paper-model", "opt-1.3b", "--gpu", "Tesla-T4"], "unknown GPU product 'Tesla-T4'"),
        (["--paper-model", "llama-2-13b", "--gpu", "NVIDIA-L4"], "one replica needs"),
        (["--paper-model", "opt-1.3b", "--epsilon", "1.5"], "--epsilon must be between 0 and 1"),
        (["--paper-model", "opt-1.3b", "--max-replicas-per-gpu", "64"], "at most"),
        (["--profile", "{tmp}/preempted.json", "--output-len", "390"], "use it with --paper-model"),
        (["--paper-model", "opt-1.3b", "--paper-data", "{tmp}"], "holds no profiles.csv"),
        (["--paper-model", "opt-1.3b", "--plot", "/proc/nope/x.png"], "cannot write the plot"),
        (["--paper-model", "opt-1.3b", "--min-replica-gain", "-1"], "--min-replica-gain must be"),
        (
            ["--paper-model", "opt-1.3b", "-f", "examples/opt-1.3b-mps-dra.yaml", "--gpu", "NVIDIA-L4"],
            "--gpu cannot be combined with -f",
        ),
        (["--paper-model", "opt-1.3b", "-f", "{tmp}/none.yaml"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(capsys, tmp_path, args, expected, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    _profile_without_usable_points(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = advise(capsys, *args)
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llmpack advise: ")
    assert expected in lines[0] or (expected == "at most" and "between 1 and 48" in lines[0])
    assert "Traceback" not in err


def test_bad_input_through_the_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [LLMPACK, "advise", "--profile", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_profile_and_paper_model_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["advise", "--profile", "x.json", "--paper-model", "opt-1.3b"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
