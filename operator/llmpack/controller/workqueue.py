"""A work queue with client-go's semantics, for level-triggered reconciles.

Watch events only say "look at this object again": many events for one object collapse into one
pending key, a key is never processed by two workers at once, and a key that changes while it is
being processed is processed once more afterwards. Delayed re-adds implement retries with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)

Key = Hashable


class WorkQueue:
    def __init__(self, process: Callable[[Key], Awaitable[None]], workers: int = 4):
        self._process = process
        self._workers = workers
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task] = []
        self.idle = asyncio.Event()
        self.idle.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"llmpack-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self.idle.clear()
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Re-add later; an earlier pending retry for the same key wins (no pile-up)."""
        if key in self._queued or key in self._dirty:
            return
        existing = self._timers.get(key)
        loop = asyncio.get_running_loop()
        if existing and existing.when() <= loop.time() + delay:
            return
        if existing:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._processing)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            try:
                await self._process(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one reconcile must not stop the worker
                logger.exception("reconcile of %s failed unexpectedly; retrying in 30s", key)
                self.add_after(key, 30)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._queued and not self._processing:
                    self.idle.set()
