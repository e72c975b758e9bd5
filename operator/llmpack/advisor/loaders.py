"""Reading profiles: the project's own Profile JSON, and the measured points published with the
paper ("Mind the Memory Gap", arXiv 2503.08311) as extracted in shared/paper-data/profiles.csv.

The paper data is never copied into this repository. Its folder is, in order:
1. the `--paper-data DIR` option (`data_dir` here);
2. the environment variable LLMPACK_PAPER_DATA;
3. `shared/paper-data` beside the repository root (<repo>/../shared/paper-data), where the repo is
   the one this file lives in or, for an installed package, the git checkout around the current
   working directory.

Every paper row is one H100 64 GB (vLLM saw 63.43 GiB), vLLM ~0.6.3, fp16, block size 16.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

from llmpack.advisor.architectures import PAPER_MODELS, lookup_architecture, paper_name
from llmpack.advisor.errors import PaperDataError, UnknownModelError
from llmpack.api.profile import (
    EngineFacts,
    GPUFacts,
    Profile,
    ProfileError,
    ProfilePoint,
    WorkloadShape,
)

ENV_PAPER_DATA = "LLMPACK_PAPER_DATA"
PAPER_CSV = "profiles.csv"
PAPER_GPU_PRODUCT = "NVIDIA-H100-64GB-HBM2e"
GIB = 1 << 30
MIB = 1 << 20


def load_profile(path: str | Path) -> Profile:
    """A Profile JSON file, validated. Raises ProfileError naming the file and the bad field."""
    return Profile.load(path)


# Locating the paper data ---------------------------------------------------------------------


def _source_repo_root() -> Path:
    # operator/llmpack/advisor/loaders.py -> the repository root is three folders above llmpack/
    return Path(__file__).resolve().parents[3]


def _git_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def paper_data_candidates(cwd: Path | None = None) -> list[Path]:
    """Default places of the paper data, most specific first."""
    candidates = [_source_repo_root().parent / "shared" / "paper-data"]
    git_root = _git_root((cwd or Path.cwd()).resolve())
    if git_root is not None:
        candidates.append(git_root.parent / "shared" / "paper-data")
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def resolve_paper_data_dir(
    data_dir: str | Path | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path:
    env = os.environ if env is None else env
    if data_dir is not None:
        return _check_dir(Path(data_dir), "--paper-data")
    if env.get(ENV_PAPER_DATA):
        return _check_dir(Path(env[ENV_PAPER_DATA]), f"${ENV_PAPER_DATA}")
    tried = paper_data_candidates(cwd)
    for path in tried:
        if (path / PAPER_CSV).is_file():
            return path
    raise PaperDataError(
        "paper data not found: pass --paper-data DIR, set the environment variable "
        f"{ENV_PAPER_DATA}=DIR, or put it at shared/paper-data beside the repository root "
        f"(looked in {', '.join(str(p) for p in tried)}); DIR must hold {PAPER_CSV}"
    )


def _check_dir(path: Path, origin: str) -> Path:
    if not (path / PAPER_CSV).is_file():
        raise PaperDataError(
            f"{origin} points at {path}, which holds no {PAPER_CSV}; give the paper-data folder"
        )
    return path


# Reading the CSV ------------------------------------------------------------------------------


def _float(row: Mapping[str, str], column: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _int(row: Mapping[str, str], column: str) -> int | None:
    value = _float(row, column)
    return None if value is None else round(value)


def _pct(row: Mapping[str, str], column: str) -> float | None:
    value = _float(row, column)
    return None if value is None else min(max(value / 100.0, 0.0), 1.0)


def read_paper_rows(data_dir: str | Path | None = None) -> list[dict[str, str]]:
    path = resolve_paper_data_dir(data_dir) / PAPER_CSV
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError as err:
        raise PaperDataError(f"cannot read {path}: {err.strerror}") from None


def paper_point(row: Mapping[str, str]) -> ProfilePoint:
    """One `ok` row of profiles.csv as a ProfilePoint (columns in shared/paper-data/README.md)."""
    used_mib = _float(row, "nvsmi_mem_used_max_mib")
    return ProfilePoint(
        max_num_seqs=int(row["max_num_seqs"]),
        total_tokens_per_s=_float(row, "total_token_throughput_tok_s") or 0.0,
        output_tokens_per_s=_float(row, "output_throughput_tok_s"),
        requests_per_s=_float(row, "request_throughput_rps"),
        itl_mean_ms=_float(row, "mean_itl_ms"),
        itl_p50_ms=_float(row, "median_itl_ms"),
        itl_p99_ms=_float(row, "p99_itl_ms"),
        tpot_mean_ms=_float(row, "mean_tpot_ms"),
        tpot_p50_ms=_float(row, "median_tpot_ms"),
        tpot_p99_ms=_float(row, "p99_tpot_ms"),
        ttft_mean_ms=_float(row, "mean_ttft_ms"),
        ttft_p50_ms=_float(row, "median_ttft_ms"),
        ttft_p99_ms=_float(row, "p99_ttft_ms"),
        kv_cache_usage_peak=_pct(row, "kv_cache_usage_max_pct"),
        kv_capacity_tokens=_int(row, "kv_capacity_tokens"),
        preemptions=_int(row, "preemptions_max") or 0,
        gpu_memory_used_bytes=round(used_mib * MIB) if used_mib is not None else None,
        gpu_utilization=_pct(row, "nvsmi_util_gpu_mean_active_pct"),
        # nvidia-smi's "memory" utilisation is the controller's busy time, not bandwidth (README)
        memory_busy_fraction=_pct(row, "nvsmi_util_mem_mean_active_pct"),
        mean_running=_float(row, "running_mean_active"),
        completed=_int(row, "completed"),
        duration_s=_float(row, "duration_s"),
    )


def paper_output_lengths(rows: list[dict[str, str]], model: str) -> list[int]:
    return sorted(
        {
            int(r["output_len_setting"])
            for r in rows
            if r["model"] == model and r["family"] == "advisor" and r["output_len_setting"].isdigit()
        }
    )


def load_paper_profile(
    model: str, output_len: int | None = None, data_dir: str | Path | None = None
) -> Profile:
    """The paper's measurements of one model as a Profile: the `background` family (ShareGPT,
    natural lengths) without `output_len`, the `advisor` family at that output length with it.
    Failed runs are left out and listed in `notes`."""
    short = paper_name(model)
    if short is None:
        raise UnknownModelError(
            f"unknown paper model {model.strip()!r}: use one of {', '.join(PAPER_MODELS)}"
        )
    rows = read_paper_rows(data_dir)
    if output_len is None:
        family, setting = "background", "sharegpt"
    else:
        family, setting = "advisor", str(output_len)
        lengths = paper_output_lengths(rows, short)
        if output_len not in lengths:
            raise PaperDataError(
                f"the paper measured {short} at output lengths {', '.join(map(str, lengths))}, not "
                f"{output_len}; pick one of those or leave out --output-len for the ShareGPT runs"
            )
    selected = [
        r
        for r in rows
        if r["model"] == short and r["family"] == family and r["output_len_setting"] == setting
    ]
    ok = sorted((r for r in selected if r["status"] == "ok"), key=lambda r: int(r["max_num_seqs"]))
    if not ok:
        raise PaperDataError(f"no successful run of {short} in the {family} family of the paper data")
    failed = [r for r in selected if r["status"] != "ok"]
    notes = [
        f"B={r['max_num_seqs']} missing: the run failed ({r.get('failure_reason') or 'no result'})"
        for r in sorted(failed, key=lambda r: int(r["max_num_seqs"]))
    ]
    first = ok[0]
    arch = lookup_architecture(short)
    weights_gib = _float(first, "weights_gib")
    profile_data = {
        "model": arch.model_facts(
            name=arch.hf_id,
            dtype="float16",
            max_model_len=_int(first, "max_model_len"),
            weight_bytes=round(weights_gib * GIB) if weights_gib else None,
        ),
        "gpu": GPUFacts(
            product=PAPER_GPU_PRODUCT,
            memory_bytes=round((_float(first, "total_gpu_memory_gib") or 63.43) * GIB),
        ),
        "engine": EngineFacts(version=first.get("vllm_version_string") or None),
        "workload": WorkloadShape(
            prompt_tokens=math.ceil(_float(first, "input_tokens_per_req_mean") or 1),
            output_tokens=math.ceil(_float(first, "output_tokens_per_req_mean") or 1),
            dataset=first.get("dataset") or None,
            num_prompts=_int(first, "num_prompts"),
            chunked_prefill=(first.get("chunked_prefill") or "").lower() == "true",
        ),
        "points": [paper_point(r) for r in ok],
        "block_size": _int(first, "block_size") or 16,
        "gpu_memory_utilization": _float(first, "gpu_memory_utilization"),
        # The pool of the smallest batch's run stands for "one instance with defaults": the pool
        # shrinks by < 0.5% as --max-num-seqs grows (larger start-up activation peak).
        "kv_capacity_tokens": _int(first, "kv_capacity_tokens"),
        "backend": "paper",
        "source": f"paper-data/{PAPER_CSV}: model={short} family={family} output_len={setting}",
        "notes": notes,
    }
    try:
        return Profile.model_validate(profile_data)
    except ValueError as err:  # a corrupted CSV
        raise PaperDataError(f"paper data for {short} does not validate: {err}") from None


__all__ = [
    "ENV_PAPER_DATA",
    "PAPER_GPU_PRODUCT",
    "ProfileError",
    "load_paper_profile",
    "load_profile",
    "paper_data_candidates",
    "read_paper_rows",
    "resolve_paper_data_dir",
]
