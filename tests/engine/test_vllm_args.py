"""Every vLLM command line llmpack renders, checked by vLLM's own argument parser (0.32 CPU build).

The command lines are gathered here through the operator's own code paths, nothing copied:
- each LLMDeployment in examples/ and one spec per sharing mode (exclusive, MPS through DRA, MPS
  through the device plugin, MIG), on the testbed's fake cluster (hack/testbed): the profiling
  Job's container (render_profiling) whose `llmpack profile` arguments the profiler's own parser
  reads, then its `vllm serve` and `vllm bench serve` (profiler/vllm.py serve_command and
  bench_command, called with what VllmBackend would pass them); a simulated profile of the same
  request; the reconciler's advise and plan steps; render_serving; the command + args of every
  container that runs vLLM;
- `llmpack launch`'s replica commands (launcher/command.py replica_commands) for typical uses.

hack/engine/check_vllm_args.py then parses all of them in one engine process (vLLM's parser takes
~10 s to import) and reports per command line: unknown or removed flags, invalid values,
abbreviations and other spellings that only work because argparse or vLLM rewrites them, and
what vLLM understood, which must be what llmpack meant (the recommendation in the status, the
ports the containers declare, the profiling request).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import engine
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.controller.reconciler import OperatorConfig
from llmpack.hardware.cluster import ClusterFacts
from llmpack.launcher import cli as launch_cli
from llmpack.launcher.command import replica_commands
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context
from llmpack.planner.refusal import Refused
from llmpack.profiler import cli as profile_cli
from llmpack.profiler import vllm as profiler_vllm
from llmpack.profiler.facts import flag_value
from llmpack.render import render_profiling, render_serving
from llmpack.render.plan import OwnerRef

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "hack" / "engine" / "check_vllm_args.py"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
NAMESPACE = "default"
CHECK_TIMEOUT_S = 300

sys.path.insert(0, str(ROOT / "hack" / "testbed"))
import testbed  # noqa: E402

# One spec per sharing mode, beyond the examples: the flags a user can add (revision, dtype,
# extraArgs, a token) ride along, so their rendering is parsed too.
BASE_SPEC: dict[str, Any] = {
    "model": {
        "name": "facebook/opt-1.3b",
        "revision": "main",
        "dtype": "float16",
        "hfTokenSecretRef": {"name": "hf-token"},
    },
    "workload": {"promptTokens": 256, "outputTokens": 256},
    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 1},
    "serving": {"extraArgs": ["--enable-log-requests", "--seed", "1", "--no-enable-prefix-caching"]},
}
MODE_SPECS: dict[str, dict[str, Any]] = {
    "exclusive": {"sharing": {"mode": "exclusive"}},
    "mps-dra": {"sharing": {"mode": "mps", "mpsProvider": "dra", "maxReplicasPerGPU": 4}},
    # the testbed's device plugin splits an H100 4 ways (20 GiB a client): a smaller batch fits
    "mps-device-plugin": {
        "sharing": {"mode": "mps", "mpsProvider": "devicePlugin", "maxReplicasPerGPU": 4},
        "advisor": {"maxNumSeqs": 32},
    },
    "mig": {"sharing": {"mode": "mig"}},
}
# Flags of serving.extraArgs that constrain llmpack's own (reports kept in
# ../shared/cases/memory-contract/ 11): the plan must render what vLLM's engine config accepts.
FLAG_SPECS: dict[str, dict[str, Any]] = {
    # a token budget below the advisor's B_opt: --max-num-seqs stays within it
    "batched-tokens-below-b-opt": {
        "sharing": {"mode": "mps", "mpsProvider": "dra"},
        "serving": {"extraArgs": ["--max-num-batched-tokens", "128"]},
    },
    # without chunked prefill the budget bounds --max-model-len too (1k: vLLM reads 1,000)
    "no-chunked-prefill": {
        "sharing": {"mode": "exclusive"},
        "serving": {"extraArgs": ["--max-num-batched-tokens=1k", "--no-enable-chunked-prefill"]},
    },
    # a replica over 2 GPUs (exclusive only): --kv-cache-memory-bytes is each worker's
    "tensor-parallel": {
        "sharing": {"mode": "exclusive"},
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 4},
        "serving": {"extraArgs": ["-tp", "2"]},
    },
}
# The plan each mode spec must end in: (mode, MPS provider)
MODE_PLANS = {
    "exclusive": ("exclusive", None),
    "mps-dra": ("mps", "dra"),
    "mps-device-plugin": ("mps", "devicePlugin"),
    "mig": ("mig", None),
}
# Values for keyword-only parameters of serve_command / bench_command that default to "leave the
# flag out" (the profiler passes them only in some runs), so that their flags are parsed too.
OPTIONAL_VALUE_BY_TYPE = {"int": 1 << 30, "float": 0.5, "bool": True}


@dataclass
class Command:
    """One vLLM command line, where it came from, and what vLLM must understand from it."""

    name: str
    argv: list[str]  # starting at `vllm`
    expect: dict[str, Any] = field(default_factory=dict)  # vLLM dest -> value
    sources: list[str] = field(default_factory=list)


def vllm_argv(argv: list[str]) -> list[str]:
    """argv from the vllm subcommand on: what the checker reads."""
    assert Path(argv[0]).name == "vllm", f"not a vllm command line: {argv}"
    return list(argv[1:])


# -- the cluster and the operator's planning path ----------------------------------------------------


def fake_cluster() -> ClusterFacts:
    """What the operator knows of the testbed's fake nodes, fed as its watch handlers feed it."""
    return ClusterFacts.from_objects(testbed.default_cluster_objects())


