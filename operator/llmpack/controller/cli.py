"""`llmpack operator`: run the operator against the cluster of the current kubeconfig."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re

from llmpack.errors import UserError
from llmpack.price_args import add_price_arguments
from llmpack.render.plan import DEFAULT_AUTOSCALING_METRIC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig file")
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get("LLMPACK_NAMESPACE", "llmpack-system"),
        help="namespace of the profile cache (default: $LLMPACK_NAMESPACE or llmpack-system)",
    )
    parser.add_argument("--profiler-image", default=os.environ.get("LLMPACK_PROFILER_IMAGE"))
    parser.add_argument("--serving-image", default=os.environ.get("LLMPACK_SERVING_IMAGE"))
    parser.add_argument("--workers", type=int, default=8, help="concurrent reconciles (default 8)")
    parser.add_argument(
        "--share-profiles-across-namespaces",
        action="store_true",
        help="let a profile measured for one namespace serve LLMDeployments of every namespace "
        "(default: each namespace's own; a tenant can write its profiling Job's result)",
    )
    parser.add_argument(
        "--auto-colocates-namespaces",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let sharing.mode auto choose MPS through the device plugin, which runs pods of different "
        "namespaces on one GPU under one MPS server (default on; --no-auto-colocates-namespaces keeps "
        "auto to modes that give each pod its own GPU or MIG slice)",
    )
    parser.add_argument(
        "--network-policy-from",
        type=network_peers,
        default=None,
        metavar="JSON",
        help="render a NetworkPolicy per LLMDeployment admitting only these peers (a JSON array of "
        "NetworkPolicyPeer; [] admits any source) to the serving port; default: none rendered",
    )
    parser.add_argument(
        "--inference-pool-endpoint-picker",
        type=endpoint_picker,
        default=None,
        metavar="SERVICE:PORT",
        help="the endpoint picker of an LLMDeployment's InferencePool (serving.inferencePool) whose "
        "spec names none: a Service in the LLMDeployment's namespace and its port; default: none "
        "(such a spec is refused, saying so)",
    )
    add_price_arguments(parser)
    parser.add_argument(
        "--autoscaling-metric",
        default=os.environ.get("LLMPACK_AUTOSCALING_METRIC", DEFAULT_AUTOSCALING_METRIC),
        metavar="NAME",
        help="per-pod custom metric (requests running + waiting) the HorizontalPodAutoscalers of "
        f"spec.autoscaling read (default {DEFAULT_AUTOSCALING_METRIC})",
    )
    parser.add_argument("--log-level", default=os.environ.get("LLMPACK_LOG_LEVEL", "INFO"))
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0: off")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    election = parser.add_argument_group(
        "leader election",
        "several replicas: one leads (a coordination.k8s.io/v1 Lease, client-go's semantics) and "
        "reconciles, the others stand by with warm caches; a leader that loses the lease exits",
    )
    election.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="take part in leader election before reconciling (default off; the Helm chart turns it on)",
    )
    election.add_argument(
        "--leader-elect-lease-name", default="llmpack-operator", help="the Lease (default llmpack-operator)"
    )
    election.add_argument(
        "--leader-elect-lease-namespace",
        default=None,
        help="namespace of the Lease (default: --operator-namespace)",
    )
    election.add_argument(
        "--leader-elect-identity",
        default=None,
        help="this candidate's holderIdentity (default: hostname_uuid, new at every start)",
    )
    election.add_argument(
        "--leader-elect-lease-duration",
        type=duration,
        default=15.0,
        help="how long standbys wait after the last renewal they saw before taking over (default 15s)",
    )
    election.add_argument(
        "--leader-elect-renew-deadline",
        type=duration,
        default=10.0,
        help="how long the leader keeps trying to renew before it stops leading (default 10s)",
    )
    election.add_argument(
        "--leader-elect-retry-period",
        type=duration,
        default=2.0,
        help="time between attempts to acquire or renew (default 2s)",
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """A Go-style duration (15s, 1m30s, 500ms) or plain seconds, in seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 15s, 1m30s or 500ms") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def network_peers(text: str) -> str:
    """A JSON array of NetworkPolicyPeer objects (podSelector, namespaceSelector, ipBlock), kept
    as canonical JSON text; the API server validates each peer when the policy is applied."""
    try:
        peers = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise argparse.ArgumentTypeError(
            'a JSON array of NetworkPolicyPeer objects, e.g. [{"namespaceSelector": {}}]'
        )
    return json.dumps(peers, sort_keys=True)


def endpoint_picker(text: str) -> str:
    """SERVICE:PORT, a DNS-1035 Service name and a port number, as given."""
    name, _, port = text.rpartition(":")
    if (
        not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name)
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SERVICE:PORT (a Service name such as epp and a port such as 9002)"
        )
    return f"{name}:{int(port)}"


def run(args: argparse.Namespace) -> int:
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise UserError(f"--log-level {args.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # kopf logs every handled watch event at INFO; our handlers only enqueue, so that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The API client first: it is what names a missing `kubernetes`.
    from llmpack.controller.client import KubeClient

    # The operator's modules, which need kopf as well.
    from llmpack.controller.operator import OperatorState  # isort: skip
    from llmpack.controller.operator import run as run_operator  # isort: skip
    from llmpack.controller.reconciler import OperatorConfig  # isort: skip

    images = {"profiler_image": args.profiler_image, "serving_image": args.serving_image}
    config = OperatorConfig(
        operator_namespace=args.operator_namespace,
        autoscaling_metric=args.autoscaling_metric,
        share_profiles=args.share_profiles_across_namespaces,
        auto_colocates_namespaces=args.auto_colocates_namespaces,
        network_policy_from=args.network_policy_from,
        endpoint_picker=args.inference_pool_endpoint_picker,
        gpu_hour_prices=tuple(args.gpu_hour_price),
        currency=args.currency,
        **{k: v for k, v in images.items() if v},
    )
    election = None
    client_class = KubeClient
    if args.leader_elect:
        from llmpack.runtime.leader import FencedKubeClient, LeaderElectionConfig, default_identity

        client_class = FencedKubeClient  # writes refused unless leading
        try:
            election = LeaderElectionConfig(
                lease_name=args.leader_elect_lease_name,
                lease_namespace=args.leader_elect_lease_namespace or args.operator_namespace,
                identity=args.leader_elect_identity or default_identity(),
                lease_duration=args.leader_elect_lease_duration,
                renew_deadline=args.leader_elect_renew_deadline,
                retry_period=args.leader_elect_retry_period,
            )
        except ValueError as err:
            raise UserError(f"leader election: {err}") from err
    try:
        kube = client_class.from_config(args.kubeconfig)
    except Exception as err:  # the config loaders raise several unrelated types
        raise UserError(
            f"cannot load Kubernetes credentials ({err}); set --kubeconfig or KUBECONFIG"
        ) from err
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    state = OperatorState(kube=kube, config=config, workers=args.workers, leader_election=election)
    run_operator(state, namespaces=args.namespace, liveness=args.liveness or None)
    return 0
