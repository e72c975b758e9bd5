"""`llmpack profile`: measure a model at several batch sizes and publish the Profile.

In the profiling Job (the operator renders these arguments):

    llmpack profile --backend vllm|simulated --model NAME --gpu PRODUCT --dtype DTYPE
        --max-model-len N --prompt-tokens N --output-tokens N --sweep adaptive|exhaustive
        --candidates 1,2,4,... --result-configmap NAME --profile-key KEY [--revision REV]
        [--num-layers N --num-kv-heads N --head-dim N --weight-bytes N] [--namespace NS]
        [--json] [--output FILE] [--termination-log PATH]

Replaying the paper's measurements (to check sweeps; prints what `llmpack advise --profile` reads):

    llmpack profile --backend paper --paper-model NAME [--output-len N] [--paper-data DIR]
        --sweep adaptive|exhaustive --json

Progress goes to stderr and, with --result-configmap, to the ConfigMap's `progress` key after
every point; the Profile goes to its `profile.json` key at the end. The termination message
(default /dev/termination-log, written only where it exists) gets one summary line, or the reason
of a failure; a failure exits non-zero.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from llmpack.advisor.architectures import PAPER_MODELS
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.loaders import ENV_PAPER_DATA
from llmpack.advisor.memory import profiling_max_model_len, unknown_context_for_profiling
from llmpack.advisor.model_config import ModelConfigError, model_shape
from llmpack.api.llmdeployment import DEFAULT_CANDIDATE_BATCH_SIZES
from llmpack.api.profile import KVLayoutFacts, Profile
from llmpack.errors import UserError
from llmpack.profiler.backend import Backend, BackendError
from llmpack.profiler.facts import ArchitectureOverride, ProfileRequest, model_context_limit
from llmpack.profiler.model_files import load_model_config
from llmpack.profiler.publish import (
    DEFAULT_TERMINATION_LOG,
    ConfigMapPublisher,
    PublishError,
    default_namespace,
    failure_line,
    progress_message,
    summary_line,
    write_termination_log,
)
from llmpack.profiler.sweep import SWEEP_MODES, Measurement, SweepResult, run_sweep

BACKENDS = ("vllm", "simulated", "paper")
VLLM_ASSUMED_CONTEXT = 2048  # vllm/config/model.py: a config naming no length
MAX_CANDIDATES = 64


class Terminated(BackendError):
    """SIGTERM: the Job's deadline passed or the Job was deleted."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(
        "stopped by SIGTERM before the sweep finished: profiling.timeoutSeconds passed or the Job was "
        "deleted; raise the timeout or measure fewer candidates"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, required=True, help="what measures the points")
    run = parser.add_argument_group("what to measure (vllm and simulated backends)")
    run.add_argument("--model", metavar="NAME", help="Hugging Face id or local path of the model")
    run.add_argument("--revision", metavar="REV", help="model revision (branch, tag or commit)")
    run.add_argument("--gpu", metavar="PRODUCT", help="the GPU's nvidia.com/gpu.product label value")
    run.add_argument("--dtype", default="auto", metavar="DTYPE", help="weight dtype (default auto)")
    run.add_argument(
        "--max-model-len",
        type=int,
        metavar="N",
        help="context length (default: the model's own limit, or what the largest candidate batch "
        "of the workload needs where that is less: the same rule as serving, see advisor/memory.py)",
    )
    run.add_argument("--prompt-tokens", type=int, metavar="N", help="prompt length of every request")
    run.add_argument("--output-tokens", type=int, metavar="N", help="output length of every request")
    run.add_argument(
        "--engine-args",
        default="",
        metavar="FLAGS",
        help="engine flags of the spec that change what is measured (e.g. --kv-cache-dtype fp8), "
        "shell-quoted in one argument: write --engine-args='--kv-cache-dtype fp8'",
    )
    arch = parser.add_argument_group("architecture, for models the built-in catalogue does not know")
    arch.add_argument("--num-layers", type=int, metavar="N")
    arch.add_argument("--num-kv-heads", type=int, metavar="N")
    arch.add_argument("--head-dim", type=int, metavar="N")
    arch.add_argument("--weight-bytes", type=int, metavar="N", help="bytes of the weights as served")
    arch.add_argument("--sliding-window", type=int, metavar="N", help="tokens a sliding-window layer keeps")
    arch.add_argument("--sliding-window-layers", type=int, metavar="N", help="layers with the sliding window")
    arch.add_argument(
        "--attention-chunk-size", type=int, metavar="N", help="chunk of chunked local attention"
    )
    arch.add_argument(
        "--chunked-attention-layers", type=int, metavar="N", help="layers with chunked attention"
    )
    arch.add_argument("--state-layers", type=int, metavar="N", help="linear-attention or Mamba layers")
    arch.add_argument(
        "--state-bytes-per-layer", type=int, metavar="N", help="one such layer's state per request"
    )
    sweep = parser.add_argument_group("which batch sizes")
    sweep.add_argument(
        "--sweep",
        choices=SWEEP_MODES,
        default="adaptive",
        help="adaptive (default): only the batch sizes the advisor's choice depends on; "
        "exhaustive: every candidate",
    )
    sweep.add_argument(
        "--candidates",
        metavar="B,B,...",
        help="candidate values of --max-num-seqs (default: "
        f"{','.join(map(str, DEFAULT_CANDIDATE_BATCH_SIZES))}; paper: the batch sizes the paper ran)",
    )
    paper = parser.add_argument_group("paper backend")
    paper.add_argument("--paper-model", metavar="NAME", help=f"one of {', '.join(PAPER_MODELS)}")
    paper.add_argument(
        "--output-len",
        type=int,
        metavar="N",
        help="the `advisor` runs at N output tokens (130, 260, 390, 520); without it the ShareGPT runs",
    )
    paper.add_argument(
        "--paper-data",
        metavar="DIR",
        help=f"folder holding profiles.csv (default: ${ENV_PAPER_DATA}, else ../shared/paper-data)",
    )
    out = parser.add_argument_group("where the result goes")
    out.add_argument("--json", action="store_true", help="print the Profile JSON on stdout")
    out.add_argument("--output", metavar="FILE", help="write the Profile JSON to FILE")
    out.add_argument(
        "--result-configmap", metavar="NAME", help="patch progress and the Profile into this ConfigMap"
    )
    out.add_argument(
        "--profile-key", metavar="KEY", help="the cache key the operator filed this profile under"
    )
    out.add_argument("--namespace", metavar="NS", help="namespace of the ConfigMap (default $POD_NAMESPACE)")
    out.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, else $KUBECONFIG)"
    )
    out.add_argument(
        "--termination-log",
        metavar="PATH",
        help=f"where the summary or the failure goes (default {DEFAULT_TERMINATION_LOG}, if it exists)",
    )
    engine = parser.add_argument_group("engine (vllm backend) and simulation")
    engine.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the simulation")
    engine.add_argument("--vllm", default="vllm", metavar="PATH", help="the vllm executable")
    engine.add_argument("--port", type=int, default=8000, help="port of the vLLM server (loopback)")
    engine.add_argument("--startup-timeout", type=float, default=1800.0, metavar="S")
    engine.add_argument("--point-timeout", type=float, default=3600.0, metavar="S")
    engine.add_argument("--nvml-device", type=int, default=0, metavar="INDEX", help="NVML index of the GPU")
    engine.add_argument("--workdir", metavar="DIR", help="keep server logs and benchmark results here")
    engine.add_argument(
        "--image", metavar="IMAGE", help="the engine's container image, recorded in the Profile"
    )


