"""A work queue with controller-runtime's semantics, for level-triggered reconciles.

Watch events only say "look at this object again": many events for one object collapse into one
pending key, a key is never processed by two workers at once, and a key that changes while it is
being processed is processed once more afterwards.

What a reconcile returns decides what happens next, as in controller-runtime's reconcileHandler:
- it returns None: success, the key's failure count is forgotten;
- it returns a number of seconds: success, forgotten, and looked at again after that plain delay
  (RequeueAfter: waiting for a profiling Job is not a failure and is not backed off);
- it raises: the key is re-added rate limited: the larger of its own exponential backoff
  (5 ms doubling per consecutive failure up to 1000 s, client-go's
  ItemExponentialFailureRateLimiter) and the overall token bucket (10 qps, burst 100, the
  BucketRateLimiter of DefaultControllerRateLimiter), and never sooner than a `retry_after` the
  exception carries (the API server's Retry-After on a 429 or 503).

The API server's Retry-After is a minimum delay: add_rate_limited with a `min_delay` sets the
key's "not before" deadline, and until it passes nothing processes the key: not a watch event's
add(), not an earlier add_after() timer (an enqueue_soon set during the failed reconcile), not
the re-add of a key that changed while it was processed; each of them waits for the deadline
instead. Only the server's Retry-After sets it, not the ordinary exponential backoff or the token
bucket: a watch event still brings an ordinary backoff forward, as in client-go. The deadline is
cleared when the key succeeds (forget).

The workers and timers run only between start() and stop(): a replica that is not the leader
collects keys but reconciles nothing, and a stopped queue forgets its timers at once. Once
stop() is called no key is handed out any more: keys still queued stay queued, and the drain
waits only for the keys already being processed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from llmpack.runtime import metrics

logger = logging.getLogger(__name__)

Key = Hashable
K = TypeVar("K", bound=Hashable)  # what one WorkQueue holds: the operator's (namespace, name)
Process = Callable[[K], Awaitable[float | None]]


@dataclass
class ItemExponentialBackoff:
    """Per-key backoff: base * 2**failures, capped (client-go's ItemExponentialFailureRateLimiter)."""

    base: float = 0.005
    cap: float = 1000.0
    failures: dict[Key, int] = field(default_factory=dict)

    def when(self, key: Key) -> float:
        exponent = self.failures.get(key, 0)
        self.failures[key] = exponent + 1
        if exponent >= 64:  # 2**64 * base overflows any sane cap; client-go guards the same way
            return self.cap
        return min(self.base * 2.0**exponent, self.cap)

    def forget(self, key: Key) -> None:
        self.failures.pop(key, None)

    def num_requeues(self, key: Key) -> int:
        return self.failures.get(key, 0)


@dataclass
class TokenBucket:
    """An overall limit on retries (golang.org/x/time/rate's Reserve): every retry takes a token,
    tokens refill at `qps` up to `burst`; when none is left the retry waits for its turn."""

    qps: float = 10.0
    burst: int = 100
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._last = self.clock()

    def when(self, key: Key = None) -> float:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


@dataclass
class RateLimiter:
    """The larger of the per-key backoff and the overall bucket (client-go's MaxOfRateLimiter, as
    in controller-runtime's DefaultControllerRateLimiter)."""

    backoff: ItemExponentialBackoff = field(default_factory=ItemExponentialBackoff)
    bucket: TokenBucket = field(default_factory=TokenBucket)

    def when(self, key: Key) -> float:
        return max(self.backoff.when(key), self.bucket.when(key))

    def forget(self, key: Key) -> None:
        self.backoff.forget(key)

    def num_requeues(self, key: Key) -> int:
        return self.backoff.num_requeues(key)


def retry_after_of(error: BaseException) -> float | None:
    """The minimum delay an error asks for (KubeError.retry_after from the API server's
    Retry-After header or Status details.retryAfterSeconds), if any."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


class WorkQueue(Generic[K]):
    def __init__(
        self,
        process: Process[K],
        workers: int = 4,
        *,
        name: str = "default",
        rate_limiter: RateLimiter | None = None,
        expected_errors: tuple[type[BaseException], ...] = (),
    ):
        self._process = process
        self._workers = workers
        self.name = name
        self.rate_limiter = rate_limiter or RateLimiter()
        # Errors logged as one line (an API error is news, not a bug); others with their traceback.
        self._expected = expected_errors
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._added_at: dict[K, float] = {}
        self._processing: dict[K, float] = {}  # key -> when its processing began (monotonic)
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        # key -> time.monotonic() before which it must not be processed (the server's Retry-After)
        self._not_before: dict[K, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.running = False
        self.shut_down = False
        self.idle = asyncio.Event()
        self.idle.set()
        metrics.register_workqueue(self)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.running or self.shut_down:
            return
        self.running = True
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self, *, drain: float = 0.0) -> None:
        """Stop for good: timers are cancelled at once, no key is handed out any more, and the
        workers are cancelled after waiting up to `drain` seconds for the keys being processed.
        (A cancelled worker stops waiting; a reconcile already running in a thread finishes its
        current API call. The leader fence in leader.py refuses its writes once not leading.)"""
        self.shut_down = True
        self.running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if drain > 0 and self._processing:
            deadline = time.monotonic() + drain
            while self._processing and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- adding -----------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        if self.shut_down:
            return
        if self.running and key not in self._processing and key not in self._queued:
            hold = self._hold(key)
            if hold > 0:  # the API server's Retry-After has not passed: wait for it, not sooner
                self._schedule(key, hold, not_before=hold)
                return
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._added_at[key] = time.monotonic()
            metrics.WORKQUEUE_ADDS.labels(name=self.name).inc()
            self.idle.clear()
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Re-add later; an earlier pending re-add of the same key wins (no pile-up), unless it
        would come before the key's "not before" deadline. Before start() there are no timers:
        the key is simply pending, to be processed once leading."""
        if self.shut_down or key in self._queued or key in self._dirty:
            return
        if not self.running:
            self.add(key)
            return
        hold = self._hold(key)
        delay = max(delay, hold)
        if delay <= 0:
            self.add(key)
            return
        self._schedule(key, delay, not_before=hold)

    def add_rate_limited(self, key: K, min_delay: float | None = None) -> float:
        """Retry after a failure: the rate limiter's delay, at least `min_delay` (the API server's
        Retry-After), which also becomes the key's "not before" deadline. Returns the delay."""
        delay = self.rate_limiter.when(key)
        if min_delay is not None and min_delay > 0:
            delay = max(delay, min_delay)
            deadline = time.monotonic() + min_delay
            self._not_before[key] = max(self._not_before.get(key, deadline), deadline)
        metrics.WORKQUEUE_RETRIES.labels(name=self.name).inc()
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its failures and any Retry-After deadline are forgotten."""
        self.rate_limiter.forget(key)
        self._not_before.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self.rate_limiter.num_requeues(key)

    def _hold(self, key: K) -> float:
        """Seconds until the key's "not before" deadline (the server's Retry-After); 0 if none."""
        deadline = self._not_before.get(key)
        return 0.0 if deadline is None else max(0.0, deadline - time.monotonic())

    def _schedule(self, key: K, delay: float, *, not_before: float = 0.0) -> None:
        """A timer re-adds the key in `delay` seconds. A pending timer that fires sooner is kept,
        unless it fires before `not_before` seconds from now (the key's deadline)."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None:
            remaining = existing.when() - loop.time()
            if not_before <= remaining <= delay:
                return
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)  # which waits on, should the key's deadline not have passed yet

    # -- what the metrics read --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queued) + len(self._processing)

    @property
    def depth(self) -> int:
        """Keys waiting for a worker (workqueue_depth), not those being processed or delayed."""
        return len(self._queued)

    # Both are called from the Prometheus HTTP server's thread while the event loop changes
    # _processing: they read one snapshot (tuple() copies it without running Python code, so
    # under the GIL without another thread's change in between), never the live dict twice.

    def _began(self) -> tuple[float, ...]:
        """When the keys being processed began, as one snapshot. Read from the Prometheus thread
        while the event loop changes the dict: even copying it can be interrupted (a garbage
        collection run mid-copy may switch threads), so a copy the loop disturbed is taken again."""
        while True:
            try:
                return tuple(self._processing.values())
            except RuntimeError:  # "dictionary changed size during iteration"
                continue

    def longest_running(self) -> float:
        began = self._began()
        return time.monotonic() - min(began) if began else 0.0

    def unfinished_work(self) -> float:
        began = self._began()
        now = time.monotonic()
        return sum(now - b for b in began)

    # -- the workers ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            if not self.running:  # stop() was called: start no new key, leave it queued
                self._queue.put_nowait(key)
                return
            self._queued.discard(key)
            began = time.monotonic()
            added = self._added_at.pop(key, began)
            metrics.WORKQUEUE_QUEUE_SECONDS.labels(name=self.name).observe(began - added)
            self._processing[key] = began
            try:
                requeue_after = await self._process(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a failed reconcile, or a bug in one: retry, backed off
                delay = self.add_rate_limited(key, retry_after_of(err))
                attempt = self.num_requeues(key)
                if isinstance(err, self._expected):
                    logger.warning("%s %s: %s; retry %d in %.3gs", self.name, key, err, attempt, delay)
                else:
                    logger.exception(
                        "%s %s failed unexpectedly; retry %d in %.3gs", self.name, key, attempt, delay
                    )
            else:
                self.forget(key)
                if requeue_after:
                    self.add_after(key, requeue_after)
            finally:
                self._processing.pop(key, None)
                metrics.WORKQUEUE_WORK_SECONDS.labels(name=self.name).observe(time.monotonic() - began)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._queued and not self._processing:
                    self.idle.set()
