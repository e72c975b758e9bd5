"""`llmpack predict`: predicted throughput and latency of R replicas of one model on one GPU.

llmpack predict (--paper-model NAME [--paper-data DIR] [--output-len N] | --profile FILE)
                --max-num-seqs B [--replicas R] [--mps | --mig PROFILE] [--gpu PRODUCT]
                [--json] [--loo]

The model (advisor/perfmodel.py) is calibrated on the profile's single-instance points; with
--paper-model the profile is the paper's `background` family (ShareGPT, natural lengths) unless
--output-len picks an `advisor` run. `gain_vs_single` compares with one instance at the same
--max-num-seqs (the paper's Table IV comparison); `gain_vs_best_single` with one instance at its
best measured batch size; `gain_vs_default` with one instance left at vLLM's defaults.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from llmpack.advisor import packing, perfmodel, perfmodel_validation
from llmpack.advisor.architectures import PAPER_MODELS
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.loaders import ENV_PAPER_DATA, load_paper_profile, load_profile, resolve_paper_data_dir
from llmpack.advisor.perfmodel import PerfModel, Prediction
from llmpack.advisor.perfmodel_validation import LeaveOneOut, ReplicationPoint
from llmpack.api.profile import Profile, ProfileError
from llmpack.errors import UserError
from llmpack.hardware import GPU, MPS_MAX_CLIENTS, MIGProfile, UnknownGPUError, lookup_gpu

GIB = 1 << 30
REPLICATION_CSV = "replication_calibration.csv"
CALIBRATION_MODEL = "opt-1.3b"  # the model of the paper's replication runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Numbers are parsed in run() so that a bad value is one line of error, like every other.
    parser.add_argument(
        "--paper-model", metavar="NAME", help=f"the paper's measurements of NAME: {', '.join(PAPER_MODELS)}"
    )
    parser.add_argument("--profile", metavar="FILE", help="a Profile JSON file instead of the paper's data")
    parser.add_argument(
        "--paper-data",
        metavar="DIR",
        help=f"folder of the paper's CSVs (default: ${ENV_PAPER_DATA}, else shared/paper-data beside "
        "the repository root)",
    )
    parser.add_argument(
        "--output-len",
        metavar="N",
        help="with --paper-model: the `advisor` runs at N output tokens instead of the ShareGPT runs",
    )
    parser.add_argument("--max-num-seqs", metavar="B", help="--max-num-seqs of each replica (required)")
    parser.add_argument("--replicas", metavar="R", default="1", help="replicas on the GPU (default 1)")
    parser.add_argument(
        "--mps", action="store_true", help="replicas share the GPU under MPS (implied by --replicas > 1)"
    )
    parser.add_argument(
        "--mig", metavar="PROFILE", help="each replica in its own MIG slice of PROFILE, e.g. 3g.40gb"
    )
    parser.add_argument(
        "--gpu",
        metavar="PRODUCT",
        help="predict for this GPU (nvidia.com/gpu.product); default: the profile's",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--loo",
        action="store_true",
        help="also report leave-one-out errors of the fit and of the MPS calibration",
    )


def _count(text: str | None, flag: str, upper: int | None = None) -> int:
    if text is None:
        raise UserError(f"{flag} is required: give a whole number of at least 1")
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} must be a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")
    if upper is not None and value > upper:
        raise UserError(f"{flag} must be at most {upper}, got {value}")
    return value


def _profile(args: argparse.Namespace) -> Profile:
    if (args.paper_model is None) == (args.profile is None):
        raise UserError("give exactly one of --paper-model NAME or --profile FILE")
    if args.profile is not None:
        if args.output_len is not None:
            raise UserError("--output-len selects paper runs; use it with --paper-model, not --profile")
        return load_profile(args.profile)
    output_len = _count(args.output_len, "--output-len") if args.output_len is not None else None
    return load_paper_profile(args.paper_model, output_len, args.paper_data)


def load_replication_points(data_dir: str | Path | None = None) -> list[ReplicationPoint]:
    """The paper's replica-packing runs (replication_calibration.csv in the paper-data folder)."""
    path = resolve_paper_data_dir(data_dir) / REPLICATION_CSV
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise AdvisorError(f"cannot read {path}: {err.strerror}") from None
    try:
        return [
            ReplicationPoint(
                replicas=int(row["replicas"]),
                max_num_seqs=int(row["max_num_seqs_per_replica"]),
                total_tokens_per_s=float(row["total_token_throughput_tok_s"]),
                itl_mean_ms=float(row["mean_itl_ms"]) if row.get("mean_itl_ms") else None,
                running_total=(
                    float(row["running_mean_active_sum_over_replicas"])
                    if row.get("running_mean_active_sum_over_replicas")
                    else None
                ),
            )
            for row in rows
        ]
    except (KeyError, ValueError) as err:
        raise AdvisorError(f"{path} does not hold the expected columns: {err}") from None


