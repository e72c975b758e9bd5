"""`llmpack plan`: the public dry run. What the operator would decide for an LLMDeployment, and the
objects it would apply, computed by the operator's own planner (planner/decide.py) and renderers.
It sits beside the layers, not in planner/, because `--simulate` runs the profiler in process.

    llmpack plan -f LLMDEPLOYMENT.yaml [--profile FILE | --simulate] [--cluster FILE.yaml]
                 [--tokens-per-second D] [-o yaml|json] [--profiler-image IMAGE]
                 [--serving-image IMAGE]

- Without a profile the operator would profile first: the plan is the profiling Job and its
  objects. `--profile FILE` takes a Profile JSON (`llmpack profile --output FILE`, or the
  `profile.json` key of a cached profile ConfigMap); `--simulate` measures one with the simulated
  backend from the profiling Job's own arguments, as `profiling.backend: simulated` would.
- `--cluster FILE.yaml`: the nodes, DeviceClasses and ResourceSlices the decision may use, as
  `kubectl get nodes,deviceclasses,resourceslices -o yaml` prints them (a v1 List). Without it,
  one node offering the spec's GPU whole, 8 of them, through the device plugin (GFD labels with
  the catalogue's reported memory) and the NVIDIA DRA driver; MPS shares of the device plugin and
  MIG slices need a --cluster that has them.
- `--tokens-per-second D`: how many GPUs serve D prompt+output tokens/s, from the predicted
  tokens/s per GPU at B_opt within the SLO (the capacity `kubectl get llmd -o wide` shows and the
  autoscaler's target is sized from): `decision.capacity.gpusFor`.
- Output: {"decision": ..., "objects": [...]}, where `decision` is what the status would say (the
  recommendation with its explanation, or the profiling Job). An unservable spec exits 1 with the
  message the status would carry; bad input (a file that is not an LLMDeployment) exits 2.
- `--pool POOL.yaml` with several `-f`: the GPUPool's members, each planned as the operator plans
  a member (the pool's GPUs in place of its own) from its own profile (`--simulate`), then placed
  together by the pool's pass (planner/pool_pass.py). Output: {"pool": the pool's status,
  "members": each one's decision, "objects": the pool's claims and every member's objects}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmpack.api.llmdeployment import API_VERSION, KIND, PROFILE_READY, LLMDeploymentSpec
from llmpack.api.profile import Profile, ProfileError
from llmpack.errors import UserError
from llmpack.hardware import UnknownGPUError, lookup_gpu
from llmpack.hardware.cluster import (
    DRA_GPU_DEVICE_CLASS,
    DRA_GPU_DRIVER,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    ClusterFacts,
    NodeFacts,
)
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context, ProfilingDecision
from llmpack.planner.refusal import Refused
from llmpack.price_args import add_price_arguments
from llmpack.render import render_profiling, render_serving
from llmpack.render.plan import OwnerRef

DEFAULT_PROFILER_IMAGE = "ghcr.io/llmpack/llmpack-profiler:0.1.0"
DEFAULT_SERVING_IMAGE = "ghcr.io/llmpack/llmpack-serving:0.1.0"
DEFAULT_GPUS = 8
DRY_RUN_UID = "00000000-0000-0000-0000-000000000000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        metavar="FILE",
        help="the LLMDeployment YAML (several with --pool)",
    )
    parser.add_argument("--pool", metavar="FILE", help="a GPUPool YAML whose members the -f files are")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", metavar="FILE", help="a Profile JSON to plan with")
    source.add_argument(
        "--simulate",
        action="store_true",
        help="plan with a simulated profile of the profiling Job's arguments",
    )
    parser.add_argument(
        "--cluster",
        metavar="FILE",
        help="nodes, DeviceClasses and ResourceSlices as a v1 List (kubectl get ... -o yaml)",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        metavar="D",
        help="also say how many GPUs serve D prompt+output tokens/s at the predicted capacity",
    )
    parser.add_argument(
        "--share-profiles-across-namespaces",
        action="store_true",
        help="key the profile as an operator that shares profiles across namespaces does (the chart's "
        "profiles.shareAcrossNamespaces); default: per namespace",
    )
    add_price_arguments(parser)
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--profiler-image", default=DEFAULT_PROFILER_IMAGE, metavar="IMAGE")
    parser.add_argument("--serving-image", default=DEFAULT_SERVING_IMAGE, metavar="IMAGE")


def dry_run_context(args: argparse.Namespace, *, name: str, namespace: str, uid: str | None) -> Context:
    """The Context the operator would decide in, from the command's flags (a made-up uid where the
    file has none)."""
    return Context(
        name=name,
        namespace=namespace,
        owner=OwnerRef(api_version=API_VERSION, kind=KIND, name=name, uid=uid or DRY_RUN_UID),
        profiler_image=args.profiler_image,
        serving_image=args.serving_image,
        profile_scope=None if args.share_profiles_across_namespaces else namespace,
        gpu_hour_prices=tuple(args.gpu_hour_price),
        currency=args.currency,
    )


def run(args: argparse.Namespace) -> int:
    if args.tokens_per_second is not None and not args.tokens_per_second > 0:
        raise UserError("--tokens-per-second must be a positive number of tokens/s")
    if args.pool:
        return run_pool(args)
    if len(args.filename) > 1:
        raise UserError("several -f files are the members of a GPUPool: give it with --pool FILE")
    body = read_llmdeployment(Path(args.filename[0]))
    spec = parse_spec(body)
    meta = body.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not name:
        raise UserError(f"{args.filename}: metadata.name is missing")
    context = dry_run_context(args, name=name, namespace=namespace, uid=meta.get("uid"))
    cluster = read_cluster(Path(args.cluster)) if args.cluster else default_cluster(spec)
    profile = read_profile(Path(args.profile)) if args.profile else None
    admitted = planner.admit(spec, cluster, context)  # as the operator: refusals before any Job
    if isinstance(admitted, Refused):
        print(f"llmpack plan: {admitted.reason}: {admitted.message}", file=sys.stderr)
        return 1
    if profile is None and args.simulate:
        simulated = simulate(planner.profiling(spec, cluster, context))
        if isinstance(simulated, Refused):
            print(f"llmpack plan: {simulated.reason}: {simulated.message}", file=sys.stderr)
            return 1
        profile = simulated
    decision = planner.decide(spec, profile, cluster, context)
    if isinstance(decision, ProfilingDecision) and decision.capacity_refusal:
        decision = decision.capacity_refusal
    capacity = None
    if args.tokens_per_second is not None and not isinstance(decision, Refused):
        capacity = capacity_for(decision, args.tokens_per_second)
    refused = next((r for r in (decision, capacity) if isinstance(r, Refused)), None)
    if refused is not None:
        print(f"llmpack plan: {refused.reason}: {refused.message}", file=sys.stderr)
        return 1
    assert not isinstance(decision, Refused) and not isinstance(capacity, Refused)  # for mypy
    print(render_output(decision, args.output, capacity, notes=profile.notes if profile else []))
    return 0


def capacity_for(
    decision: ProfilingDecision | planner.ServingDecision, tokens_per_s: float
) -> dict[str, Any] | Refused:
    if isinstance(decision, ProfilingDecision):
        return Refused(
            PROFILE_READY,
            "NotProfiled",
            "--tokens-per-second needs a profile: add --profile FILE or --simulate",
        )
    status = decision.status
    gpus = planner.gpus_for(tokens_per_s, status)
    if isinstance(gpus, Refused):
        return gpus
    return {
        "tokensPerSecondPerGPU": status.predicted_tokens_per_second_per_gpu,
        "concurrencyPerGPU": status.concurrency_per_gpu,
        "gpusFor": {"tokensPerSecond": tokens_per_s, "gpus": gpus},
    }


def read_llmdeployment(path: Path) -> dict[str, Any]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    found = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(found) != 1:
        raise UserError(f"{path} holds {len(found)} LLMDeployment objects; give a file with exactly one")
    return found[0]


def parse_spec(body: dict[str, Any]) -> LLMDeploymentSpec:
    try:
        return LLMDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UserError(
            f"invalid spec: {where}: {first.get('msg', '').removeprefix('Value error, ')}"
        ) from None


def read_cluster(path: Path) -> ClusterFacts:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    items = data.get("items") if isinstance(data, dict) and "items" in data else [data]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UserError(f"{path}: expected a v1 List of nodes, deviceclasses and resourceslices")
    return ClusterFacts.from_objects(items)


def default_cluster(spec: LLMDeploymentSpec) -> ClusterFacts:
    """One schedulable node offering the spec's GPU whole: 8 GPUs through the device plugin (GFD
    labels, with the catalogue's reported memory) and through the NVIDIA DRA driver. GPUs shared by
    the device plugin's MPS or cut into MIG slices are a cluster's choice: give them with --cluster."""
    labels = {**spec.gpu.node_selector, GPU_PRODUCT_LABEL: spec.gpu.product}
    with contextlib.suppress(UnknownGPUError):  # the planner refuses the product with the catalogue's list
        labels[GPU_MEMORY_LABEL] = str(lookup_gpu(spec.gpu.product).reported_memory_mib)
    node = NodeFacts("gpu-node", labels, {GPU_RESOURCE: str(DEFAULT_GPUS)})
    facts = ClusterFacts(nodes={node.name: node}, device_classes={DRA_GPU_DEVICE_CLASS})
    devices = [{"name": f"gpu-{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(DEFAULT_GPUS)]
    facts.publish_slice(
        "gpu-node", {"spec": {"driver": DRA_GPU_DRIVER, "nodeName": node.name, "devices": devices}}
    )
    return facts


def read_profile(path: Path) -> Profile:
    try:
        return Profile.from_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except ProfileError as err:
        raise UserError(f"{path}: {err}") from None


def simulate(profiling: ProfilingDecision) -> Profile | Refused:
    """What the profiling Job would publish with the simulated backend, from its own arguments; or
    what it would fail with, as the status would say (ProfilingFailed)."""
    from llmpack.profiler import cli as profile_cli

    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    job_args = list(profiling.plan.args)
    job_args[job_args.index("--backend") + 1] = "simulated"
    args = parser.parse_args(job_args)
    from llmpack.profiler.backend import BackendError

    candidates = profile_cli.parse_candidates(args.candidates) or []
    try:
        backend = profile_cli.make_backend(args, candidates)
        profile, _ = profile_cli.profile_with(backend, candidates, args.sweep)
    except BackendError as err:  # what the profiling Job would report, and fail with
        return Refused(PROFILE_READY, "ProfilingFailed", f"the profiling Job would fail: {err}")
    return profile


def run_pool(args: argparse.Namespace) -> int:
    """The placement of a GPUPool's members, as the operator's pool pass decides it."""
    from llmpack.api.gpupool import GPUPool
    from llmpack.planner.membership import (
        member_plan,
        member_recommendation,
        member_spec,
        pool_cluster,
        pool_request,
        pool_slots,
    )
    from llmpack.planner.pool_pass import MemberSeen, decide_pool

    if args.profile or not args.simulate:
        raise UserError("--pool plans each member from its own profile: give --simulate")
    pool_body = yaml.safe_load(Path(args.pool).read_text())
    try:
        pool = GPUPool.model_validate(pool_body)
    except ValidationError as err:
        raise UserError(f"{args.pool}: not a GPUPool: {err.errors()[0]['msg']}") from None
    pool_name = str(pool.metadata.get("name") or "")
    namespace = pool.metadata.get("namespace") or "default"
    pool_body.setdefault("metadata", {}).setdefault("uid", DRY_RUN_UID)
    decisions: dict[str, planner.ServingDecision] = {}
    seen = []
    for filename in args.filename:
        body = read_llmdeployment(Path(filename))
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise UserError(f"{filename}: metadata.name is missing")
        raw = member_spec(body.get("spec") or {}, pool_body, namespace=namespace)
        if (
            isinstance(raw, Refused)
            or (body.get("spec") or {}).get("gpuPoolRef", {}).get("name") != pool_name
        ):
            raise UserError(f"{filename}: spec.gpuPoolRef.name must name the GPUPool {pool_name}")
        spec = parse_spec({**body, "spec": raw})
        context = dry_run_context(args, name=name, namespace=namespace, uid=None)
        cluster = read_cluster(Path(args.cluster)) if args.cluster else default_cluster(spec)
        cluster = pool_cluster(cluster, pool_body)
        profile = simulate(planner.profiling(spec, cluster, context))
        decision = (
            profile if isinstance(profile, Refused) else planner.decide(spec, profile, cluster, context)
        )
        if isinstance(decision, (Refused, ProfilingDecision)):
            message = decision.message if isinstance(decision, Refused) else "not profiled"
            print(f"llmpack plan: {name}: {message}", file=sys.stderr)
            return 1
        assert isinstance(profile, Profile)
        decisions[name] = decision
        seen.append(MemberSeen(name=name, request=pool_request(decision), profile=profile))
    outcome = decide_pool(pool=pool, namespace=namespace, uid=DRY_RUN_UID, members=seen, claims={}, now="")
    placed = {**pool_body, "status": outcome.status.to_k8s()}
    objects = list(outcome.apply)
    members = {}
    for name, decision in decisions.items():
        placement = pool_slots(name, placed, revision=pool_request(decision).revision)
        shares = placement.shares
        members[name] = {
            "recommendation": member_recommendation(decision.status, name, placed).model_dump(
                by_alias=True, exclude_none=True, mode="json"
            ),
            "placed": placement.message
            or f"{sum(s.replicas for s in shares)} replicas on {len(shares)} GPUs",
        }
        plan = member_plan(decision.plan, placement)
        if plan.pool_slots != ():  # a member the pool placed nothing for has no pods
            objects += render_serving(plan)
    document = {"pool": outcome.status.to_k8s(), "members": members, "objects": objects}
    print(
        json.dumps(document, indent=2)
        if args.output == "json"
        else yaml.safe_dump(document, sort_keys=False, width=110)
    )
    return 0


def render_output(
    decision: ProfilingDecision | planner.ServingDecision,
    output: str,
    capacity: dict[str, Any] | None = None,
    *,
    notes: list[str] | None = None,
) -> str:
    if isinstance(decision, ProfilingDecision):
        summary: dict[str, Any] = {
            "phase": "Profiling",
            "profileKey": decision.key,
            "profilingJob": decision.plan.name,
        }
        objects = render_profiling(decision.plan)
    else:
        summary = {
            "phase": "Deploying",
            "recommendation": decision.status.model_dump(by_alias=True, exclude_none=True, mode="json"),
        }
        objects = render_serving(decision.plan)
        if capacity is not None:
            summary["capacity"] = capacity
        if notes:  # what the profile says of itself: e.g. the memory engine flags add, estimated
            summary["profileNotes"] = list(notes)
    document = {"decision": summary, "objects": objects}
    if output == "json":
        return json.dumps(document, indent=2)
    return yaml.safe_dump(document, sort_keys=False, width=110)