def profiler_args(container_args: list[str], backend: str) -> argparse.Namespace:
    """The profiling container's `llmpack profile` arguments, read by the profiler's own parser,
    with another backend."""
    args = list(container_args)
    args[args.index("--backend") + 1] = backend
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    return parser.parse_args(args)


def _optional_kwargs(function: Callable[..., Any], passed: set[str]) -> dict[str, Any]:
    """A value for each keyword-only parameter that defaults to leaving its flag out."""
    extra = {}
    for name, param in inspect.signature(function).parameters.items():
        if param.kind is not param.KEYWORD_ONLY or name in passed or param.default not in (None, False):
            continue
        kind = next((k for k in OPTIONAL_VALUE_BY_TYPE if k in str(param.annotation).split(" | ")), None)
        if kind is None:
            raise AssertionError(
                f"{function.__name__}({name}: {param.annotation}) is new to this test: give it a value "
                "here so that its flag is parsed by vLLM too"
            )
        extra[name] = OPTIONAL_VALUE_BY_TYPE[kind]
    return extra


def profiler_container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c for c in job["spec"]["template"]["spec"]["containers"] if c["command"] == ["llmpack", "profile"]
    ]
    return container


def profiling_commands(where: str, job: dict[str, Any]) -> list[Command]:
    """The `vllm serve` and `vllm bench serve` the profiling Job runs (the vllm backend), built
    as VllmBackend builds them from the container's arguments, plus the same with every optional
    keyword of serve_command / bench_command set."""
    args = profiler_args(profiler_container(job)["args"], "vllm")
    request = profile_cli.profile_request(args)
    candidates = profile_cli.parse_candidates(args.candidates) or list(
        profile_cli.DEFAULT_CANDIDATE_BATCH_SIZES
    )
    settings = profiler_vllm.VllmSettings(
        executable=args.vllm, port=args.port, seed=args.seed, workdir=Path("/tmp/llmpack-args-check")
    )
    base_url = f"http://{settings.host}:{settings.port}"
    # the backend's own command line: batch cap, context, the KV pool it sizes, the spec's engine flags
    backend = profiler_vllm.VllmBackend(request, candidates, settings)
    serve_expect = {
        "model_tag": request.model,
        "max_num_seqs": max(candidates),
        "max_model_len": request.max_model_len,
        "kv_cache_memory_bytes": backend.kv_cache_memory_bytes,
        "dtype": request.dtype,
        "host": settings.host,
        "port": settings.port,
        # the spec's own --seed (its serving.extraArgs reach profiling) replaces the profiler's
        "seed": int(flag_value(request.engine_args, "--seed") or settings.seed),
    }
    if request.revision:
        serve_expect["revision"] = request.revision
    commands = [Command(f"{where}/profiling/vllm-serve", backend.serve_command, serve_expect)]
    for batch in sorted({min(candidates), max(candidates)}):
        bench_kwargs = {
            "batch": batch,
            "prompt_tokens": request.prompt_tokens,
            "output_tokens": request.output_tokens,
            "result_dir": "/tmp/llmpack-profile",
            "result_filename": f"bench-{batch}.json",
            "base_url": base_url,
            "num_prompts": None,  # the profiler's own count, num_prompts_for(batch)
            "seed": settings.seed,
            "executable": settings.executable,
        }
        bench_expect = {
            "model": request.model,
            "base_url": base_url,
            "max_concurrency": batch,
            "num_prompts": profiler_vllm.num_prompts_for(batch),
            "random_input_len": request.prompt_tokens,
            "random_output_len": request.output_tokens,
            "dataset_name": "random",
            "ignore_eos": True,
            "save_result": True,
            "result_dir": "/tmp/llmpack-profile",
            "result_filename": f"bench-{batch}.json",
            "seed": settings.seed,
        }
        commands.append(
            Command(
                f"{where}/profiling/vllm-bench-serve-B{batch}",
                profiler_vllm.bench_command(request.model, **bench_kwargs),
                bench_expect,
            )
        )
        optional = _optional_kwargs(profiler_vllm.bench_command, set(bench_kwargs))
        if optional:
            commands.append(
                Command(
                    f"{where}/profiling/vllm-bench-serve-B{batch}+{'+'.join(optional)}",
                    profiler_vllm.bench_command(request.model, **bench_kwargs, **optional),
                    {**bench_expect, **optional},
                )
            )
    return commands


