"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Several operator replicas may run; one leads and reconciles, the others keep their watch caches
warm and stand by. The algorithm is client-go's tools/leaderelection (LeaseLock):

- The Lease's spec is the record: holderIdentity, leaseDurationSeconds, acquireTime, renewTime,
  leaseTransitions. Every write is an update guarded by the resourceVersion last read
  (optimistic concurrency): of two candidates racing for an expired lease, one gets a 409.
- A candidate tries every retry period (jittered by up to 1.2 retry periods, wait.JitterUntil).
  It takes the lease over only when the holder is empty or the record has not changed for a lease
  duration *by the candidate's own clock*: the time it last saw the record change, never the
  renewTime written in it, so clock skew between nodes does not matter.
- The leader renews every retry period. If no renewal has succeeded for the renew deadline it
  stops leading, before any candidate can have seen the lease expire (lease duration > renew
  deadline). The deadline here counts from the start of the last successful renewal, at most one
  retry period stricter than client-go (which counts from the start of the renew round), and a
  renewal that finds another holder in the lease stops leading at once instead of retrying.
- A leader that stops cleanly (SIGTERM) releases the lease (holderIdentity "", duration 1 s,
  client-go's ReleaseOnCancel), so its successor takes over within a retry period.

While leading ends, nothing may write: `is_leading()` is the fence the operator's API client
checks before every write (FencedKubeClient). It turns false the moment the renew deadline passes,
even if the event loop is busy or the process was paused, so a reconcile still running in a
worker thread cannot apply or write a status on a lease it no longer holds.

What the operator does when leading is lost is its choice (operator.py: it exits, like client-go's
and controller-runtime's default, and the Deployment restarts it as a candidate).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from llmpack.runtime import metrics
from llmpack.runtime.kube import KubeClient, KubeError

logger = logging.getLogger(__name__)

JITTER_FACTOR = 1.2  # client-go's leaderelection.JitterFactor
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NotLeader(Exception):
    """A write refused because this replica does not hold the lease (any more)."""


def default_identity() -> str:
    """hostname_uuid, as controller-runtime: unique per process, so a restarted pod is a new
    candidate and never mistakes the lease of its previous life for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(moment: datetime | None = None) -> str:
    """metav1.MicroTime's format: RFC 3339 with microseconds."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaderElectionConfig:
    lease_name: str
    lease_namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        # client-go's NewLeaderElector checks, in its words, and one of ours (whole seconds).
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("leaseDuration must be greater than renewDeadline")
        if not float(self.lease_duration).is_integer():
            # The Lease's leaseDurationSeconds is whole seconds: 10.5 s would be written as 10, what
            # standbys wait, and the leader's fence (the renew deadline) would no longer close
            # before a standby can take over.
            raise ValueError(
                f"leaseDuration must be a whole number of seconds (the Lease's leaseDurationSeconds), "
                f"not {self.lease_duration:g}s"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError("renewDeadline must be greater than retryPeriod*JitterFactor")
        if self.lease_duration < 1:
            raise ValueError("leaseDuration must be at least 1 second")
        if self.retry_period <= 0:
            raise ValueError("retryPeriod must be greater than zero")
        if not self.identity:
            raise ValueError("leader election identity must not be empty")
        if not self.lease_name or not self.lease_namespace:
            raise ValueError("leader election needs a lease name and namespace")


@dataclass(frozen=True)
class LeaderElectionRecord:
    holder_identity: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    leader_transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaderElectionRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder_identity=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            leader_transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder_identity,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.leader_transitions,
        }


class LeaseLock:
    """client-go's LeaseLock: get, create and resourceVersion-guarded update of one Lease."""

    def __init__(self, kube: KubeClient, namespace: str, name: str):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.lease: dict[str, Any] | None = None  # as last read or written: its resourceVersion guards

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def _collection(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def get(self, timeout: float) -> LeaderElectionRecord:
        self.lease = self.kube.request("GET", f"{self._collection}/{self.name}", timeout=timeout)
        return LeaderElectionRecord.from_lease(self.lease)

    def create(self, record: LeaderElectionRecord, timeout: float) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.spec(),
        }
        self.lease = self.kube.request("POST", self._collection, body=body, timeout=timeout)

    def update(self, record: LeaderElectionRecord, timeout: float) -> None:
        if self.lease is None:
            raise KubeError(0, "NotInitialized", "lease not read yet; call get or create first")
        body = copy.deepcopy(self.lease)
        body.setdefault("spec", {}).update(record.spec())  # other fields (strategy...) stay
        self.lease = self.kube.request("PUT", f"{self._collection}/{self.name}", body=body, timeout=timeout)


class LeaderElector:
    """One candidate. start() runs the election in the event loop; the API calls run in a thread
    of their own, so a worker pool busy with reconciles never delays a renewal."""

    def __init__(
        self,
        lock: LeaseLock,
        config: LeaderElectionConfig,
        *,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.lock = lock
        self.config = config
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self.wall_clock = wall_clock
        self.observed_record = LeaderElectionRecord()
        self.observed_time = float("-inf")
        self._renewed_at = float("-inf")  # start of the last successful acquire or renew
        self._leading = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.reported_leader = ""
        metrics.LEADER.labels(name=config.lease_name).set(0)

    # -- what others ask ---------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """The last record seen names this candidate (client-go's IsLeader)."""
        return self.observed_record.holder_identity == self.config.identity

    def is_leading(self) -> bool:
        """May this process write now? Leading, and renewed within the renew deadline."""
        return self._leading and self.clock() < self._renewed_at + self.config.renew_deadline

    def lease_valid(self, now: float | None = None) -> bool:
        """The observed record has not expired by this candidate's clock (client-go's isLeaseValid)."""
        now = self.clock() if now is None else now
        return self.observed_time + self.observed_record.lease_duration_seconds > now

    # -- one attempt (client-go's tryAcquireOrRenew, step by step) ----------------------------------

    def _observe(self, record: LeaderElectionRecord) -> None:
        self.observed_record = record
        self.observed_time = self.clock()
        if record.holder_identity != self.reported_leader:
            self.reported_leader = record.holder_identity
            if record.holder_identity and record.holder_identity != self.config.identity:
                logger.info("lease %s is held by %s", self.lock.describe(), record.holder_identity)

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        timeout = timeout or self.config.renew_deadline
        started = self.clock()
        now = micro_time(self.wall_clock())
        desired = LeaderElectionRecord(
            holder_identity=self.config.identity,
            lease_duration_seconds=int(self.config.lease_duration),
            acquire_time=now,
            renew_time=now,
        )
        # 1. The leader's fast path: update optimistically from the record it wrote last.
        if self.is_leader() and self.lease_valid():
            desired = replace(
                desired,
                acquire_time=self.observed_record.acquire_time,
                leader_transitions=self.observed_record.leader_transitions,
            )
            try:
                self.lock.update(desired, timeout)
                self._observe(desired)
                self._renewed_at = started
                return True
            except KubeError as err:
                logger.warning(
                    "failed to update lease %s optimistically (%s); reading it", self.lock.describe(), err
                )
        # 2. Read the record, or create it.
        try:
            old = self.lock.get(timeout)
        except KubeError as err:
            if not err.not_found:
                logger.warning("error retrieving lease %s: %s", self.lock.describe(), err)
                return False
            try:
                self.lock.create(desired, timeout)
            except KubeError as create_err:
                logger.warning("error creating lease %s: %s", self.lock.describe(), create_err)
                return False
            self._observe(desired)
            self._renewed_at = started
            return True
        # 3. The record changed since last seen: restart its expiry on our clock.
        if old != self.observed_record:
            self._observe(old)
        if old.holder_identity and self.lease_valid() and not self.is_leader():
            return False  # held by another and not expired by our observation
        # 4. Take it over (a transition) or renew it (slow path).
        if self.is_leader():
            desired = replace(
                desired, acquire_time=old.acquire_time, leader_transitions=old.leader_transitions
            )
        else:
            desired = replace(desired, leader_transitions=old.leader_transitions + 1)
        try:
            self.lock.update(desired, timeout)
        except KubeError as err:
            logger.warning("failed to update lease %s: %s", self.lock.describe(), err)
            return False
        self._observe(desired)
        self._renewed_at = started
        return True

    def release(self, timeout: float | None = None) -> bool:
        """Give the lease up (client-go's release): empty holder, 1 s duration."""
        if not self.is_leader():
            return True
        now = micro_time(self.wall_clock())
        record = LeaderElectionRecord(
            holder_identity="",
            lease_duration_seconds=1,
            acquire_time=now,
            renew_time=now,
            leader_transitions=self.observed_record.leader_transitions,
        )
        try:
            self.lock.update(record, timeout or self.config.renew_deadline)
        except KubeError as err:
            logger.warning("failed to release lease %s: %s", self.lock.describe(), err)
            return False
        self._observe(record)
        return True

    # -- the loops ---------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leader-election")
        self._task = asyncio.create_task(self.run(), name="leader-election")
        return self._task

    async def _attempt(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.try_acquire_or_renew, timeout), timeout
            )
        except TimeoutError:
            logger.warning("lease %s: no answer from the API server in %.3gs", self.lock.describe(), timeout)
            return False
        except Exception:  # a bug in one attempt must not end the election silently
            logger.exception("lease %s: attempt failed", self.lock.describe())
            return False

    async def run(self) -> None:
        description = self.lock.describe()
        logger.info("attempting to acquire leader lease %s as %s", description, self.config.identity)
        while not await self._attempt(self.config.renew_deadline):
            jitter = random.random() * JITTER_FACTOR * self.config.retry_period
            await asyncio.sleep(self.config.retry_period + jitter)
        self._leading = True
        metrics.LEADER.labels(name=self.config.lease_name).set(1)
        metrics.LEADER_TRANSITIONS.labels(event="acquired").inc()
        logger.info("successfully acquired lease %s", description)
        self.on_started_leading()
        await self._renew()
        self._stop_leading("lost")
        logger.error("leader lease %s lost: stopped leading", description)
        self.on_stopped_leading()

    async def _renew(self) -> None:
        """Renew every retry period until a renewal misses the renew deadline; then return."""
        while True:
            await asyncio.sleep(self.config.retry_period)
            while True:
                remaining = self._renewed_at + self.config.renew_deadline - self.clock()
                if remaining <= 0:
                    logger.error(
                        "failed to renew lease %s: no renewal for %.3gs",
                        self.lock.describe(),
                        self.config.renew_deadline,
                    )
                    return
                if await self._attempt(remaining):
                    break
                if not self.is_leader():
                    logger.error(
                        "lease %s is now held by %s",
                        self.lock.describe(),
                        self.observed_record.holder_identity,
                    )
                    return
                await asyncio.sleep(min(self.config.retry_period, max(remaining, 0.01)))

    def _stop_leading(self, event: str) -> None:
        if self._leading:
            self._leading = False
            metrics.LEADER.labels(name=self.config.lease_name).set(0)
            metrics.LEADER_TRANSITIONS.labels(event=event).inc()

    async def stop(self) -> None:
        """Stop campaigning; a leader stops leading at once and releases the lease."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        was_leading = self._leading
        self._stop_leading("released")
        if was_leading and self.config.release_on_cancel and self._executor is not None:
            loop = asyncio.get_running_loop()
            timeout = self.config.renew_deadline
            try:
                released = await asyncio.wait_for(loop.run_in_executor(self._executor, self.release), timeout)
            except TimeoutError:
                released = False
            if released:
                logger.info("released lease %s", self.lock.describe())
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class FencedKubeClient(KubeClient):
    """The operator's API client when leader election is on: reads always, writes only while
    `fence()` says this process leads."""

    fence: Callable[[], bool] | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method.upper() in WRITE_METHODS and self.fence is not None and not self.fence():
            raise NotLeader(f"not the leader: {method} {path.split('?')[0]} refused")
        return super().request(method, path, **kwargs)
