"""`llmpack launch`: a router in front of vLLM replicas, with or without starting them itself.

Router only (what the operator's serving pods run: the DRA MPS pod's main container, in front of
replicas that are containers of their own, started in order by the kubelet as native sidecars;
see render/serving.py):

    llmpack launch --router-only --router-port 8000 \\
        --upstream http://127.0.0.1:8001 --upstream http://127.0.0.1:8002

routes and health-checks, and starts nothing. Its /healthz answers for the router alone (each
replica container has its own liveness probe, and restarting the router would not mend one);
/readyz is as below.

Standalone (outside Kubernetes: a GPU host of your own, `docker run` of the serving image, whose
ENTRYPOINT is `llmpack launch`, or bench/router_overhead.py): start N replicas on one GPU and route
between them:

    llmpack launch --replicas 2 --first-port 8100 --router-port 8000 --model facebook/opt-1.3b \\
        -- --max-num-seqs 96 --kv-cache-memory-bytes 4294967296 --gpu-memory-utilization 0.45

- Everything after `--` is the replica command. If it starts with a flag (or is empty), it means
  `vllm serve MODEL FLAGS` with MODEL from --model (the flags `llmpack advise` or `llmpack plan`
  print). A full command (`-- vllm serve facebook/opt-1.3b --max-num-seqs 96`, or any other
  OpenAI-compatible server) is run as given, without --model.
- Replica i runs that command plus `--host 127.0.0.1 --port FIRST_PORT+i`; the launcher owns
  --host and --port, and rejects a command that sets them. Only the router's port is reachable from
  outside.
- Replicas that differ: `--replica-args=FLAGS` once per replica (a shell-quoted string appended to
  replica i's command; write it with `=` because its value starts with a dash). Their number is the
  replica count, and --replicas may then be left out.

Replicas start one after another, each only when the previous answers GET /health with 200, because
two vLLM instances starting together on one GPU corrupt each other's memory profiling (vllm issue
55827). The router on --router-port proxies every path to the healthy replica with the fewest
requests in flight and answers itself on /readyz (200 while at least one replica serves, 503 once
shutting down), /healthz and /health (liveness: 200 from the first replica serving until none has
served for --unserving-grace seconds; one replica down keeps it 200) and /metrics (the replicas'
metrics, each sample labelled replica="i", plus the router's own, among them
llmpack_router_replicas_serving). In a container: a startupProbe (or a health check) on /healthz
whose budget covers the first replica's start (--start-timeout), then liveness on /healthz and
readiness on /readyz. It is ready once its first replica serves, while later ones still start: what
a starting vLLM must not share the GPU with is another one starting, not one serving. Exit status:
0 after SIGTERM, 1 when a replica fails to start or all have exited, 2 for bad arguments.

A replica whose server process exits is seen at once (not through its output pipe, which vLLM's
engine core and worker processes keep open): the launcher logs it, counts it in
llmpack_replica_exits_total{replica="i"}, SIGKILLs the processes it left behind (they hold its GPU
memory) and stops routing to it. The others serve on (ready, alive) at lower capacity, visible in
llmpack_router_replicas_serving; once none serves, the launcher exits (all exited) or /healthz fails
after --unserving-grace (all unhealthy), for whatever runs it (a container runtime, systemd) to
restart it. Orphaned engine processes become the launcher's children (it is PID 1 in a container,
and makes itself a child subreaper elsewhere), and it reaps them. SIGTERM goes to every process of
every replica; what still runs after --shutdown-grace is SIGKILLed, and the launcher exits only
once none is left. A client that hangs up has its request to the replica closed, which makes vLLM
abort it (llmpack_router_client_disconnects_total).

The router's limits, in both uses (--max-body-bytes, 413; --max-in-flight, 503 with Retry-After;
--read-timeout, 504; --body-timeout, 408; --header-timeout, the connection closed) and why their
defaults are what they are: launcher/router.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from llmpack.errors import UserError
from llmpack.launcher.command import replica_commands
from llmpack.launcher.supervisor import Launcher, LaunchSettings, RouterOnly


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = LaunchSettings()
    parser.add_argument(
        "--replicas", type=int, help="how many replicas (default: 1, or one per --replica-args)"
    )
    parser.add_argument("--model", help="model for the default command `vllm serve MODEL`")
    parser.add_argument(
        "--replica-args",
        action="append",
        default=[],
        metavar="FLAGS",
        help="flags for one replica only, shell-quoted; repeat once per replica (write --replica-args=...)",
    )
    parser.add_argument("--first-port", type=int, default=8100, help="replica i listens on this + i")
    parser.add_argument("--replica-host", default="127.0.0.1", help="address replicas listen on")
    parser.add_argument("--router-port", type=int, default=defaults.router_port, help="the service port")
    parser.add_argument("--router-host", default=defaults.router_host)
    parser.add_argument("--health-path", default=defaults.health_path, help="replica health endpoint")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=defaults.start_timeout_s,
        metavar="SECONDS",
        help="how long one replica may take to become healthy (weights download, CUDA graph capture)",
    )
    parser.add_argument("--start-poll", type=float, default=defaults.start_poll_s, metavar="SECONDS")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=defaults.health_interval_s,
        metavar="SECONDS",
        help="how often a serving replica's health is checked after start",
    )
    parser.add_argument(
        "--recheck-interval",
        type=float,
        default=defaults.recheck_s,
        metavar="SECONDS",
        help="how often an unhealthy replica is checked for recovery",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=defaults.connect_timeout_s, metavar="SECONDS"
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=defaults.read_timeout_s,
        metavar="SECONDS",
        help="give up on a replica that sends nothing for this long (504; a plain completion sends "
        "nothing until it is done, so keep it above the longest generation)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        metavar="BYTES",
        help="larger request bodies are refused with 413 (bodies are streamed, not buffered)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=defaults.max_in_flight,
        metavar="N",
        help="requests proxied at once; more are refused with 503 and Retry-After",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout_s,
        metavar="SECONDS",
        help="a request body must arrive whole within this long (else 408): a slow upload must not "
        "hold an in-flight slot",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_timeout_s,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after it opened "
        "or after the previous answer (also the idle keep-alive timeout)",
    )
    parser.add_argument(
        "--unserving-grace",
        type=float,
        default=defaults.unserving_grace_s,
        metavar="SECONDS",
        help="/healthz fails once no replica has served this long (not with --router-only)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace_s,
        metavar="SECONDS",
        help="after SIGTERM, how long replicas may finish before SIGKILL (keep below the pod's "
        "terminationGracePeriodSeconds)",
    )
    parser.add_argument(
        "--router-only",
        action="store_true",
        help="start no replica: route to the --upstream servers other containers run",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="with --router-only: base URL of one replica (repeat per replica)",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: vLLM flags (with --model) or a full server command",
    )


def run(args: argparse.Namespace) -> int:
    if args.router_only:
        return _run_router_only(args)
    if args.upstream:
        raise UserError("--upstream goes with --router-only")
    commands = replica_commands(
        model=args.model,
        command=args.command,
        replicas=args.replicas,
        replica_args=args.replica_args,
        first_port=args.first_port,
        replica_host=args.replica_host,
        router_port=args.router_port,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s llmpack-launch %(levelname)s %(message)s")
    return asyncio.run(Launcher(commands, launch_settings(args)).run())


def _run_router_only(args: argparse.Namespace) -> int:
    command = [part for part in args.command if part != "--"]
    if command or args.replica_args:
        raise UserError("--router-only starts no replica: drop the command and --replica-args")
    if not args.upstream:
        raise UserError("--router-only needs at least one --upstream URL (e.g. http://127.0.0.1:8001)")
    for url in args.upstream:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--upstream {url!r} is not an http:// or https:// URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s llmpack-router %(levelname)s %(message)s")
    return asyncio.run(RouterOnly(args.upstream, launch_settings(args)).run())


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    """The settings of both modes (the router-only mode ignores the start and shutdown ones)."""
    for flag, value in (
        ("--read-timeout", args.read_timeout),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-in-flight", args.max_in_flight),
        ("--body-timeout", args.body_timeout),
        ("--header-timeout", args.header_timeout),
        ("--unserving-grace", args.unserving_grace),
    ):
        if value <= 0:
            raise UserError(f"{flag} must be positive, not {value}")
    return LaunchSettings(
        router_host=args.router_host,
        router_port=args.router_port,
        health_path=args.health_path,
        start_timeout_s=args.start_timeout,
        start_poll_s=args.start_poll,
        health_interval_s=args.health_interval,
        recheck_s=args.recheck_interval,
        connect_timeout_s=args.connect_timeout,
        shutdown_grace_s=args.shutdown_grace,
        read_timeout_s=args.read_timeout,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        unserving_grace_s=args.unserving_grace,
    )
