"""The two ways `llmpack launch` runs: Launcher, the standalone launcher (router up, replicas
started one by one, watched, stopped on SIGTERM), and RouterOnly, the router of the operator's DRA
MPS pods, in front of replica containers it does not start.

Launcher's exit status: 0 after SIGTERM/SIGINT; 1 when a replica fails to start (the others are
stopped, so that whatever runs the launcher restarts it cleanly) or when every replica has exited.
A replica that dies after start is not restarted here: starting a vLLM next to running ones is
safe, but the memory its dead engine held may not be free yet, so /healthz fails after
--unserving-grace instead and a restart of the whole launcher (by its container's liveness probe,
or its supervisor) mends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass

import aiohttp

from llmpack.launcher.command import ReplicaCommand
from llmpack.launcher.health import HealthMonitor
from llmpack.launcher.metrics import RouterMetrics
from llmpack.launcher.process import ReplicaProcess, ReplicaStartError, become_subreaper, reap_orphans
from llmpack.launcher.replica import Replica, ReplicaState
from llmpack.launcher.router import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_READ_TIMEOUT_S,
    Router,
    upstream_session,
)

log = logging.getLogger("llmpack.launcher")
REAP_INTERVAL_S = 5.0


@dataclass(frozen=True)
class LaunchSettings:
    router_host: str = "0.0.0.0"
    router_port: int = 8000
    health_path: str = "/health"
    start_timeout_s: float = 1200.0
    start_poll_s: float = 1.0
    health_interval_s: float = 5.0
    recheck_s: float = 1.0
    health_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    shutdown_grace_s: float = 25.0
    # The router's limits: why these defaults, in launcher/router.py's docstring.
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    # `llmpack launch` only: /healthz fails once no replica has served this long.
    # A minute: longer than a health check's blip (5 s period, 5 s timeout), short against the
    # minutes a restart of the launcher costs, the only mend for replicas it never restarts.
    unserving_grace_s: float = 60.0

    def session(self) -> aiohttp.ClientSession:
        return upstream_session(self.connect_timeout_s, self.read_timeout_s)

    def router(
        self,
        replicas: list[Replica],
        session: aiohttp.ClientSession,
        metrics: RouterMetrics | None = None,
        *,
        replicas_restart_themselves: bool,
    ) -> Router:
        """replicas_restart_themselves: in a router-only pod every replica is a container with a
        liveness probe of its own, so restarting the router would mend nothing: its /healthz then
        answers for the router alone."""
        return Router(
            replicas,
            session,
            metrics=metrics,
            max_body_bytes=self.max_body_bytes,
            max_in_flight=self.max_in_flight,
            body_timeout_s=self.body_timeout_s,
            header_timeout_s=self.header_timeout_s,
            unserving_grace_s=None if replicas_restart_themselves else self.unserving_grace_s,
        )


def watch_health(
    session: aiohttp.ClientSession, settings: LaunchSettings, replicas: list[Replica]
) -> list[asyncio.Task[None]]:
    """One background health watch per replica (see HealthMonitor)."""
    monitor = HealthMonitor(
        session,
        path=settings.health_path,
        interval_s=settings.health_interval_s,
        recheck_s=settings.recheck_s,
        timeout_s=settings.health_timeout_s,
    )
    return [asyncio.create_task(monitor.watch(replica)) for replica in replicas]


class Launcher:
    def __init__(self, commands: list[ReplicaCommand], settings: LaunchSettings) -> None:
        self.settings = settings
        self.processes = [ReplicaProcess(command) for command in commands]
        self.replicas = [Replica(command.index, command.base_url) for command in commands]
        self.metrics = RouterMetrics()
        self._stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._exit_watches: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        self._handle_stop_signals()
        become_subreaper()
        self._tasks.append(asyncio.create_task(self._reap_periodically()))
        async with self.settings.session() as session:
            router = self.settings.router(
                self.replicas, session, self.metrics, replicas_restart_themselves=False
            )
            port = await router.start(self.settings.router_host, self.settings.router_port)
            log.info("router listening on %s:%s", self.settings.router_host, port)
            try:
                return await self._serve(session)
            finally:
                router.draining = True
                await self._stop_replicas()
                await router.stop()

    async def _serve(self, session: aiohttp.ClientSession) -> int:
        try:
            started = await self._unless_stopped(self._start_in_order(session))
        except ReplicaStartError as err:
            log.error("%s\nStopping the other replicas and exiting, so that the launcher is restarted.", err)
            return 1
        if not started:
            return 0
        log.info("all %d replicas healthy", len(self.replicas))
        self._tasks += watch_health(session, self.settings, self.replicas)
        if await self._unless_stopped(self._all_exited()):
            log.error("every replica has exited; nothing left to serve")
            return 1
        return 0

    async def _start_in_order(self, session: aiohttp.ClientSession) -> None:
        """One replica at a time: vLLM measures free GPU memory while it starts, and a neighbour
        loading its weights at the same moment corrupts that measurement (vllm issue 55827)."""
        for process, replica in zip(self.processes, self.replicas, strict=True):
            log.info("starting replica %d: %s", process.index, " ".join(process.command.argv))
            await process.start()
            self._exit_watches.append(asyncio.create_task(self._watch_exit(process, replica)))
            self._tasks.append(self._exit_watches[-1])
            await process.wait_until_healthy(
                session,
                health_path=self.settings.health_path,
                timeout_s=self.settings.start_timeout_s,
                poll_s=self.settings.start_poll_s,
            )
            replica.mark_healthy()
            log.info("replica %d healthy on %s", process.index, replica.base_url)
            self._raise_if_an_earlier_replica_died()

    def _raise_if_an_earlier_replica_died(self) -> None:
        for process in self.processes:
            if process.exited is not None and process.exited.done():
                raise ReplicaStartError(
                    f"replica {process.index} exited with code {process.exited.result()} while later "
                    f"replicas were starting; its last output:\n{process.tail()}"
                )

    async def _watch_exit(self, process: ReplicaProcess, replica: Replica) -> None:
        """Seen the moment the server process exits (not when its output pipe closes: the engine
        processes it leaves behind hold that open); its engine processes are killed at once, since
        they keep GPU memory and nothing can reach them any more."""
        code = await process.wait_exited()
        was_started = replica.state is not ReplicaState.STARTING  # a failed start is reported there
        replica.mark_exited(code)
        if self._stop_requested.is_set():
            return  # _stop_replicas stops what is left, with a grace period
        leftovers = process.kill_leftovers()
        self.metrics.replica_exits.labels(replica.label).inc()
        if was_started:
            log.error(
                "replica %d exited with code %s; the router no longer sends to it. Its last output:\n%s",
                process.index,
                code,
                process.tail(),
            )
        if leftovers:
            log.warning(
                "replica %d: killed the %d processes its server left behind (pids %s)",
                process.index,
                len(leftovers),
                " ".join(map(str, leftovers)),
            )
            if still_running := await process.wait_members_gone(5.0):
                log.error(
                    "replica %d: processes still running 5 s after SIGKILL: %s", process.index, still_running
                )
            self._reap_orphans()

    async def _all_exited(self) -> None:
        # asyncio.wait, not gather: cancelling a gather would cancel the exit tasks themselves. The
        # watches, not the exits: each has killed what its replica left behind when it finishes.
        await asyncio.wait(self._exit_watches)

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Run work until it finishes (True) or a stop signal arrives first (False, work cancelled)."""
        work_task = asyncio.ensure_future(work)
        stop_task = asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in (work_task, stop_task):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop_task
        if work_task.done() and not work_task.cancelled():
            work_task.result()  # re-raise what the work raised
            return True
        with contextlib.suppress(asyncio.CancelledError):
            await work_task
        return False

    async def _stop_replicas(self) -> None:
        for task in self._tasks:
            task.cancel()
        grace = self.settings.shutdown_grace_s
        codes = await asyncio.gather(*(p.stop(grace) for p in self.processes))
        for process, code in zip(self.processes, codes, strict=True):
            if code is not None:
                log.info("replica %d stopped (exit code %s)", process.index, code)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._reap_orphans()

    async def _reap_periodically(self) -> None:
        """Also later: an engine process that was still exiting (a thread-group leader can only be
        reaped once all its threads are gone) or that was orphaned at some other time."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            self._reap_orphans()

    def _reap_orphans(self) -> None:
        servers = {p.pid for p in self.processes if p.pid is not None}
        if reaped := reap_orphans(keep=servers):
            log.info("reaped %d exited replica processes (pids %s)", len(reaped), " ".join(map(str, reaped)))

    def _handle_stop_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: int) -> None:
        log.info("%s received: stopping the replicas", signal.Signals(signum).name)
        self._stop_requested.set()


class RouterOnly:
    """The router alone, in front of replicas that other containers of the pod run.

    In a DRA MPS pod each vLLM replica is its own container, started one after another by
    Kubernetes itself (native sidecars gated by startup probes), so this process only routes and
    watches their health. Exit status 0 after SIGTERM/SIGINT."""

    def __init__(self, upstreams: list[str], settings: LaunchSettings) -> None:
        self.settings = settings
        self.replicas = [Replica(index, url.rstrip("/")) for index, url in enumerate(upstreams)]
        self._stop_requested = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested.set)
        async with self.settings.session() as session:
            router = self.settings.router(self.replicas, session, replicas_restart_themselves=True)
            port = await router.start(self.settings.router_host, self.settings.router_port)
            log.info(
                "router listening on %s:%s for %d replicas",
                self.settings.router_host,
                port,
                len(self.replicas),
            )
            tasks = watch_health(session, self.settings, self.replicas)
            try:
                await self._stop_requested.wait()
                log.info("stop signal received: draining the router")
            finally:
                router.draining = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await router.stop()
        return 0