# -- reading the arguments ----------------------------------------------------------------------


def parse_candidates(text: str | None) -> list[int] | None:
    if text is None:
        return None
    values = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"--candidates: {part!r} is not a whole number; give e.g. 1,2,4,8") from None
        if value < 1:
            raise UserError(f"--candidates: batch sizes must be at least 1, got {value}")
        values.append(value)
    if not values:
        raise UserError("--candidates is empty; give e.g. 1,2,4,8")
    batches = sorted(set(values))
    if len(batches) > MAX_CANDIDATES:
        raise UserError(f"--candidates: at most {MAX_CANDIDATES} batch sizes, got {len(batches)}")
    return batches


def profile_request(args: argparse.Namespace) -> ProfileRequest:
    missing = [flag for flag, value in (("--model", args.model), ("--gpu", args.gpu)) if not value]
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--output-tokens", args.output_tokens)):
        if value is None:
            missing.append(flag)
    if missing:
        raise UserError(f"the {args.backend} backend needs {', '.join(missing)}")
    try:
        engine_args = shlex.split(args.engine_args or "")
    except ValueError as err:
        raise UserError(f"--engine-args: {err}") from None
    config = None
    if args.backend == "vllm":
        try:
            config = load_model_config(args.model, args.revision)
        except ModelConfigError as err:
            raise UserError(f"--model {args.model}: {err}") from None
    max_model_len = args.max_model_len
    if max_model_len is None:
        try:
            shape = model_shape(config, read_layout=False) if config is not None else None
        except ModelConfigError as err:
            raise UserError(f"--model {args.model}: {err}") from None
        limit, _ = model_context_limit(args.model, shape)
        if limit is None and shape is not None:
            limit = VLLM_ASSUMED_CONTEXT  # what vLLM assumes of a config that names no length
        if limit is None:
            # Nothing says how long a context the model allows (no config.json here, not in the
            # catalogue, no architecture.maxPositionEmbeddings): profile the workload's own length,
            # which the spec's requests need anyway; the advice then keeps the context to it.
            max_model_len = unknown_context_for_profiling(args.prompt_tokens, args.output_tokens)
            logging.getLogger(__name__).warning(
                "%s: no config.json and no known context limit; profiling with --max-model-len %d "
                "(the workload rounded up to whole 256-token steps, as the operator keys it)",
                args.model,
                max_model_len,
            )
            limit = max_model_len
        largest = max(parse_candidates(args.candidates) or DEFAULT_CANDIDATE_BATCH_SIZES)
        # The longest context the model allows that the run's pool (sized for the largest batch of
        # the workload) holds; a workload beyond the model's limit is refused by ProfileRequest.
        max_model_len = (
            profiling_max_model_len(limit, args.prompt_tokens, args.output_tokens, largest)
            if args.prompt_tokens + args.output_tokens <= limit
            else limit
        )
    return ProfileRequest(
        model=args.model,
        gpu_product=args.gpu,
        dtype=args.dtype,
        max_model_len=max_model_len,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        revision=args.revision,
        architecture=ArchitectureOverride(
            num_layers=args.num_layers,
            num_kv_heads=args.num_kv_heads,
            head_dim=args.head_dim,
            weight_bytes=args.weight_bytes,
            kv_layout=layout_override(args),
        ),
        config=config,
        engine_args=tuple(engine_args),
    )