def simulated_profile(job: dict[str, Any]):
    """The profile the Job would publish, measured by the simulated backend from the same args."""
    args = profiler_args(profiler_container(job)["args"], "simulated")
    candidates = profile_cli.parse_candidates(args.candidates)
    backend = profile_cli.make_backend(args, candidates)
    candidates = candidates or backend.default_candidates() or list(profile_cli.DEFAULT_CANDIDATE_BATCH_SIZES)
    profile, _ = profile_cli.profile_with(backend, candidates, args.sweep)
    return profile


@dataclass
class Rendered:
    mode: str
    provider: str | None
    commands: list[Command]


def render_deployment(where: str, name: str, spec_data: dict[str, Any]) -> Rendered:
    """One LLMDeployment through the operator's path: profiling Job, profile, advice, plan,
    serving objects; the vLLM command lines of all of them."""
    config, cluster = OperatorConfig(), fake_cluster()
    spec = LLMDeploymentSpec.model_validate(spec_data)
    owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name=name, uid=f"uid-{name}")
    context = Context(name, NAMESPACE, owner, config.profiler_image, config.serving_image)
    jobs = [o for o in render_profiling(planner.profiling(spec, cluster, context).plan) if o["kind"] == "Job"]
    (job,) = jobs
    commands = profiling_commands(where, job)
    profile = simulated_profile(job)
    decision = planner.serving(spec, profile, cluster, context)  # the operator's own decision
    assert not isinstance(decision, Refused), f"{where}: {decision.reason}: {decision.message}"
    plan, status = decision.plan, decision.status
    meant = {
        "max_num_seqs": status.max_num_seqs,
        "kv_cache_memory_bytes": status.kv_cache_bytes,
        "gpu_memory_utilization": round(status.gpu_memory_utilization, 3),
        "max_model_len": status.max_model_len,
        "model_tag": spec.model.name,
    }
    if spec.model.revision:
        meant["revision"] = spec.model.revision
    for obj in render_serving(plan):
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            commands += container_commands(f"{where}/serving-{plan.mode}", container, meant)
    return Rendered(plan.mode, plan.mps_provider, commands)


