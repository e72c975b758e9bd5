"""What the router and the supervisor share about one replica: where it listens and whether it serves."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field


class ReplicaState(enum.Enum):
    STARTING = "starting"  # launched, not yet healthy: the staggered start is waiting on it
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # alive as far as we know, but a connection or a /health check failed
    EXITED = "exited"  # its process is gone; it never comes back (the launcher restarts instead)


@dataclass
class Replica:
    index: int
    base_url: str
    state: ReplicaState = ReplicaState.STARTING
    reason: str = "not started yet"
    in_flight: int = 0
    # time.monotonic() when it last stopped serving (None: never did), for the router's liveness.
    stopped_serving_at: float | None = None
    # Set when the router sees a failed connection, so the health monitor checks at once.
    recheck_now: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def label(self) -> str:
        return str(self.index)

    @property
    def serving(self) -> bool:
        return self.state is ReplicaState.HEALTHY

    def mark_healthy(self) -> None:
        if self.state is not ReplicaState.EXITED:
            self.state, self.reason = ReplicaState.HEALTHY, "healthy"

    def mark_unhealthy(self, reason: str) -> None:
        if self.state in (ReplicaState.HEALTHY, ReplicaState.UNHEALTHY):
            self._leave(ReplicaState.UNHEALTHY, reason)

    def report_connection_failure(self, reason: str) -> None:
        """The router could not connect: stop sending here and have the health monitor look now."""
        self.mark_unhealthy(reason)
        self.recheck_now.set()

    def mark_exited(self, exit_code: int | None) -> None:
        self._leave(ReplicaState.EXITED, f"process exited with code {exit_code}")
        self.recheck_now.set()  # lets its health monitor notice and stop

    def _leave(self, state: ReplicaState, reason: str) -> None:
        if self.serving:
            self.stopped_serving_at = time.monotonic()
        self.state, self.reason = state, reason
