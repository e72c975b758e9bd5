"""One replica's process: start it, relay its output to the pod log, wait until it is healthy, stop it.

Each replica runs in its own session (process group) because vLLM starts helper processes (the
engine core, compile workers); signalling the group reaches them too, so no orphan keeps GPU memory
after its server is gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
from typing import BinaryIO

import aiohttp

from llmpack.launcher.command import ReplicaCommand
from llmpack.launcher.health import probe_health

TAIL_LINES = 40
READ_CHUNK_BYTES = 64 * 1024


class ReplicaStartError(Exception):
    """A replica did not become healthy: the message says which, why, and its last output."""


class ReplicaProcess:
    def __init__(self, command: ReplicaCommand, log: BinaryIO | None = None) -> None:
        self.command = command
        self._log = log if log is not None else sys.stdout.buffer
        self._prefix = f"[replica {command.index}] ".encode()
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self.exited: asyncio.Task[int] | None = None

    @property
    def index(self) -> int:
        return self.command.index

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        env = {**os.environ, "LLMPACK_REPLICA_INDEX": str(self.index)}
        self._process = await asyncio.create_subprocess_exec(
            *self.command.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        self._relay = asyncio.create_task(self._relay_output(self._process.stdout))
        self.exited = asyncio.create_task(self._process.wait())

    async def wait_exited(self) -> int:
        """The exit code, once the process is gone. Shielded: a waiter being cancelled (shutdown)
        must not cancel the one task that reaps the process."""
        assert self.exited is not None, "start() first"
        return await asyncio.shield(self.exited)

    def tail(self) -> str:
        return "\n".join(self._tail)

    async def wait_until_healthy(
        self, session: aiohttp.ClientSession, *, health_path: str, timeout_s: float, poll_s: float
    ) -> None:
        """Return once GET health_path answers 200; raise ReplicaStartError on exit or timeout."""
        assert self.exited is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.exited.done():
                await self._drain_output()
                raise ReplicaStartError(self._exit_message(f"exited with code {self.exited.result()}"))
            if await probe_health(session, self.command.base_url, health_path, poll_s) is None:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ReplicaStartError(
                    self._exit_message(f"was not healthy within {timeout_s:g} s (--start-timeout)")
                )
            # Wake at once if the process exits instead of sleeping through it.
            await asyncio.wait({self.exited}, timeout=min(poll_s, remaining))

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the replica's process group, SIGKILL it after grace_s; return the exit code."""
        if self._process is None or self.exited is None:
            return None
        self._signal_group(signal.SIGTERM)
        done, _ = await asyncio.wait({self.exited}, timeout=grace_s)
        if not done:
            self._signal_group(signal.SIGKILL)
            await self.wait_exited()
        self.kill_leftovers()
        await self._drain_output()
        return self.exited.result()

    def kill_leftovers(self) -> None:
        """After the server process is gone, nothing else of its group may live on."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        assert self._process is not None
        # The group id is the leader's pid (start_new_session); it outlives the leader while any
        # member lives, so this also reaches helpers whose server already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    async def _drain_output(self) -> None:
        """Let the relay read what the process wrote last (its error message), briefly."""
        if self._relay is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._relay), timeout=2)

    def _exit_message(self, what_happened: str) -> str:
        command = " ".join(self.command.argv)
        tail = self.tail() or "(no output)"
        return f"replica {self.index} ({command}) {what_happened}; its last output:\n{tail}"

    async def _relay_output(self, stream: asyncio.StreamReader | None) -> None:
        """Copy output to the pod log line by line with the replica's prefix; keep the last lines.

        Reads chunks, not readline(): vLLM's progress bars write long lines with no newline."""
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(READ_CHUNK_BYTES):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._emit(line)
            if len(pending) > READ_CHUNK_BYTES:
                self._emit(pending)
                pending = b""
        if pending:
            self._emit(pending)

    def _emit(self, line: bytes) -> None:
        self._tail.append(line.decode(errors="replace").rstrip("\r"))
        self._log.write(self._prefix + line + b"\n")
        self._log.flush()
