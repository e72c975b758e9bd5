"""Health checks of replicas: one probe, and the background watch that keeps each replica's state."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from llmpack.launcher.replica import Replica, ReplicaState


async def probe_health(
    session: aiohttp.ClientSession, base_url: str, path: str, timeout_s: float
) -> str | None:
    """None when GET path answers 200, else why not (for /healthz and the logs)."""
    try:
        async with session.get(base_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status == 200:
                return None
            return f"GET {path} answered {response.status}"
    except TimeoutError:
        return f"GET {path} timed out after {timeout_s:g} s"
    except aiohttp.ClientError as err:
        return f"GET {path} failed: {err}"


class HealthMonitor:
    """Re-checks every started replica: every `interval_s` while healthy, every `recheck_s` while not,
    and at once when the router reports a failed connection. An exited replica is not watched."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        path: str,
        interval_s: float,
        recheck_s: float,
        timeout_s: float,
    ) -> None:
        self._session = session
        self._path = path
        self._interval_s = interval_s
        self._recheck_s = recheck_s
        self._timeout_s = timeout_s

    async def watch(self, replica: Replica) -> None:
        while replica.state is not ReplicaState.EXITED:
            await self._wait_for_next_check(replica)
            if replica.state is ReplicaState.EXITED:
                return
            problem = await probe_health(self._session, replica.base_url, self._path, self._timeout_s)
            if problem is None:
                replica.mark_healthy()
            else:
                replica.mark_unhealthy(problem)

    async def _wait_for_next_check(self, replica: Replica) -> None:
        delay = self._interval_s if replica.serving else self._recheck_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(replica.recheck_now.wait(), timeout=delay)
        replica.recheck_now.clear()