def layout_override(args: argparse.Namespace) -> KVLayoutFacts | None:
    """The layout flags as one KVLayoutFacts; None when none is given. Raises UserError for a
    window without its layer count (or the reverse)."""
    values = {
        "sliding_window": args.sliding_window,
        "sliding_window_layers": args.sliding_window_layers or 0,
        "attention_chunk_size": args.attention_chunk_size,
        "chunked_attention_layers": args.chunked_attention_layers or 0,
        "state_layers": args.state_layers or 0,
        "state_bytes_per_layer": args.state_bytes_per_layer,
    }
    if not any(values.values()):
        return None
    try:
        return KVLayoutFacts.model_validate(values)
    except ValidationError as err:
        problem = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
        raise UserError(f"architecture layout flags: {problem.replace('_', '-')}") from None


def make_backend(args: argparse.Namespace, candidates: list[int] | None) -> Backend:
    if args.backend == "paper":
        from llmpack.profiler.paper import PaperBackend

        model = args.paper_model or args.model
        if not model:
            raise UserError(f"the paper backend needs --paper-model NAME ({', '.join(PAPER_MODELS)})")
        return PaperBackend(model, args.output_len, args.paper_data)
    if args.output_len is not None or args.paper_model or args.paper_data:
        raise UserError("--paper-model, --output-len and --paper-data belong to --backend paper")
    request = profile_request(args)
    if args.backend == "simulated":
        from llmpack.profiler.simulated import SimulatedBackend

        return SimulatedBackend(request, seed=args.seed)
    from llmpack.profiler.vllm import VllmBackend, VllmSettings

    settings = VllmSettings(
        executable=args.vllm,
        port=args.port,
        startup_timeout_s=args.startup_timeout,
        point_timeout_s=args.point_timeout,
        nvml_index=args.nvml_device,
        seed=args.seed,
        workdir=Path(args.workdir) if args.workdir else None,
        image=args.image,
    )
    return VllmBackend(request, candidates or DEFAULT_CANDIDATE_BATCH_SIZES, settings)


