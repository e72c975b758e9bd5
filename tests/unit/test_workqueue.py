"""The reconcile queue: events coalesce, one key is never reconciled twice at once, retries back
off per key (controller-runtime's limiters), the API server's Retry-After is honoured, metrics."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from prometheus_client import REGISTRY

from llmpack.controller.kube import KubeClient, KubeError
from llmpack.controller.workqueue import ItemExponentialBackoff, RateLimiter, TokenBucket, WorkQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_many_events_for_one_key_collapse_into_one_reconcile():
    seen: list[str] = []

    async def main():
        async def process(key):
            seen.append(key)

        queue = WorkQueue(process, workers=2)
        for _ in range(50):
            queue.add("ns/a")
        queue.add("ns/b")
        queue.start()
        await asyncio.sleep(0)
        await queue.idle.wait()
        await queue.stop()

    run(main())
    assert sorted(seen) == ["ns/a", "ns/b"]


def test_a_key_changed_during_its_reconcile_is_reconciled_again_but_never_concurrently():
    running = set()
    overlaps = []
    calls = []

    async def main():
        release = asyncio.Event()

        async def process(key):
            if key in running:
                overlaps.append(key)
            running.add(key)
            calls.append(key)
            if len(calls) == 1:
                await release.wait()
            running.discard(key)

        queue = WorkQueue(process, workers=4)
        queue.start()
        queue.add("ns/a")
        while not calls:
            await asyncio.sleep(0.01)
        queue.add("ns/a")  # arrives mid-reconcile
        queue.add("ns/a")
        release.set()
        await asyncio.sleep(0.05)
        await queue.idle.wait()
        await queue.stop()

    run(main())
    assert calls == ["ns/a", "ns/a"]
    assert overlaps == []


def test_add_after_retries_and_an_immediate_add_supersedes_it():
    calls = []

    async def main():
        async def process(key):
            calls.append((key, round(asyncio.get_running_loop().time(), 2)))

        queue = WorkQueue(process, workers=1)
        queue.start()
        queue.add_after("ns/a", 0.05)
        queue.add_after("ns/b", 30)
        queue.add("ns/b")  # supersedes the 30 s retry
        await asyncio.sleep(0.2)
        await queue.idle.wait()
        await queue.stop()

    run(main())
    assert [key for key, _ in calls] == ["ns/b", "ns/a"]


def test_a_crashing_reconcile_does_not_kill_the_worker_and_is_retried_with_backoff():
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append((key, loop.time()))
            if key == "bad" and len([k for k, _ in calls if k == "bad"]) <= 3:
                raise RuntimeError("bug")

        queue = WorkQueue(process, workers=1, name="test-crash")
        queue.start()
        queue.add("bad")
        queue.add("good")
        await asyncio.sleep(0.3)
        assert queue.num_requeues("bad") == 0  # forgotten once it succeeded
        await queue.stop()

    run(main())
    assert [k for k, _ in calls] == ["bad", "good", "bad", "bad", "bad"]
    times = [t for k, t in calls if k == "bad"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, least in zip(gaps, (0.005, 0.010, 0.020), strict=True):  # 5 ms doubling
        assert gap >= least * 0.9, gaps


def test_per_item_backoff_doubles_from_5ms_to_1000s_and_forget_resets_it():
    backoff = ItemExponentialBackoff()
    delays = [backoff.when("a") for _ in range(21)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[17] == pytest.approx(655.36)
    assert delays[18:] == [1000.0, 1000.0, 1000.0]
    assert backoff.when("b") == 0.005  # per key
    assert backoff.num_requeues("a") == 21
    backoff.forget("a")
    assert backoff.num_requeues("a") == 0 and backoff.when("a") == 0.005


def test_token_bucket_allows_a_burst_of_100_then_10_per_second():
    now = [0.0]
    bucket = TokenBucket(qps=10, burst=100, clock=lambda: now[0])
    assert [bucket.when() for _ in range(100)] == [0.0] * 100
    assert [round(bucket.when(), 3) for _ in range(3)] == [0.1, 0.2, 0.3]  # each waits its turn
    now[0] += 1.3  # the 3 reserved tokens are repaid, 10 more refill
    assert [bucket.when() for _ in range(10)] == [0.0] * 10
    assert bucket.when() > 0


def test_many_failing_keys_are_limited_overall_not_only_per_key():
    """An API outage fails every key at once: their first retries spread out at 10/s after the
    burst instead of all hitting the API server again 5 ms later."""
    now = [0.0]
    limiter = RateLimiter(bucket=TokenBucket(clock=lambda: now[0]))
    delays = [limiter.when(f"key-{i}") for i in range(150)]
    assert delays[:100] == [0.005] * 100
    assert delays[100] == pytest.approx(0.1) and delays[149] == pytest.approx(5.0)


def test_retry_after_from_the_api_server_is_the_minimum_delay():
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append(loop.time())
            if len(calls) == 1:
                raise KubeError(429, "TooManyRequests", "slow down", retry_after=0.2)

        queue = WorkQueue(process, workers=1, name="test-retry-after", expected_errors=(KubeError,))
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.4)
        await queue.stop()

    run(main())
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.19  # not the 5 ms of a first failure


def test_retry_after_is_read_from_the_header_or_the_status_details():
    status = {"kind": "Status", "reason": "TooManyRequests", "message": "please try again later"}
    err = KubeClient._error(429, json.dumps(status).encode(), {"Retry-After": "3"})
    assert (err.status, err.reason, err.retry_after) == (429, "TooManyRequests", 3.0)
    status["details"] = {"retryAfterSeconds": 7}
    assert KubeClient._error(503, json.dumps(status).encode(), {}).retry_after == 7.0
    assert KubeClient._error(500, b"boom").retry_after is None


def test_requeue_after_is_a_plain_delay_and_resets_the_backoff():
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append(loop.time())
            if len(calls) <= 3:
                raise RuntimeError("failing")
            return 0.15 if len(calls) == 4 else None  # waiting for something: RequeueAfter

        queue = WorkQueue(process, workers=1, name="test-requeue-after")
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.1)
        assert len(calls) == 4 and queue.num_requeues("a") == 0  # the success forgot the failures
        await asyncio.sleep(0.2)
        await queue.stop()

    run(main())
    assert len(calls) == 5
    assert calls[4] - calls[3] >= 0.14


def test_nothing_runs_before_start_and_nothing_after_stop():
    calls = []

    async def main():
        async def process(key):
            calls.append(key)

        queue = WorkQueue(process, workers=2, name="test-standby")
        queue.add("a")
        queue.add_after("b", 0.01)  # no timers before start: b is simply pending
        await asyncio.sleep(0.05)
        assert calls == [] and queue.depth == 2
        queue.start()
        await asyncio.sleep(0.01)
        await queue.idle.wait()
        assert sorted(calls) == ["a", "b"]
        queue.add_after("c", 0.05)
        await queue.stop()  # the pending timer goes with it
        queue.add("d")
        queue.start()  # a stopped queue stays stopped
        await asyncio.sleep(0.1)

    run(main())
    assert sorted(calls) == ["a", "b"]


def sample(name: str, queue: str) -> float:
    return REGISTRY.get_sample_value(name, {"name": queue}) or 0.0


def test_metrics_use_controller_runtime_names():
    async def main():
        release = asyncio.Event()
        attempts = []

        async def process(key):
            attempts.append(key)
            if key == "slow":
                await release.wait()
            elif len(attempts) == 2:
                raise RuntimeError("once")

        queue = WorkQueue(process, workers=2, name="test-metrics")
        queue.add("slow")
        queue.add("flaky")
        queue.add("flaky")  # collapses: one add
        assert sample("workqueue_depth", "test-metrics") == 2
        assert sample("workqueue_adds_total", "test-metrics") == 2
        queue.start()
        await asyncio.sleep(0.2)
        assert sample("workqueue_depth", "test-metrics") == 0
        assert sample("workqueue_retries_total", "test-metrics") == 1
        assert sample("workqueue_longest_running_processor_seconds", "test-metrics") >= 0.15
        assert sample("workqueue_unfinished_work_seconds", "test-metrics") >= 0.15
        release.set()
        await asyncio.sleep(0.01)
        await queue.idle.wait()
        assert sample("workqueue_longest_running_processor_seconds", "test-metrics") == 0
        assert sample("workqueue_work_duration_seconds_count", "test-metrics") == 3
        assert sample("workqueue_work_duration_seconds_sum", "test-metrics") >= 0.15
        assert sample("workqueue_queue_duration_seconds_count", "test-metrics") == 3
        await queue.stop()

    run(main())
