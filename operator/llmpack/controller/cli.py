"""`llmpack operator`: run the operator against the cluster of the current kubeconfig."""

from __future__ import annotations

import argparse
import logging
import os

from llmpack.cli import UserError


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
    parser.add_argument("--log-level", default=os.environ.get("LLMPACK_LOG_LEVEL", "INFO"))
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0: off")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    parser.add_argument(
        "--peering",
        default=None,
        help="kopf peering object for running several operator replicas (one is active); default standalone",
    )
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica")


def run(args: argparse.Namespace) -> int:
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise UserError(f"--log-level {args.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # kopf logs every handled watch event at INFO; our handlers only enqueue, so that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from llmpack.controller.kube import KubeClient
    from llmpack.controller.operator import OperatorState
    from llmpack.controller.operator import run as run_operator
    from llmpack.controller.reconciler import OperatorConfig

    config = OperatorConfig(operator_namespace=args.operator_namespace)
    if args.profiler_image:
        config.profiler_image = args.profiler_image
    if args.serving_image:
        config.serving_image = args.serving_image
    try:
        kube = KubeClient.from_config(args.kubeconfig)
    except Exception as err:  # the config loaders raise several unrelated types
        raise UserError(
            f"cannot load Kubernetes credentials ({err}); set --kubeconfig or KUBECONFIG"
        ) from err
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    state = OperatorState(kube=kube, config=config, workers=args.workers)
    run_operator(
        state,
        namespaces=args.namespace,
        standalone=args.peering is None,
        liveness=args.liveness or None,
        peering=args.peering,
        priority=args.priority,
    )
    return 0
