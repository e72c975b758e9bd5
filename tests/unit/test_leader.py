"""Leader election on a Lease with client-go's semantics, against an in-memory API server that
keeps resourceVersions like the real one (a stale update gets a 409)."""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import UTC, datetime

import pytest

from llmpack.runtime.kube import KubeClient, KubeError
from llmpack.runtime.leader import (
    FencedKubeClient,
    LeaderElectionConfig,
    LeaderElectionRecord,
    LeaderElector,
    LeaseLock,
    NotLeader,
)

PATH = "/apis/coordination.k8s.io/v1/namespaces/ops/leases"


class FakeApiServer:
    """GET, POST and PUT of Leases with optimistic concurrency; `down` makes every call fail."""

    def __init__(self):
        self.leases: dict[str, dict] = {}
        self.version = 0
        self.down = False
        self.writes: list[tuple[str, dict]] = []

    def request(self, method, path, *, body=None, timeout=30, **_):
        if self.down:
            raise KubeError(0, "Unavailable", "API server unreachable")
        name = path.removeprefix(PATH).strip("/")
        if method == "GET":
            if name not in self.leases:
                raise KubeError(404, "NotFound", f'leases "{name}" not found')
            return copy.deepcopy(self.leases[name])
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.leases:
                raise KubeError(409, "AlreadyExists", f'leases "{name}" already exists')
            return self._store(name, body, method)
        if method == "PUT":
            current = self.leases.get(name)
            if current is None:
                raise KubeError(404, "NotFound", f'leases "{name}" not found')
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise KubeError(409, "Conflict", "the object has been modified")
            return self._store(name, body, method)
        raise AssertionError(method)

    def _store(self, name, body, method):
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        self.writes.append((method, copy.deepcopy(stored["spec"])))
        return copy.deepcopy(stored)

    def spec(self, name="operator"):
        return self.leases[name]["spec"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def elector(server, identity, clock, **kwargs) -> LeaderElector:
    config = LeaderElectionConfig(lease_name="operator", lease_namespace="ops", identity=identity, **kwargs)
    return LeaderElector(
        LeaseLock(server, "ops", "operator"),
        config,
        clock=clock,
        wall_clock=lambda: datetime.fromtimestamp(clock(), UTC),
    )


def test_the_first_candidate_creates_the_lease_and_leads():
    server, clock = FakeApiServer(), Clock()
    a = elector(server, "a", clock)
    assert a.try_acquire_or_renew()
    spec = server.spec()
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"] == "1970-01-01T00:16:40.000000Z"  # MicroTime
    assert a.is_leader() and not a.is_leading()  # is_leading: once run() started leading


def test_renewals_keep_acquire_time_and_transitions_and_move_renew_time():
    server, clock = FakeApiServer(), Clock()
    a = elector(server, "a", clock)
    assert a.try_acquire_or_renew()
    acquired = server.spec()["acquireTime"]
    for _ in range(3):
        clock.now += 2
        assert a.try_acquire_or_renew()
    spec = server.spec()
    assert spec["acquireTime"] == acquired and spec["leaseTransitions"] == 0
    assert spec["renewTime"] == "1970-01-01T00:16:46.000000Z"
    assert [m for m, _ in server.writes] == ["POST", "PUT", "PUT", "PUT"]  # the fast path: no GET needed


def test_a_standby_waits_while_the_leader_renews():
    server, clock = FakeApiServer(), Clock()
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert a.try_acquire_or_renew()
    for _ in range(20):  # 40 s: far past one lease duration, but renewed all along
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert server.spec()["holderIdentity"] == "a"


def test_takeover_only_after_the_lease_expired_by_the_candidates_own_clock():
    """The renewTime written in the lease is not trusted (another node's clock): a record that
    says it was renewed in 2001 is still valid until this candidate has seen it unchanged for a
    lease duration."""
    server, clock = FakeApiServer(), Clock()
    server.leases["operator"] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "operator", "namespace": "ops", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": "dead-leader",
            "leaseDurationSeconds": 15,
            "acquireTime": "2001-01-01T00:00:00.000000Z",
            "renewTime": "2001-01-01T00:00:00.000000Z",
            "leaseTransitions": 4,
        },
    }
    b = elector(server, "b", clock)
    assert not b.try_acquire_or_renew()  # first seen now
    clock.now += 14.9
    assert not b.try_acquire_or_renew()
    clock.now += 0.2
    assert b.try_acquire_or_renew()
    spec = server.spec()
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 5
    assert spec["acquireTime"] == spec["renewTime"]


