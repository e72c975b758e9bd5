"""`llmpack advise`: recommend --max-num-seqs, the KV cache size and replicas per GPU from a profile.

llmpack advise (--profile FILE | --paper-model NAME [--output-len N])
               (-f LLMDEPLOYMENT.yaml | [--policy efficiency|plateau] [--epsilon X] [--slo-itl-ms X]
                [--slo-itl-p99-ms X] [--gpu PRODUCT] [--max-replicas-per-gpu N]
                [--min-replica-gain X] [--max-model-len N])
               [--json] [--plot FILE.png] [--paper-data DIR]

The recommendation is the one the operator deploys (advisor/recommend.py advise): replicas per GPU
are those memory holds trimmed by the performance model, and the flags are those of a replica
under MPS through a DRA claim. With -f the options come from the LLMDeployment's spec exactly as
the operator reads them (advisor/options.py options_for_spec), so `llmpack advise -f`, `llmpack
plan -f` and the operator agree (tests/unit/test_decision_agreement.py). `llmpack plan` adds the
mode the cluster offers and the objects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO, get_args

from llmpack.advisor.architectures import PAPER_MODELS
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.loaders import ENV_PAPER_DATA, load_paper_profile, load_profile
from llmpack.advisor.options import DEFAULT_EPSILON, AdvisorOptions, options_for_spec
from llmpack.api.llmdeployment import Policy
from llmpack.api.profile import Profile, ProfileError
from llmpack.api.recommendation import Recommendation
from llmpack.errors import UserError
from llmpack.hardware import MPS_MAX_CLIENTS, UnknownGPUError, lookup_gpu
from llmpack.plan_cli import parse_spec, read_llmdeployment

GIB = 1 << 30


# The options an LLMDeployment spec sets when -f is given: (flag, argparse dest).
SPEC_OPTIONS = (
    ("--policy", "policy"),
    ("--epsilon", "epsilon"),
    ("--slo-itl-ms", "slo_itl_ms"),
    ("--slo-itl-p99-ms", "slo_itl_p99_ms"),
    ("--gpu", "gpu"),
    ("--max-replicas-per-gpu", "max_replicas_per_gpu"),
    ("--min-replica-gain", "min_replica_gain"),
    ("--max-model-len", "max_model_len"),
)
DEFAULT_MAX_REPLICAS_PER_GPU = 8
DEFAULT_MIN_REPLICA_GAIN = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        metavar="FILE",
        help="take the advisor's options and the GPU from this LLMDeployment, as the operator does",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--profile", metavar="FILE", help="a Profile JSON file (what `llmpack profile` writes)"
    )
    source.add_argument(
        "--paper-model",
        metavar="NAME",
        help=f"use the paper's measurements of NAME: {', '.join(PAPER_MODELS)}",
    )
    parser.add_argument(
        "--output-len",
        type=int,
        metavar="N",
        help="with --paper-model: the `advisor` runs at N output tokens (130, 260, 390, 520); "
        "without it the ShareGPT `background` runs",
    )
    parser.add_argument(
        "--policy",
        choices=get_args(Policy),
        help="efficiency (default): the paper's rule; plateau: smallest batch near the best throughput",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        metavar="X",
        help=f"threshold of the policy (default {DEFAULT_EPSILON['efficiency']:g} for efficiency, "
        f"{DEFAULT_EPSILON['plateau']:g} for plateau)",
    )
    parser.add_argument(
        "--slo-itl-ms",
        type=float,
        metavar="X",
        help="SLO on mean inter-token latency in ms (default cap: 5 x the mean ITL at the batch nearest 32)",
    )
    parser.add_argument(
        "--slo-itl-p99-ms", type=float, metavar="X", help="SLO on p99 inter-token latency in ms"
    )
    parser.add_argument(
        "--gpu",
        metavar="PRODUCT",
        help="pack onto this GPU (a nvidia.com/gpu.product value); default: the profile's GPU",
    )
    parser.add_argument(
        "--max-replicas-per-gpu",
        type=int,
        metavar="N",
        help=f"upper bound on replicas per GPU (default {DEFAULT_MAX_REPLICAS_PER_GPU}, at most "
        f"{MPS_MAX_CLIENTS})",
    )
    parser.add_argument(
        "--min-replica-gain",
        type=float,
        metavar="X",
        help="pack no further when one more replica is predicted to add less than this fraction of "
        f"tokens/s per GPU (default {DEFAULT_MIN_REPLICA_GAIN:g})",
    )
    parser.add_argument("--max-model-len", type=int, metavar="N", help="--max-model-len of each replica")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="write a PNG of throughput and ITL against batch size"
    )
    parser.add_argument(
        "--paper-data",
        metavar="DIR",
        help=f"folder holding the paper's profiles.csv (default: ${ENV_PAPER_DATA}, else "
        "shared/paper-data beside the repository root)",
    )


def _options(args: argparse.Namespace) -> tuple[AdvisorOptions, str | None]:
    """The options and the GPU to pack onto (None: the profile's)."""
    if args.filename is not None:
        given = [flag for flag, dest in SPEC_OPTIONS if getattr(args, dest) is not None]
        if given:
            raise UserError(
                f"{', '.join(given)} cannot be combined with -f: the LLMDeployment's spec sets them"
            )
        spec = parse_spec(read_llmdeployment(Path(args.filename)))
        return options_for_spec(spec), spec.gpu.product
    max_replicas = args.max_replicas_per_gpu or DEFAULT_MAX_REPLICAS_PER_GPU
    min_gain = DEFAULT_MIN_REPLICA_GAIN if args.min_replica_gain is None else args.min_replica_gain
    checks = [
        (
            args.epsilon is not None and not 0 < args.epsilon < 1,
            "--epsilon must be between 0 and 1 (exclusive)",
        ),
        (
            args.slo_itl_ms is not None and not args.slo_itl_ms > 0,
            "--slo-itl-ms must be a positive number of ms",
        ),
        (
            args.slo_itl_p99_ms is not None and not args.slo_itl_p99_ms > 0,
            "--slo-itl-p99-ms must be a positive number of ms",
        ),
        (
            not 1 <= max_replicas <= MPS_MAX_CLIENTS,
            f"--max-replicas-per-gpu must be between 1 and {MPS_MAX_CLIENTS} (the MPS client limit)",
        ),
        (not 0 <= min_gain < 10, "--min-replica-gain must be a fraction of at least 0 (0.05 is 5%)"),
        (args.max_model_len is not None and args.max_model_len < 1, "--max-model-len must be at least 1"),
    ]
    for failed, message in checks:
        if failed:
            raise UserError(message)
    options = AdvisorOptions(
        policy=args.policy or "efficiency",
        epsilon=args.epsilon,
        slo_itl_mean_ms=args.slo_itl_ms,
        slo_itl_p99_ms=args.slo_itl_p99_ms,
        max_replicas_per_gpu=max_replicas,
        min_replica_gain=min_gain,
        max_model_len=args.max_model_len,
    )
    return options, args.gpu


def _profile(args: argparse.Namespace) -> Profile:
    if args.profile is not None:
        if args.output_len is not None:
            raise UserError("--output-len selects paper runs; use it with --paper-model, not --profile")
        if args.paper_data is not None:
            raise UserError("--paper-data is only read with --paper-model")
        return load_profile(args.profile)
    if args.output_len is not None and args.output_len < 1:
        raise UserError("--output-len must be a positive number of tokens")
    return load_paper_profile(args.paper_model, args.output_len, args.paper_data)


def run(args: argparse.Namespace) -> int:
    options, product = _options(args)
    try:
        gpu = lookup_gpu(product) if product else None
        profile = _profile(args)
        rec = _advise(profile, options, gpu)
    except (AdvisorError, ProfileError, UnknownGPUError) as err:
        raise UserError(str(err)) from None
    if args.plot:
        from llmpack.plotting import plot_recommendation

        try:
            plot_recommendation(profile, rec, args.plot)
        except OSError as err:
            raise UserError(f"cannot write the plot to {args.plot}: {err.strerror or err}") from None
    if args.json:
        print(json.dumps(rec.model_dump(mode="json")))
    else:
        print_human(profile, rec)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _advise(profile: Profile, options: AdvisorOptions, gpu: object) -> Recommendation:
    from llmpack.advisor.recommend import advise

    return advise(profile, options, gpu)  # type: ignore[arg-type]


def print_human(profile: Profile, rec: Recommendation, file: TextIO | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
    title = f"{rec.model_name} on {profile.gpu.product}: {rec.policy} policy, epsilon {rec.epsilon:g}" + (
        f", mean ITL cap {rec.latency_cap_ms:.2f} ms" if rec.latency_cap_ms is not None else ""
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("batch", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("mean ITL ms", justify="right")
    table.add_column("efficiency", justify="right")
    table.add_column("verdict", overflow="fold")
    for v in rec.candidates:
        if v.chosen:
            verdict = "[bold green]B_opt[/]"
        elif v.kept:
            verdict = "[green]kept[/]"
        else:
            verdict = "[red]" + "; ".join(v.reasons).replace("[", "\\[") + "[/]"
        table.add_row(
            str(v.max_num_seqs),
            f"{v.total_tokens_per_s:,.0f}",
            f"{v.itl_mean_ms:.2f}" if v.itl_mean_ms is not None else "-",
            f"{v.efficiency:.3f}" if v.efficiency is not None else "-",
            verdict,
        )
    if rec.candidates:
        console.print(table)

    rows = [
        (
            "B_opt (--max-num-seqs)",
            f"{rec.b_opt}" + (" (fixed by the user)" if rec.b_opt_source == "override" else ""),
        ),
        (
            "KV cache",
            f"{rec.kv_cache_bytes:,} bytes = {rec.kv_cache_bytes / GIB:.2f} GiB = {rec.kv_tokens:,} tokens "
            f"({rec.kv_sizing})",
        ),
        (
            "per replica",
            f"{rec.per_replica_memory_bytes / GIB:.2f} GiB = KV + {rec.non_kv_memory_bytes / GIB:.2f} GiB "
            f"besides ({rec.non_kv_memory_source})",
        ),
        (
            "replicas per GPU",
            f"{rec.replicas_per_gpu} on {rec.gpu_product} under MPS (memory holds "
            f"{rec.replicas_memory_fit}; limited by {rec.replicas_limited_by}; slot "
            f"{rec.slot_bytes / GIB:.2f} GiB each)",
        ),
        (
            "MIG",
            f"{rec.mig_profile}: {rec.mig_instances_per_gpu} per GPU"
            if rec.mig_profile
            else "no MIG profile of this GPU holds one replica"
            if _mig_capable(rec.gpu_product)
            else "this GPU has no MIG",
        ),
        (
            "memory freed",
            f"{rec.memory_freed_bytes / GIB:.2f} GiB = {rec.memory_freed_fraction:.1%} of the GPU's "
            f"{rec.gpu_memory_bytes / GIB:.0f} GiB, versus one vLLM instance with defaults",
        ),
        ("vLLM flags", " ".join(rec.vllm_args)),
    ]
    summary = Table(box=None, show_header=False, pad_edge=False)
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    for key, value in rows:
        summary.add_row(key, value.replace("[", "\\["))
    console.print(summary)
    console.print()
    console.print(rec.explanation.replace("[", "\\["), soft_wrap=True)
    for note in rec.notes:
        console.print(f"note: {note}".replace("[", "\\["), soft_wrap=True)


def _mig_capable(product: str) -> bool:
    try:
        return lookup_gpu(product).mig_capable
    except UnknownGPUError:
        return False
