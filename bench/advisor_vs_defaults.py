"""The advisor's choice against vLLM's defaults on every group of the paper's measurements.

    python -m bench.advisor_vs_defaults [--paper-data DIR] [--results-dir DIR]

For each of the 20 groups of shared/paper-data/profiles.csv (the `background` family per model,
the `advisor` family per model and output length), runs `advise` (default options: the paper's
efficiency rule, epsilon 0.2, latency cap 5 x ITL at batch 32) and compares, from the measured
rows (no prediction), one vLLM instance configured as the advisor says against one left at the
defaults:

- KV cache reserved: the advisor's --kv-cache-memory-bytes against the pool vLLM reserved with
  --gpu-memory-utilization 0.9 (the run's own kv_capacity_tokens x KV bytes per token);
- total tokens/s (prompt + output, the paper's measure) and mean ITL measured at B_opt against
  those measured at the default --max-num-seqs: 256 on this GPU (vLLM 0.33 defaults to 256 below
  70 GiB of device memory, FACTS 1.3; the paper's H100 64 GB shows CUDA 63.43 GiB), or the measured
  batch nearest 256 where that run failed.

The baseline is the default instance of the same group, measured in the same study.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.common import Result, Table, geomean, gib, paper_data_main
from llmpack.advisor import AdvisorOptions, advise, gpu_for_profile
from llmpack.advisor.loaders import load_paper_profile, paper_output_lengths, read_paper_rows
from llmpack.advisor.perfmodel import default_max_num_seqs

MODELS = ("opt-1.3b", "opt-2.7b", "llama-2-7b", "llama-2-13b")


@dataclass(frozen=True)
class GroupComparison:
    model: str
    output_len: int | None  # None: the background family (ShareGPT, natural lengths)
    b_opt: int
    b_default: int  # the measured batch standing for vLLM's default
    default_wanted: int  # vLLM's default --max-num-seqs for the GPU
    kv_advisor_bytes: int
    kv_default_bytes: int
    tokens_per_s_advisor: float
    tokens_per_s_default: float
    itl_advisor_ms: float
    itl_default_ms: float
    preemptions_default: int
    preemptions_advisor: int
    kv_sizing: str

    @property
    def workload(self) -> str:
        return "ShareGPT" if self.output_len is None else f"out {self.output_len}"

    @property
    def kv_ratio(self) -> float:
        return self.kv_advisor_bytes / self.kv_default_bytes

    @property
    def throughput_ratio(self) -> float:
        return self.tokens_per_s_advisor / self.tokens_per_s_default

    @property
    def itl_ratio(self) -> float:
        return self.itl_advisor_ms / self.itl_default_ms


def paper_groups(
    data_dir: str | None = None, models: tuple[str, ...] = MODELS
) -> list[tuple[str, int | None]]:
    """(model, output length or None) of every group the paper data holds."""
    rows = read_paper_rows(data_dir)
    present = {r["model"] for r in rows}
    return [
        (model, output_len)
        for model in models
        if model in present
        for output_len in (None, *paper_output_lengths(rows, model))
    ]


def nearest_measured(batches: list[int], wanted: int) -> int:
    return min(batches, key=lambda b: (abs(b - wanted), b))


def compare(
    model: str, output_len: int | None, data_dir: str | None = None, options: AdvisorOptions | None = None
) -> GroupComparison:
    profile = load_paper_profile(model, output_len, data_dir)
    rec = advise(profile, options)
    wanted = default_max_num_seqs(gpu_for_profile(profile))
    b_default = nearest_measured([p.max_num_seqs for p in profile.points], wanted)
    default, chosen = profile.point(b_default), profile.point(rec.b_opt)
    if default is None or chosen is None:  # B_opt is always a measured batch without overrides
        raise RuntimeError(f"{model}: no measured point at B_opt={rec.b_opt} or B={b_default}")
    capacity = default.kv_capacity_tokens or profile.kv_capacity_tokens
    if capacity is None or default.itl_mean_ms is None or chosen.itl_mean_ms is None:
        raise RuntimeError(f"{model} {output_len}: the paper row lacks kv_capacity_tokens or mean ITL")
    return GroupComparison(
        model=model,
        output_len=output_len,
        b_opt=rec.b_opt,
        b_default=b_default,
        default_wanted=wanted,
        kv_advisor_bytes=rec.kv_cache_bytes,
        kv_default_bytes=capacity * profile.model.kv_bytes_per_token,
        tokens_per_s_advisor=chosen.total_tokens_per_s,
        tokens_per_s_default=default.total_tokens_per_s,
        itl_advisor_ms=chosen.itl_mean_ms,
        itl_default_ms=default.itl_mean_ms,
        preemptions_default=default.preemptions,
        preemptions_advisor=chosen.preemptions,
        kv_sizing=rec.kv_sizing,
    )


def tables(results: list[GroupComparison]) -> list[Table]:
    main = Table(
        "Advisor at B_opt against one vLLM instance with defaults (measured rows, H100 64 GB)",
        [
            "model",
            "workload",
            "B_opt",
            "B default",
            "KV GiB adv",
            "KV GiB def",
            "KV adv/def",
            "tok/s adv",
            "tok/s def",
            "tok/s adv/def",
            "ITL ms adv",
            "ITL ms def",
            "ITL adv/def",
            "preempt. def",
        ],
        note="KV: --kv-cache-memory-bytes the advisor sets against the pool --gpu-memory-utilization 0.9 "
        "reserved; tok/s: prompt + output tokens per second; ITL: mean inter-token latency. "
        "* = the run at the default 256 failed in the paper data; the nearest measured batch stands for it.",
    )
    for r in results:
        default = f"{r.b_default}" + ("*" if r.b_default != r.default_wanted else "")
        main.add(
            r.model,
            r.workload,
            r.b_opt,
            default,
            gib(r.kv_advisor_bytes),
            gib(r.kv_default_bytes),
            f"{r.kv_ratio:.2f}x",
            f"{r.tokens_per_s_advisor:,.0f}",
            f"{r.tokens_per_s_default:,.0f}",
            f"{r.throughput_ratio:.2f}x",
            f"{r.itl_advisor_ms:.1f}",
            f"{r.itl_default_ms:.1f}",
            f"{r.itl_ratio:.2f}x",
            r.preemptions_default,
        )
    summary = Table(
        "Ratios over the groups (advisor / default)",
        [
            "model",
            "groups",
            "KV geomean",
            "KV range",
            "tok/s geomean",
            "tok/s range",
            "ITL geomean",
            "ITL range",
        ],
    )
    for model in [*dict.fromkeys(r.model for r in results), "all"]:
        chosen = [r for r in results if model in ("all", r.model)]
        cells = []
        for attr in ("kv_ratio", "throughput_ratio", "itl_ratio"):
            values = [getattr(r, attr) for r in chosen]
            cells += [f"{geomean(values):.2f}x", f"{min(values):.2f}-{max(values):.2f}x"]
        summary.add(model, len(chosen), *cells)
    return [main, summary]


def run(data_dir: str | None = None) -> Result:
    results = [compare(model, output_len, data_dir) for model, output_len in paper_groups(data_dir)]
    same = [r for r in results if r.b_opt == r.b_default]
    preempting = [r for r in results if r.preemptions_default]
    notes = [
        f"{len(results)} groups; B_opt equals the default batch in {len(same)} "
        f"({', '.join(f'{r.model} {r.workload}' for r in same) or 'none'}), where every ratio but KV is 1.",
        f"The default instance preempted requests in {len(preempting)} of {len(results)} groups "
        "(its batch outgrew the KV pool); the advisor's runs preempted in "
        f"{sum(1 for r in results if r.preemptions_advisor)}.",
        "Throughput and ITL are single measured runs of the paper (run-to-run noise is not known); the "
        "advisor trades some throughput for much lower ITL and a KV cache sized for its batch, and "
        "the memory it frees is what packing spends on more replicas (bench.fleet_packing).",
    ]
    return Result(
        name="advisor_vs_defaults",
        title="Advisor vs vLLM defaults on the paper's measurements",
        summary=(__doc__ or "").split("\n\n", 2)[2].strip(),
        tables=tables(results),
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return paper_data_main("advisor_vs_defaults", __doc__ or "", run, argv)


if __name__ == "__main__":
    sys.exit(main())