def test_a_lease_that_changes_restarts_the_candidates_wait():
    server, clock = FakeApiServer(), Clock()
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.now += 10
    assert a.try_acquire_or_renew()  # renewed at 10 s
    assert not b.try_acquire_or_renew()  # b sees the change now
    clock.now += 10  # 20 s after b first saw the lease, 10 s after it last saw it change
    assert not b.try_acquire_or_renew()
    clock.now += 5.1
    assert b.try_acquire_or_renew()


def test_two_candidates_racing_for_an_expired_lease_one_wins():
    """Both read the expired lease, both write: the second write carries the resourceVersion
    both read, and the API server refuses it (409)."""
    server, clock = FakeApiServer(), Clock()
    a, b, c = (elector(server, n, clock) for n in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.now += 16  # a died; b and c both see the lease expired
    read_by_both = copy.deepcopy(server.leases["operator"])

    def stale_get(timeout):  # c's GET answered before b's update landed
        c.lock.lease = copy.deepcopy(read_by_both)
        return LeaderElectionRecord.from_lease(read_by_both)

    c.lock.get = stale_get
    assert b.try_acquire_or_renew()
    assert not c.try_acquire_or_renew()
    assert server.spec()["holderIdentity"] == "b" and server.spec()["leaseTransitions"] == 1
    assert [m for m, _ in server.writes].count("PUT") == 1  # c's PUT was refused, not stored
    del c.lock.get
    assert not c.try_acquire_or_renew()  # and now c sees b's fresh lease: wait again


def test_a_released_lease_is_taken_at_once():
    server, clock = FakeApiServer(), Clock()
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    spec = server.spec()
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    clock.now += 0.1
    assert b.try_acquire_or_renew()
    assert server.spec()["holderIdentity"] == "b" and server.spec()["leaseTransitions"] == 1


def test_client_go_refuses_the_same_configurations():
    def config(**kwargs):
        return LeaderElectionConfig(lease_name="l", lease_namespace="n", identity="i", **kwargs)

    with pytest.raises(ValueError, match="leaseDuration must be greater than renewDeadline"):
        config(lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="renewDeadline must be greater than retryPeriod\\*JitterFactor"):
        config(renew_deadline=2.4, retry_period=2)
    with pytest.raises(ValueError, match="identity"):
        LeaderElectionConfig(lease_name="l", lease_namespace="n", identity="")
    assert config().lease_duration == 15 and config().renew_deadline == 10 and config().retry_period == 2


def test_a_fractional_lease_duration_is_refused_as_the_lease_holds_whole_seconds():
    """10.5 s passes "greater than the renew deadline" but would be written as 10 s, exactly the
    renew deadline: the leader's fence would close no sooner than a standby takes over."""

    def config(**kwargs):
        return LeaderElectionConfig(lease_name="l", lease_namespace="n", identity="i", **kwargs)

    for lease_duration in (10.5, 15.25, 1.2, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="leaseDuration must be a whole number of seconds"):
            config(lease_duration=lease_duration, renew_deadline=10 if lease_duration > 10 else 0.8)
    server, clock = FakeApiServer(), Clock()
    a = elector(server, "a", clock, lease_duration=11.0, renew_deadline=10.5)
    assert a.try_acquire_or_renew()
    assert server.spec()["leaseDurationSeconds"] == 11 > a.config.renew_deadline


def test_the_fence_refuses_writes_unless_leading(monkeypatch):
    sent = []
    monkeypatch.setattr(KubeClient, "request", lambda self, method, path, **kw: sent.append(method))
    client = FencedKubeClient(api_client=None)
    leading = [True]
    client.fence = lambda: leading[0]
    client.request("PATCH", "/apis/apps/v1/namespaces/a/deployments/x")
    leading[0] = False
    client.request("GET", "/apis/apps/v1/namespaces/a/deployments/x")  # reads stay allowed
    for method in ("PATCH", "POST", "PUT", "DELETE"):
        with pytest.raises(NotLeader):
            client.request(method, "/apis/apps/v1/namespaces/a/deployments/x?fieldManager=llmpack")
    assert sent == ["PATCH", "GET"]


# -- the loops, in real (short) time --------------------------------------------------------------

FAST = {"lease_duration": 1.0, "renew_deadline": 0.8, "retry_period": 0.1}


def running(server, identity, events, **overrides):
    e = elector(server, identity, time.monotonic, **{**FAST, **overrides})
    e.on_started_leading = lambda: events.append(("started", identity))
    e.on_stopped_leading = lambda: events.append(("stopped", identity))
    return e


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_the_standby_takes_over_after_the_leader_dies_and_never_both_lead():
    server, events = FakeApiServer(), []

    async def main():
        a = running(server, "a", events)
        a.start()
        while not a.is_leading():
            await asyncio.sleep(0.01)
        b = running(server, "b", events)
        b.start()
        overlap = []
        await asyncio.sleep(2)  # well past a lease duration: a keeps renewing, b waits
        assert ("started", "b") not in events
        loop = asyncio.get_running_loop()
        a._task.cancel()  # a dies: no release, no more renewals
        died = loop.time()
        while not b.is_leading():
            overlap.append(a.is_leading() and b.is_leading())
            await asyncio.sleep(0.01)
        took = loop.time() - died
        await b.stop()
        return took, overlap

    took, overlap = run(main())
    assert not any(overlap)
    assert 0.6 < took < 1.0 + 3 * 0.1 * 2.2 + 0.2, took  # a lease duration after b last saw a renewal
    assert events == [("started", "a"), ("started", "b")]
    assert server.spec()["holderIdentity"] == "" and server.spec()["leaseTransitions"] == 1  # b released


def test_a_leader_that_cannot_renew_stops_before_anyone_can_take_over():
    """Bounds that hold however loaded the machine, each against the clock: the fence
    (is_leading) is never open at or after the renew deadline counted from the outage (every
    successful renewal began before it); the election loop stops leading no sooner than the renew
    deadline after the last renewal began, and before a standby could take over a lease duration
    after it. A lease duration well past the renew deadline leaves that margin to a slow loop."""
    server, events = FakeApiServer(), []
    timing = {**FAST, "lease_duration": 3.0}

    async def main():
        a = running(server, "a", events, **timing)
        a.start()
        while not a.is_leading():
            await asyncio.sleep(0.01)
        server.down = True  # an API outage, or a network partition of the leader
        cut = time.monotonic()
        open_late = []  # moments at or after the renew deadline at which the fence was still open
        while ("stopped", "a") not in events:
            sampled = time.monotonic()
            if a.is_leading() and sampled >= cut + timing["renew_deadline"]:
                open_late.append(sampled - cut)
            assert sampled - cut < 10, "the leader never stopped leading"
            await asyncio.sleep(0.005)
        stopped = time.monotonic()
        assert not a.is_leading()
        assert a._renewed_at < cut  # the last successful renewal began before the outage
        return stopped - a._renewed_at, open_late

    since_renewal, open_late = run(main())
    assert open_late == []  # the fence closed by the renew deadline
    assert since_renewal >= timing["renew_deadline"], since_renewal  # not before the deadline...
    assert since_renewal < timing["lease_duration"], since_renewal  # ...nor once a standby may lead


def test_the_fence_closes_at_the_renew_deadline_even_if_the_loop_is_stuck():
    server, clock = FakeApiServer(), Clock()
    a = elector(server, "a", clock)
    assert a.try_acquire_or_renew()
    a._leading = True  # as run() does once acquired
    clock.now += 9.9
    assert a.is_leading()
    clock.now += 0.2  # e.g. the process was paused (SIGSTOP) past the renew deadline
    assert not a.is_leading()


def test_a_leader_displaced_in_the_lease_stops_at_once():
    server, events = FakeApiServer(), []

    async def main():
        loop = asyncio.get_running_loop()
        a = running(server, "a", events, lease_duration=5, renew_deadline=4, retry_period=0.1)
        a.start()
        while not a.is_leading():
            await asyncio.sleep(0.01)
        lease = server.leases["operator"]
        lease["spec"]["holderIdentity"] = "intruder"
        lease["metadata"]["resourceVersion"] = "999"
        changed = loop.time()
        while ("stopped", "a") not in events:
            await asyncio.sleep(0.01)
        return loop.time() - changed

    assert run(main()) < 0.5  # not the 4 s renew deadline


def test_stop_releases_the_lease_so_a_successor_starts_at_once():
    server, events = FakeApiServer(), []

    async def main():
        loop = asyncio.get_running_loop()
        a = running(server, "a", events, lease_duration=30, renew_deadline=20, retry_period=0.1)
        b = running(server, "b", events, lease_duration=30, renew_deadline=20, retry_period=0.1)
        a.start()
        while not a.is_leading():
            await asyncio.sleep(0.01)
        b.start()
        await asyncio.sleep(0.3)
        await a.stop()
        assert not a.is_leading() and ("stopped", "a") not in events  # a clean stop, not a loss
        released = loop.time()
        while not b.is_leading():
            await asyncio.sleep(0.01)
        took = loop.time() - released
        await b.stop()
        return took

    assert run(main()) < 1.0  # a retry period or two, not the 30 s lease duration
