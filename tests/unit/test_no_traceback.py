"""No traceback reaches a user of `llmpack plan`: what the profiling Job would fail with is one line
that says what to change; weights larger than the GPU are refused before profiling, naming what
would serve them; and a fault of llmpack's own is one line that says so (LLMPACK_DEBUG=1 shows
the traceback). Instances: Llama-3.1-8B on an L4 without maxModelLen (its 131,072-token context does
not fit), Qwen3-Next-80B on an H100 (../shared/cases/memory-contract/14 on a smaller GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmpack.cli import main

QWEN3_NEXT = {
    "model": {
        "name": "Qwen/Qwen3-Next-80B-A3B-Instruct",
        "architecture": {
            "numLayers": 48,
            "numKvHeads": 2,
            "headDim": 256,
            "parameterBytes": 162650000000,
            "maxPositionEmbeddings": 262144,
        },
    },
    "workload": {"promptTokens": 4000, "outputTokens": 1000},
    "sharing": {"mode": "exclusive"},
    "gpu": {"product": "NVIDIA-B200"},
    "profiling": {"backend": "simulated"},
}


def plan(tmp_path: Path, spec: dict[str, Any], capsys, *extra: str) -> tuple[int, str]:
    path = tmp_path / "spec.yaml"
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(body))
    code = main(["plan", "-f", str(path), "--simulate", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


LLAMA_ON_L4 = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "workload": {"promptTokens": 4000, "outputTokens": 1000},
    "sharing": {"mode": "exclusive"},
    "gpu": {"product": "NVIDIA-L4"},
    "profiling": {"backend": "simulated"},
}


def test_a_profiling_run_that_would_fail_is_one_line_with_what_to_change(tmp_path, capsys):
    code, err = plan(tmp_path, LLAMA_ON_L4, capsys)
    assert code == 1, "as every refusal of llmpack plan"
    (line,) = err.splitlines()
    assert line.startswith(
        "llmpack plan: ProfilingFailed: the profiling Job would fail: meta-llama/Llama-3.1-8B-Instruct"
    )
    assert "set spec.model.maxModelLen to at most 27216" in line


def test_weights_larger_than_the_gpu_are_refused_before_profiling_naming_what_serves_them(tmp_path, capsys):
    big = {**QWEN3_NEXT, "gpu": {"product": "NVIDIA-H100-80GB-HBM3"}}
    code, err = plan(tmp_path, big, capsys)
    assert code != 0
    assert "WeightsDoNotFit: the weights of Qwen/Qwen3-Next-80B-A3B-Instruct take 151.5 GiB" in err
    assert "a GPU with more memory (" in err and "NVIDIA-B200" in err
    assert "quantized checkpoint" in err
    assert (
        "tensor parallelism over 4 GPUs per replica (sharing.mode exclusive, "
        'serving.extraArgs ["--tensor-parallel-size", "4"]'
    ) in err
    # the advice serves: each GPU holds a quarter of the weights and one of the 2 KV heads
    split = {
        **big,
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 4},
        "sharing": {"mode": "exclusive"},
        "serving": {"extraArgs": ["--tensor-parallel-size", "4"]},
    }
    code, err = plan(tmp_path, split, capsys)
    assert code == 0, err
    # an online quantization changes the bytes: profiling, not this estimate, says whether it fits
    quantized = {**big, "serving": {"extraArgs": ["--quantization", "fp8"]}}
    _, err = plan(tmp_path, quantized, capsys)
    assert "WeightsDoNotFit" not in err


def test_a_fault_of_llmpacks_own_is_one_line_that_says_so(tmp_path, capsys, monkeypatch):
    from llmpack.planner import decide

    def broken(*_: Any, **__: Any) -> None:
        raise KeyError("recommendation")

    monkeypatch.setattr(decide, "decide", broken)
    monkeypatch.delenv("LLMPACK_DEBUG", raising=False)
    code, err = plan(tmp_path, {"model": {"name": "facebook/opt-1.3b"}}, capsys)
    assert code == 70
    (line,) = err.splitlines()
    assert line.startswith("llmpack plan: internal error: KeyError: 'recommendation' (a bug in llmpack")
    monkeypatch.setenv("LLMPACK_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["plan", "-f", str(tmp_path / "spec.yaml"), "--simulate"])