def run(args: argparse.Namespace) -> int:
    batch = _count(args.max_num_seqs, "--max-num-seqs")
    replicas = _count(args.replicas, "--replicas", MPS_MAX_CLIENTS)
    if args.mps and args.mig:
        raise UserError("--mps and --mig exclude each other: replicas share one GPU or each get a slice")
    try:
        profile = _profile(args)
        gpu = lookup_gpu(args.gpu) if args.gpu else None
        perf = perfmodel.calibrate(profile, gpu=gpu)
        mig = _mig_profile(perf.gpu, args.mig) if args.mig else None
        if mig is not None and replicas > mig.max_instances:
            raise UserError(
                f"{perf.gpu.product} holds at most {mig.max_instances} {mig.name} slices; lower --replicas"
            )
        result = predict(profile, perf, replicas, batch, mig)
        if args.loo:
            result["leave_one_out"] = _leave_one_out(profile, args)
    except (AdvisorError, ProfileError, UnknownGPUError) as err:
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print_human(result)
    return 0


def _mig_profile(gpu: GPU, name: str) -> MIGProfile:
    if not gpu.mig_capable:
        capable = ", ".join(sorted(g for g in _mig_gpus()))
        raise UserError(f"{gpu.product} has no MIG; pass --gpu with one of {capable}")
    try:
        return gpu.mig_profile(name)
    except ValueError as err:
        raise UserError(str(err)) from None


def _mig_gpus() -> list[str]:
    from llmpack.hardware import GPUS

    return [product for product, gpu in GPUS.items() if gpu.mig_capable]


def predict(
    profile: Profile, perf: PerfModel, replicas: int, batch: int, mig: MIGProfile | None = None
) -> dict[str, Any]:
    """Everything `llmpack predict` prints, as a JSON-able dict."""
    notes = list(perf.notes)
    if mig is not None:
        chosen = perf.mig(mig, batch, instances=replicas)
    else:
        chosen = perf.mps(replicas, batch)
        if replicas > 1:
            notes.append("replicas share the GPU under MPS (the only way R > 1 share one GPU here)")
    single = perf.single(batch)
    best = max((perf.single(p.max_num_seqs) for p in perf.points), key=lambda p: p.total_tokens_per_s)
    default = perfmodel.baseline(perf, profile, perf.gpu)
    measured = profile.point(batch) if perf.gpu.product == perf.measured_gpu_product else None

    per_replica = perfmodel.replica_memory_bytes(profile, batch)
    room = mig.memory_bytes if mig is not None else perf.gpu.usable_memory_bytes
    fit = min(packing.fit_by_memory(per_replica, room), MPS_MAX_CLIENTS)
    needed = 1 if mig is not None else replicas
    fits = fit >= needed
    where = f"a {mig.name} slice" if mig is not None else perf.gpu.product
    if not fits and needed == 1:
        notes.append(
            f"a KV cache for {batch} sequences of {profile.workload.prompt_tokens}+"
            f"{profile.workload.output_tokens} tokens does not fit {where}: vLLM will run fewer "
            "sequences at once (or preempt) than the prediction assumes"
        )
    elif not fits:
        notes.append(
            f"{replicas} replicas of {per_replica / GIB:.2f} GiB do not fit {where}; {fit} do: the "
            "prediction assumes they fit"
        )
    return {
        "model": perf.model_name,
        "profile_source": profile.source or profile.backend,
        "gpu": perf.gpu.product,
        "measured_gpu": perf.measured_gpu_product,
        "mode": chosen.mode,
        "mig_profile": mig.name if mig else None,
        "replicas": replicas,
        "max_num_seqs": batch,
        "total_tokens_per_s": chosen.total_tokens_per_s,
        "output_tokens_per_s": chosen.output_tokens_per_s,
        "itl_mean_ms": chosen.itl_mean_ms,
        "tokens_per_s_per_replica": chosen.tokens_per_s_per_replica,
        "running_per_replica": chosen.running_per_replica,
        "gpu_busy_fraction": chosen.gpu_busy_fraction,
        "single": _brief(single),
        "gain_vs_single": _gain(chosen, single),
        "measured_single_total_tokens_per_s": measured.total_tokens_per_s if measured else None,
        "best_single": _brief(best),
        "gain_vs_best_single": _gain(chosen, best),
        "default_baseline": {**_brief(default), "note": default.note},
        "gain_vs_default": _gain(chosen, default),
        "memory": {"per_replica_bytes": per_replica, "replicas_fit": fit, "fits": fits},
        "model_terms": {
            "bandwidth_bytes_per_s": perf.bandwidth_bytes_per_s,
            "weight_efficiency": perf.weight_efficiency,
            "kv_efficiency": perf.kv_efficiency,
            "idle_fixed_ms": perf.idle_fixed_ms,
            "idle_per_sequence_ms": perf.idle_per_sequence_ms,
            "mps_concurrency_gain": perf.mps_concurrency_gain,
            "context_tokens": perf.context_tokens,
            "used_gpu_utilization": perf.used_utilization,
            "equation": perf.describe(),
        },
        "notes": notes + ([chosen.note] if chosen.note else []),
    }


