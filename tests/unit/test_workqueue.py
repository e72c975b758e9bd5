"""The reconcile queue: events coalesce, one key is never reconciled twice at once, retries."""

from __future__ import annotations

import asyncio

from llmpack.controller.workqueue import WorkQueue


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


def test_a_crashing_reconcile_does_not_kill_the_worker():
    calls = []

    async def main():
        async def process(key):
            calls.append(key)
            if key == "bad":
                raise RuntimeError("bug")

        queue = WorkQueue(process, workers=1)
        queue.start()
        queue.add("bad")
        queue.add("good")
        await asyncio.sleep(0.05)
        await queue.stop()

    run(main())
    assert calls == ["bad", "good"]