def container_commands(where: str, container: dict[str, Any], meant: dict[str, Any]) -> list[Command]:
    """The vLLM command lines a serving container runs: its own command + args when it is vLLM,
    the replicas an `llmpack launch` starts, none for a router only."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv and Path(argv[0]).name == "vllm":
        return [Command(f"{where}/{container['name']}", argv, {**meant, **probed_address(container)})]
    if argv[:2] == ["llmpack", "launch"]:
        return launched(f"{where}/{container['name']}", argv[2:], meant)
    raise AssertionError(
        f"{where}: container {container['name']} runs {argv[:2]}, neither vllm nor llmpack launch"
    )


def probed_address(container: dict[str, Any]) -> dict[str, Any]:
    """Where the kubelet's startup probe looks for the container's vLLM: the port of an HTTP probe
    (any address), or the host and port of the URL an in-container probe opens (a replica bound to
    the loopback address, with no containerPort)."""
    probe = container["startupProbe"]
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        assert port in [p["containerPort"] for p in container["ports"]], f"{container['name']}: probes {port}"
        return {"port": port}
    url = urlsplit(probe["exec"]["command"][-1])
    assert "ports" not in container, f"{container['name']}: probed inside the container yet exposes a port"
    return {"host": url.hostname, "port": url.port}


def launched(where: str, launch_args: list[str], meant: dict[str, Any], per_replica=None) -> list[Command]:
    """The replicas `llmpack launch LAUNCH_ARGS` starts, read by the launcher's own parser
    (none for --router-only); per_replica: more of what replica i must understand."""
    parser = argparse.ArgumentParser()
    launch_cli.add_arguments(parser)
    args = parser.parse_args(launch_args)
    if args.router_only:
        return []
    replicas = replica_commands(
        model=args.model,
        command=args.command,
        replicas=args.replicas,
        replica_args=args.replica_args,
        first_port=args.first_port,
        replica_host=args.replica_host,
        router_port=args.router_port,
    )
    return [
        Command(
            f"{where}/replica-{r.index}",
            list(r.argv),
            {**meant, "host": r.host, "port": r.port, **(per_replica[r.index] if per_replica else {})},
        )
        for r in replicas
    ]


def launch_commands() -> list[Command]:
    """`llmpack launch` as its docstring shows it: flags after `--` with --model, per-replica
    flags, and a full command."""
    flags = [
        "--max-num-seqs",
        "96",
        "--kv-cache-memory-bytes",
        "4294967296",
        "--gpu-memory-utilization",
        "0.45",
    ]
    meant = {
        "model_tag": "facebook/opt-1.3b",
        "max_num_seqs": 96,
        "kv_cache_memory_bytes": 4294967296,
        "gpu_memory_utilization": 0.45,
    }
    model = ["--model", "facebook/opt-1.3b"]
    ports = ["--first-port", "8100", "--router-port", "8000"]
    return [
        *launched("llmpack-launch/flags", ["--replicas", "2", *ports, *model, "--", *flags], meant),
        *launched(
            "llmpack-launch/replica-args",
            [
                *ports,
                *model,
                "--replica-args=--seed 1 --max-model-len 1024",
                "--replica-args=--seed 2 --max-model-len 2k",
                "--",
                *flags,
            ],
            meant,
            [{"seed": 1, "max_model_len": 1024}, {"seed": 2, "max_model_len": 2000}],
        ),
        *launched(
            "llmpack-launch/full-command",
            [*ports, "--", "vllm", "serve", "facebook/opt-1.3b", *flags],
            meant,
        ),
    ]


# -- gathering ---------------------------------------------------------------------------------------


@dataclass
class Gathered:
    commands: list[Command]  # deduplicated by argv
    plans: dict[str, tuple[str, str | None]]  # where -> (mode, provider)


def gather() -> Gathered:
    found: list[Command] = []
    plans = {}
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        where = f"examples/{path.name}"
        rendered = render_deployment(where, body["metadata"]["name"], body["spec"])
        plans[where] = (rendered.mode, rendered.provider)
        found += rendered.commands
    for mode, overrides in MODE_SPECS.items():
        where = f"mode-{mode}"
        rendered = render_deployment(where, f"opt-{mode}", {**BASE_SPEC, **overrides})
        plans[where] = (rendered.mode, rendered.provider)
        found += rendered.commands
    for case, overrides in FLAG_SPECS.items():
        where = f"flags-{case}"
        rendered = render_deployment(where, f"opt-{case}", {**BASE_SPEC, **overrides})
        plans[where] = (rendered.mode, rendered.provider)
        found += rendered.commands
    found += launch_commands()
    unique: dict[tuple[str, ...], Command] = {}
    for command in found:
        first = unique.setdefault(tuple(command.argv), command)
        first.sources.append(command.name)
        assert first.expect == command.expect or first is command, (first.name, command.name)
    return Gathered(list(unique.values()), plans)


GATHERED = gather()
RENDERED = {c.name: c for c in GATHERED.commands}

# Mistakes the checker must catch, each with the text its error must contain.
NEGATIVE = {
    "abbreviation": (["vllm", "serve", "m", "--kv-cache-memory", "123"], "--kv-cache-memory-bytes"),
    "abbreviation-with-equals": (["vllm", "serve", "m", "--max-num-seq=4"], "--max-num-seqs"),
    "underscore-spelling": (["vllm", "serve", "m", "--max_num_seqs", "4"], "--max_num_seqs"),
    "removed-swap-space": (["vllm", "serve", "m", "--swap-space", "4"], "--swap-space"),
    "removed-disable-log-requests": (
        ["vllm", "serve", "m", "--disable-log-requests"],
        "--disable-log-requests",
    ),
    "invalid-int": (["vllm", "serve", "m", "--max-num-seqs", "eight"], "--max-num-seqs"),
    "invalid-choice": (["vllm", "serve", "m", "--dtype", "float8"], "--dtype"),
    "utilization-above-one": (
        ["vllm", "serve", "m", "--gpu-memory-utilization", "1.5"],
        "gpu_memory_utilization",
    ),
    "bench-abbreviation": (
        ["vllm", "bench", "serve", "--model", "m", "--max-conc", "4"],
        "--max-concurrency",
    ),
    "bench-unknown": (["vllm", "bench", "serve", "--model", "m", "--max-num-seqs", "4"], "--max-num-seqs"),
    "no-subcommand": (["vllm", "bench"], "names no vllm subcommand"),
    # the engine config vLLM builds before loading (flags that constrain each other)
    "batched-tokens-below-max-num-seqs": (
        ["vllm", "serve", "m", "--max-num-seqs", "512", "--max-num-batched-tokens", "128"],
        "max_num_batched_tokens (128) must be greater than or equal to max_num_seqs (512)",
    ),
    "no-chunked-prefill-context-above-budget": (
        [
            *("vllm", "serve", "m", "--max-model-len", "2048"),
            "--max-num-batched-tokens",
            "1024",
            "--no-enable-chunked-prefill",
        ],
        "max_num_batched_tokens (1024) is smaller than max_model_len (2048)",
    ),
}


@pytest.fixture(scope="module")
def verdicts(vllm_python: Path) -> dict[str, Any]:
    """All command lines, rendered and negative, through the checker in one engine process."""
    stand_in = str(engine.tiny_models()["llama-gqa"])  # the engine config reads a config.json
    requests = [
        {"name": c.name, "argv": vllm_argv(c.argv), "config_model": stand_in} for c in GATHERED.commands
    ]
    requests += [
        {"name": f"negative/{n}", "argv": vllm_argv(argv), "config_model": stand_in}
        for n, (argv, _) in NEGATIVE.items()
    ]
    done = subprocess.run(
        [str(vllm_python), str(CHECKER)],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=engine.engine_env(),
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"the checker failed ({done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    assert [r["name"] for r in report["results"]] == [r["name"] for r in requests]
    return {"version": report["vllm_version"], **{r["name"]: r for r in report["results"]}}


def describe(command: Command, verdict: dict[str, Any]) -> str:
    return (
        f"{command.name} (also: {', '.join(command.sources[1:]) or 'nowhere else'})\n"
        f"  {shlex.join(command.argv)}\n  vLLM {verdict.get('version', '')} says: "
        + "; ".join(verdict["errors"] + verdict["warnings"])
    )


@pytest.mark.parametrize("name", list(RENDERED))
def test_vllm_accepts_the_rendered_command_line_as_meant(name: str, verdicts: dict[str, Any]) -> None:
    command, verdict = RENDERED[name], verdicts[name]
    verdict["version"] = verdicts["version"]
    assert verdict["ok"] and not verdict["warnings"], describe(command, verdict)
    understood = {dest: verdict["values"].get(dest, "<not set>") for dest in command.expect}
    assert understood == command.expect, f"{describe(command, verdict)}\n  vLLM understood {understood}"


def test_every_source_of_command_lines_is_gathered() -> None:
    """Not vacuous: each example and each sharing mode renders vLLM command lines, and so do the
    profiling Job and `llmpack launch`."""
    assert {f"examples/{p.name}" for p in EXAMPLES} <= GATHERED.plans.keys() and EXAMPLES
    for mode, plan in MODE_PLANS.items():
        assert GATHERED.plans[f"mode-{mode}"] == plan
    sources = [s for c in GATHERED.commands for s in c.sources]
    for where in GATHERED.plans:
        assert any(s.startswith(f"{where}/serving-") for s in sources), where
        assert any(s.startswith(f"{where}/profiling/vllm-serve") for s in sources), where
        assert any(s.startswith(f"{where}/profiling/vllm-bench-serve") for s in sources), where
    assert any(s.startswith("mode-mps-dra/serving-mps/vllm-1") for s in sources)
    assert sum(s.startswith("llmpack-launch/") for s in sources) >= 5


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_the_checker_catches(case: str, verdicts: dict[str, Any]) -> None:
    _, needle = NEGATIVE[case]
    verdict = verdicts[f"negative/{case}"]
    assert not verdict["ok"], verdict
    assert any(needle in error for error in verdict["errors"]), verdict["errors"]


def test_the_checker_reports_what_an_abbreviation_became(verdicts: dict[str, Any]) -> None:
    """An abbreviation is an error even though vLLM would take it, and the values say how."""
    verdict = verdicts["negative/abbreviation"]
    assert verdict["values"]["kv_cache_memory_bytes"] == 123