def _brief(p: Prediction) -> dict[str, Any]:
    return {"max_num_seqs": p.batch, "total_tokens_per_s": p.total_tokens_per_s, "itl_mean_ms": p.itl_mean_ms}


def _gain(p: Prediction, reference: Prediction) -> float:
    return p.total_tokens_per_s / reference.total_tokens_per_s - 1.0


def _loo_rows(results: list[LeaveOneOut]) -> list[dict[str, Any]]:
    return [
        {
            "point": r.label,
            "fitted": r.fitted,
            "measured_total_tokens_per_s": r.measured_total_tokens_per_s,
            "predicted_total_tokens_per_s": r.predicted_total_tokens_per_s,
            "total_error": r.total_error,
            "measured_itl_ms": r.measured_itl_ms,
            "predicted_itl_ms": r.predicted_itl_ms,
            "itl_error": r.itl_error,
            "measured_gain": r.measured_gain,
            "predicted_gain": r.predicted_gain,
            "gain_error": r.gain_error,
            "predicted_total_from_batch": r.predicted_total_from_batch,
            "total_error_from_batch": r.total_error_from_batch,
            "predicted_itl_from_batch": r.predicted_itl_from_batch,
            "itl_error_from_batch": r.itl_error_from_batch,
        }
        for r in results
    ]


def _summary(results: list[LeaveOneOut]) -> dict[str, float | None]:
    totals = [abs(r.total_error) for r in results]
    itls = [abs(e) for r in results if (e := r.itl_error) is not None]
    gains = [abs(e) for r in results if (e := r.gain_error) is not None]
    from_batch = [abs(e) for r in results if (e := r.total_error_from_batch) is not None]
    return {
        "mean_abs_total_error": sum(totals) / len(totals) if totals else None,
        "max_abs_total_error": max(totals, default=None),
        "mean_abs_itl_error": sum(itls) / len(itls) if itls else None,
        "max_abs_itl_error": max(itls, default=None),
        "max_abs_gain_error": max(gains, default=None),
        "max_abs_total_error_from_batch": max(from_batch, default=None),
    }


def _leave_one_out(profile: Profile, args: argparse.Namespace) -> dict[str, Any]:
    fit = perfmodel_validation.leave_one_out(profile)
    out: dict[str, Any] = {"profile": _loo_rows(fit), "profile_summary": _summary(fit)}
    try:
        points = load_replication_points(args.paper_data)
        calibration = perfmodel.calibrate(load_paper_profile(CALIBRATION_MODEL, None, args.paper_data))
    except AdvisorError as err:
        out["mps_calibration"] = None
        out["mps_calibration_note"] = f"MPS calibration not checked: {err}"
        return out
    mps = perfmodel_validation.mps_leave_one_out(calibration, points)
    out["mps_calibration"] = _loo_rows(mps)
    out["mps_calibration_summary"] = _summary([r for r in mps if r.fitted])
    out["mps_concurrency_gain_refit"] = perfmodel_validation.fit_mps_concurrency_gain(calibration, points)
    return out


