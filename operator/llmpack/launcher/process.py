"""One replica's process: start it, relay its output to the launcher's, wait until it is healthy, stop it.

Each replica runs in its own session (process group) because vLLM starts helper processes: its API
server forks a multiprocessing resource tracker and the engine core (`VLLM::EngineCore`), which
starts the model worker (`VLLM::Worker`), and those hold the GPU memory. Signalling the group
reaches them too, so no orphan keeps GPU memory after its server is gone.

The server's exit is seen by itself, not through its output pipe. Those helpers inherit the pipe, so
it stays open after the server dies, and asyncio's `Process.wait()` returns only once the process
has exited *and* every pipe to it is closed: with a dead API server and a live engine core it never
returns (observed with vLLM 0.32). The protocol below gets the exit (`process_exited`, from the
child watcher that reaps it) and the output as separate events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO

import aiohttp

from llmpack.launcher.command import ReplicaCommand
from llmpack.launcher.health import probe_health

TAIL_LINES = 40
READ_CHUNK_BYTES = 64 * 1024
GROUP_POLL_S = 0.05
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class ReplicaStartError(Exception):
    """A replica did not become healthy: the message says which, why, and its last output."""


class _ReplicaProtocol(asyncio.SubprocessProtocol):
    """The replica's output as it comes, and its exit the moment it is reaped (pipes or not)."""

    def __init__(self, process: ReplicaProcess) -> None:
        self._process = process
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self._process._on_output(data if isinstance(data, bytes) else data.encode())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._process._on_output_closed()

    def process_exited(self) -> None:
        assert self.transport is not None
        code = self.transport.get_returncode()
        self._process._on_exit(-1 if code is None else code)

    def connection_lost(self, exc: Exception | None) -> None:
        self._process._on_output_closed()


class ReplicaProcess:
    def __init__(self, command: ReplicaCommand, log: BinaryIO | None = None) -> None:
        self.command = command
        self._log = log if log is not None else sys.stdout.buffer
        self._prefix = f"[replica {command.index}] ".encode()
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pending = b""
        self._transport: asyncio.SubprocessTransport | None = None
        self._pid: int | None = None
        self._output_closed: asyncio.Future[None] | None = None
        # The server's exit code once it is gone (a signal is minus its number, e.g. -9).
        self.exited: asyncio.Future[int] | None = None

    @property
    def index(self) -> int:
        return self.command.index

    @property
    def pid(self) -> int | None:
        return self._pid

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.exited = loop.create_future()
        self._output_closed = loop.create_future()
        env = {**os.environ, "LLMPACK_REPLICA_INDEX": str(self.index)}
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: _ReplicaProtocol(self),
                *self.command.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except OSError as err:  # not found on PATH, not executable
            self.exited = None
            raise ReplicaStartError(self._exit_message(f"could not be started: {err}")) from err
        self._transport = transport
        self._pid = transport.get_pid()

    async def wait_exited(self) -> int:
        """The exit code, once the server process is gone. Shielded: a waiter being cancelled
        (shutdown) must not cancel the future every other waiter shares."""
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
        """SIGTERM the replica's processes, SIGKILL what is left after grace_s; return the server's
        exit code. The engine core may still be shutting down when the server has exited, so the
        grace is for all of them, not the server alone."""
        if self._transport is None or self.exited is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        self._signal_all(signal.SIGTERM)
        await asyncio.wait({self.exited}, timeout=grace_s)
        while self.members() and loop.time() < deadline:
            await asyncio.sleep(GROUP_POLL_S)
        self.kill_leftovers()
        await self.wait_exited()
        await self.wait_members_gone(5.0)
        await self._drain_output()
        self._transport.close()
        return self.exited.result()

    def kill_leftovers(self) -> list[int]:
        """SIGKILL whatever of the replica still runs (once its server is gone, nothing of it may
        live on); return the pids signalled."""
        return self._signal_all(signal.SIGKILL)

    async def wait_members_gone(self, timeout_s: float) -> list[int]:
        """Wait until no process of the replica runs; return those still running at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := self.members()) and loop.time() < deadline:
            await asyncio.sleep(GROUP_POLL_S)
        return left

    def members(self) -> list[int]:
        """The replica's running processes: its session (start_new_session made the server the
        leader of a session and of a process group whose ids are its pid), zombies left out."""
        if self._pid is None:
            return []
        return session_members(self._pid)

    def _signal_all(self, signum: int) -> list[int]:
        assert self._pid is not None
        members = self.members()
        # The group id is the leader's pid; it outlives the leader while any member lives, so this
        # also reaches helpers whose server already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signum)
        for pid in members:  # a helper that made a process group of its own, in the same session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        return members

    # --- events from the protocol -------------------------------------------------------------

    def _on_exit(self, code: int) -> None:
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(code)

    def _on_output(self, data: bytes) -> None:
        """Copy output to the launcher's own line by line with the replica's prefix; keep the last lines.

        Takes chunks, not lines: vLLM's progress bars write long lines with no newline."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            self._emit(line)
        if len(self._pending) > READ_CHUNK_BYTES:
            self._emit(self._pending)
            self._pending = b""

    def _on_output_closed(self) -> None:
        if self._output_closed is None or self._output_closed.done():
            return
        if self._pending:
            self._emit(self._pending)
            self._pending = b""
        self._output_closed.set_result(None)

    async def _drain_output(self) -> None:
        """Let the relay take what the process wrote last (its error message), briefly."""
        if self._output_closed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._output_closed), timeout=2)

    def _exit_message(self, what_happened: str) -> str:
        command = " ".join(self.command.argv)
        tail = self.tail() or "(no output)"
        return f"replica {self.index} ({command}) {what_happened}; its last output:\n{tail}"

    def _emit(self, line: bytes) -> None:
        self._tail.append(line.decode(errors="replace").rstrip("\r"))
        self._log.write(self._prefix + line + b"\n")
        self._log.flush()


def session_members(session_id: int) -> list[int]:
    """Pids of the live processes (not zombies) whose session or process group is session_id."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command name (which may hold spaces and parentheses): state, ppid,
            # pgrp, session.
            state, _ppid, pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            if state not in ("Z", "X") and session_id in (int(pgrp), int(session)):
                members.append(int(stat.parent.name))
    return sorted(members)


def become_subreaper() -> bool:
    """Have the orphans of our replicas (vLLM's engine processes once their API server is gone)
    reparented to this process, as they are in a container where llmpack is PID 1; then
    reap_orphans() can collect them and tests see what a container does. False where Linux refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(keep: set[int]) -> list[int]:
    """Reap our exited children other than `keep` (the replica servers, which asyncio reaps): as
    PID 1 or a subreaper we inherit every orphaned engine process, and nothing else collects their
    exit, so each would stay a zombie until the container ends."""
    me, reaped = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            pid = int(stat.parent.name)
            if state == "Z" and int(ppid) == me and pid not in keep:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped.append(pid)
    return reaped