# -- running ------------------------------------------------------------------------------------


def profile_with(
    backend: Backend,
    candidates: list[int],
    mode: str,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[Profile, SweepResult]:
    """Start the backend, sweep, stop it, and build the Profile. Raises BackendError when no point
    could be measured."""

    def on_measured(measurement: Measurement, attempt: int, total: int) -> None:
        if on_progress is not None:
            on_progress(progress_message(measurement, attempt, total, mode))

    with backend:
        result = run_sweep(candidates, backend.measure, mode, on_measured=on_measured)  # type: ignore[arg-type]
    if not result.points:
        reasons = "; ".join(result.notes()[:5])
        raise BackendError(f"no batch size could be measured: {reasons}")
    return backend.profile(result.points, result.notes()), result


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    logging.basicConfig(level=logging.WARNING, format="llmpack profile: %(message)s", stream=stderr)
    publisher: ConfigMapPublisher | None = None

    def say(text: str) -> None:
        print(f"llmpack profile: {text}", file=stderr, flush=True)

    def fail(reason: str) -> None:
        write_termination_log(failure_line(reason), args.termination_log)
        if publisher is not None:
            publisher.progress(f"failed: {' '.join(reason.split())[:400]}")

    # SIGTERM becomes an exception, so the engine is stopped and the reason written on the way out
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        candidates = parse_candidates(args.candidates)
        if args.result_configmap:
            namespace = args.namespace or default_namespace()
            if not namespace:
                raise UserError("--result-configmap needs --namespace NS (or $POD_NAMESPACE)")
            publisher = ConfigMapPublisher(args.result_configmap, namespace, kubeconfig=args.kubeconfig)
        backend = make_backend(args, candidates)
        candidates = candidates or backend.default_candidates() or list(DEFAULT_CANDIDATE_BATCH_SIZES)
        mode = args.sweep
        say(f"{mode} sweep over {len(candidates)} batch sizes with the {backend.name} backend")

        def on_progress(text: str) -> None:
            say(text)
            if publisher is not None:
                publisher.progress(text)

        profile, result = profile_with(backend, candidates, mode, on_progress)
        profile = profile.model_copy(update={"key": args.profile_key, "created_at": datetime.now(UTC)})
        profile = Profile.model_validate(profile.model_dump())  # the contract, checked once more
        summary = summary_line(profile, failed=len(result.failures))
        if args.output:
            profile.dump(args.output)
        if args.json:
            print(profile.to_json(), file=stdout)
        elif not args.output:
            print(points_table(profile), file=stdout)
        if publisher is not None:
            publisher.publish_profile(profile, summary)
        write_termination_log(summary, args.termination_log)
        say(summary)
        return 0
    except UserError as err:
        fail(str(err))
        raise
    except (BackendError, PublishError, AdvisorError) as err:
        fail(str(err))
        print(f"llmpack profile: {err}", file=stderr)
        return 1
    except Exception as err:  # a bug or an environment problem: still say why in the pod's status
        fail(f"{type(err).__name__}: {err}")
        traceback.print_exc(file=stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def points_table(profile: Profile) -> str:
    lines = [
        f"{profile.model.name} on {profile.gpu.product} ({profile.backend})",
        f"{'B':>6} {'tokens/s':>12} {'ITL ms':>8} {'p99 ITL':>8} {'KV peak':>8} {'preempt':>8}",
    ]
    for p in profile.points:
        itl = p.itl_or_tpot_mean_ms
        lines.append(
            f"{p.max_num_seqs:>6} {p.total_tokens_per_s:>12,.0f} "
            f"{'-' if itl is None else f'{itl:.2f}':>8} "
            f"{'-' if p.itl_p99_ms is None else f'{p.itl_p99_ms:.2f}':>8} "
            f"{'-' if p.kv_cache_usage_peak is None else f'{p.kv_cache_usage_peak:.0%}':>8} "
            f"{p.preemptions:>8}"
        )
    lines += [f"note: {note}" for note in profile.notes]
    return "\n".join(lines)
