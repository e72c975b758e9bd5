"""The reconcile queue: events coalesce, one key is never reconciled twice at once, retries back
off per key (controller-runtime's limiters), the API server's Retry-After is honoured, metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time

import pytest
from prometheus_client import REGISTRY

from llmpack.runtime.kube import KubeClient, KubeError
from llmpack.runtime.workqueue import ItemExponentialBackoff, RateLimiter, TokenBucket, WorkQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def until(condition, timeout=5.0, what="the condition"):
    """Poll until condition() holds; fail after `timeout` seconds (generous: a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


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
    calls = []  # (when, the key's failure count as the call began)

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append((loop.time(), queue.num_requeues(key)))
            if len(calls) <= 3:
                raise RuntimeError("failing")
            return 0.15 if len(calls) == 4 else None  # waiting for something: RequeueAfter

        queue = WorkQueue(process, workers=1, name="test-requeue-after")
        queue.start()
        queue.add("a")
        await until(lambda: len(calls) >= 5, what="the requeue after the 4th call")
        await asyncio.sleep(0.2)  # and nothing more: the 5th returned None
        await queue.stop()

    run(main())
    assert len(calls) == 5
    assert [failures for _, failures in calls] == [0, 1, 2, 3, 0]  # the success forgot the failures
    assert calls[4][0] - calls[3][0] >= 0.14  # the plain delay, not a 40 ms backoff


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


def test_stop_starts_no_queued_key_and_drains_only_those_being_processed():
    """SIGTERM with a backlog: the keys still queued are not started during the drain (they
    would be cancelled mid-call), the one being processed is waited for."""
    calls = []

    async def main():
        release = asyncio.Event()

        async def process(key):
            calls.append((key, queue.shut_down))
            if key == "a":
                await release.wait()

        queue = WorkQueue(process, workers=1, name="test-stop-backlog")
        for key in ("a", "b", "c"):
            queue.add(key)
        queue.start()
        await until(lambda: calls, what="a to start")
        stopping = asyncio.create_task(queue.stop(drain=5))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # draining: a is still being processed
        release.set()
        began = time.monotonic()
        await stopping
        assert time.monotonic() - began < 2  # returned once a finished, not after the 5 s drain
        assert queue.depth == 2  # b and c were left queued, never started

    run(main())
    assert calls == [("a", False)]


def test_retry_after_outlasts_an_earlier_timer_set_during_the_reconcile():
    """The reconcile schedules a look soon (enqueue_soon's add_after), then fails with the API
    server's Retry-After: the earlier timer must not bring the key back before the Retry-After."""
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append(loop.time())
            if len(calls) == 1:
                queue.add_after(key, 0.02)  # e.g. a pod problem seen mid-reconcile
                raise KubeError(429, "TooManyRequests", "slow down", retry_after=0.3)

        queue = WorkQueue(process, workers=1, name="test-retry-after-timer", expected_errors=(KubeError,))
        queue.start()
        queue.add("a")
        await until(lambda: len(calls) >= 2, what="the retry")
        await queue.idle.wait()
        assert "a" not in queue._not_before  # the success cleared the deadline
        await queue.stop()

    run(main())
    assert calls[1] - calls[0] >= 0.29, calls


def test_a_watch_event_does_not_bring_a_retry_after_forward_but_does_an_ordinary_backoff():
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append((key, loop.time()))
            if len([k for k, _ in calls if k == key]) == 1:
                if key == "throttled":
                    raise KubeError(429, "TooManyRequests", "slow down", retry_after=0.3)
                raise RuntimeError("an ordinary failure")  # backed off 5 s here

        queue = WorkQueue(
            process,
            workers=2,
            name="test-retry-after-event",
            expected_errors=(KubeError, RuntimeError),
            rate_limiter=RateLimiter(backoff=ItemExponentialBackoff(base=5.0)),
        )
        queue.start()
        queue.add("throttled")
        queue.add("failing")
        await until(lambda: len(calls) >= 2, what="both first calls")
        await until(lambda: not queue._processing, what="both first calls to end")
        queue.add("throttled")  # watch events for both keys
        queue.add("failing")
        await until(lambda: len(calls) >= 4, what="the retries")
        await queue.stop()

    run(main())
    firsts = {k: t for k, t in calls[:2]}
    seconds = {k: t for k, t in calls[2:]}
    assert seconds["throttled"] - firsts["throttled"] >= 0.29, calls  # waited for Retry-After
    assert seconds["failing"] - firsts["failing"] < 4, calls  # the event beat the 5 s backoff


def test_a_key_changed_during_a_throttled_reconcile_waits_for_the_retry_after():
    calls = []

    async def main():
        loop = asyncio.get_running_loop()

        async def process(key):
            calls.append(loop.time())
            if len(calls) == 1:
                queue.add(key)  # a watch event mid-reconcile: the key is dirty
                raise KubeError(503, "ServiceUnavailable", "busy", retry_after=0.3)

        queue = WorkQueue(process, workers=1, name="test-retry-after-dirty", expected_errors=(KubeError,))
        queue.start()
        queue.add("a")
        await until(lambda: len(calls) >= 2, what="the retry")
        await asyncio.sleep(0.05)
        await queue.stop()

    run(main())
    assert len(calls) == 2  # one retry, not one for the event and another for the Retry-After
    assert calls[1] - calls[0] >= 0.29, calls


def test_the_metrics_readers_survive_the_event_loop_changing_the_queue_meanwhile():
    """longest_running and unfinished_work run in the Prometheus HTTP thread while the loop
    adds and removes keys being processed: no "dictionary changed size during iteration", no
    min() of an empty sequence after the emptiness check."""
    queue = WorkQueue(lambda key: asyncio.sleep(0), workers=1, name="test-metrics-race")
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape():
        while not done.is_set():
            try:
                assert queue.longest_running() >= 0.0
                assert queue.unfinished_work() >= 0.0
            except BaseException as err:  # reported below, in the test
                errors.append(err)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not errors:
            for i in range(200):  # what the workers do to _processing
                queue._processing[i] = time.monotonic()
            for i in range(200):
                del queue._processing[i]
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert errors == []


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