# Human output ---------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def print_human(result: dict[str, Any], file: TextIO | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = 120
    where = f"{result['mig_profile']} slices of " if result["mig_profile"] else ""
    title = (
        f"{result['model']}: {result['replicas']} x --max-num-seqs {result['max_num_seqs']} "
        f"({result['mode']}) on {where}{result['gpu']}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("configuration")
    table.add_column("batch", justify="right")
    table.add_column("total tokens/s", justify="right")
    table.add_column("mean ITL ms", justify="right")
    table.add_column("gain of the prediction", justify="right")
    table.add_row(
        f"predicted: {result['replicas']} x {result['mode']}",
        str(result["max_num_seqs"]),
        f"{result['total_tokens_per_s']:,.0f}",
        f"{result['itl_mean_ms']:.2f}",
        "",
    )
    for label, key, gain in (
        ("one instance, same batch", "single", "gain_vs_single"),
        ("one instance, best batch", "best_single", "gain_vs_best_single"),
        ("one instance, vLLM defaults", "default_baseline", "gain_vs_default"),
    ):
        ref = result[key]
        table.add_row(
            label,
            str(ref["max_num_seqs"]),
            f"{ref['total_tokens_per_s']:,.0f}",
            f"{ref['itl_mean_ms']:.2f}",
            _pct(result[gain]),
        )
    console.print(table)
    memory = result["memory"]
    lines = [
        f"per replica: {result['running_per_replica']:.1f} running sequences, "
        f"{result['tokens_per_s_per_replica']:,.0f} tokens/s; GPU busy {result['gpu_busy_fraction']:.0%}",
        f"memory: {memory['per_replica_bytes'] / GIB:.2f} GiB per replica, {memory['replicas_fit']} fit",
        f"model: {result['model_terms']['equation']}",
    ]
    if result["measured_single_total_tokens_per_s"]:
        lines.append(
            "measured one instance at this batch: "
            f"{result['measured_single_total_tokens_per_s']:,.0f} tokens/s"
        )
    lines += [f"note: {n}" for n in result["notes"]]
    for line in lines:
        console.print(line.replace("[", "\\["), soft_wrap=True)
    loo = result.get("leave_one_out")
    if loo:
        _print_loo(console, "Leave-one-out on the profile's points", loo["profile"])
        if loo.get("mps_calibration"):
            _print_loo(
                console,
                f"MPS calibration ({REPLICATION_CSV}, {CALIBRATION_MODEL}); kappa refit = "
                f"{loo['mps_concurrency_gain_refit']:.4f}",
                loo["mps_calibration"],
            )
        elif loo.get("mps_calibration_note"):
            console.print(loo["mps_calibration_note"].replace("[", "\\["), soft_wrap=True)


def _print_loo(console: Any, title: str, rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    from_batch = any(r["total_error_from_batch"] is not None for r in rows)
    gains = any(r["gain_error"] is not None for r in rows)
    columns = ["point", "tokens/s", "predicted", "error"] + (["from B"] if from_batch else [])
    columns += ["ITL ms", "predicted", "error"] + (["gain", "predicted", "error"] if gains else [])
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in columns:
        table.add_column(name, justify="left" if name == "point" else "right", no_wrap=True)
    for r in rows:
        cells = [
            r["point"] + ("" if r["fitted"] else " (hold-out)"),
            f"{r['measured_total_tokens_per_s']:,.0f}",
            f"{r['predicted_total_tokens_per_s']:,.0f}",
            _pct(r["total_error"]),
        ]
        if from_batch:
            cells.append(_pct(r["total_error_from_batch"]))
        cells += [
            f"{r['measured_itl_ms']:.2f}" if r["measured_itl_ms"] else "-",
            f"{r['predicted_itl_ms']:.2f}",
            _pct(r["itl_error"]),
        ]
        if gains:
            cells += [
                f"{r['measured_gain']:.3f}" if r["measured_gain"] else "",
                f"{r['predicted_gain']:.3f}" if r["predicted_gain"] else "",
                _pct(r["gain_error"]) if r["gain_error"] is not None else "",
            ]
        table.add_row(*cells)
    console.print(table)
