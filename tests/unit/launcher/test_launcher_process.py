"""`llmpack launch` as the kubelet runs it: a real process starting real stand-in servers."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testbed import free_ports  # hack/testbed, on sys.path through tests/conftest.py

pytestmark = pytest.mark.timeout(30)

FAKE_VLLM = Path(__file__).with_name("launcher_fake_vllm.py")


def free_port() -> int:
    """Below the ephemeral range (see hack/testbed/testbed.py free_ports): a port the kernel hands
    out for port 0 can meanwhile become some outgoing connection's source port."""
    (port,) = free_ports(1)
    return port


def free_port_range(count: int) -> int:
    """A first port such that it and the next count - 1 are free now."""
    for _ in range(50):
        first = free_port()
        if first + count > 65535:
            continue
        try:
            holders = []
            for port in range(first, first + count):
                holder = socket.socket()
                holders.append(holder)
                holder.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for holder in holders:
                holder.close()
    raise RuntimeError("no free port range")


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout_s} s: {what}")
        time.sleep(0.02)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for a parent that is not ours to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


class Launch:
    def __init__(self, tmp_path: Path, replicas: int, fake_flags: list[str], launcher_flags: list[str]):
        self.record = tmp_path / "events.jsonl"
        self.first_port = free_port_range(replicas)
        self.router_port = free_port()
        while self.first_port <= self.router_port < self.first_port + replicas:
            self.router_port = free_port()
        command = [sys.executable, str(FAKE_VLLM), "--record", str(self.record), *fake_flags]
        argv = [
            *(sys.executable, "-m", "llmpack.cli", "launch"),
            *("--replicas", str(replicas), "--first-port", str(self.first_port)),
            *("--router-host", "127.0.0.1", "--router-port", str(self.router_port)),
            *("--start-poll", "0.05", "--health-interval", "0.2", "--shutdown-grace", "5"),
            *launcher_flags,
            "--",
            *command,
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for_health(self, status: int) -> None:
        def answers_status() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"launcher exited early: {self.finish()}")
            return get(self.url("/healthz"))[0] == status

        wait_until(answers_status, what=f"/healthz answers {status}")

    def wait_for_serving(self, count: int, timeout_s: float = 10.0) -> dict:
        """The router's /readyz answer once exactly `count` replicas serve."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"launcher exited early: {self.finish()}")
            body = get(self.url("/readyz"))[1]
            return bool(body) and json.loads(body)["serving"] == count

        wait_until(serving, timeout_s=timeout_s, what=f"{count} replicas serving")
        return json.loads(get(self.url("/readyz"))[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.router_port}{path}"

    def finish(self, timeout_s: float = 15) -> tuple[int, str]:
        stdout, stderr = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, stdout.decode() + stderr.decode()

    def all_pids(self) -> set[int]:
        events = records(self.record)
        return {e["pid"] for e in events} | {e["helper_pid"] for e in events if "helper_pid" in e}


@pytest.fixture
def launches(tmp_path: Path) -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def launch(replicas: int, fake_flags: list[str], launcher_flags: list[str] = ()) -> Launch:
        started.append(Launch(tmp_path, replicas, fake_flags, list(launcher_flags)))
        return started[-1]

    yield launch
    for each in started:  # a failed test must not leave servers behind
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()
        for pid in each.all_pids():
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_replicas_start_one_after_another_serve_and_stop_on_sigterm(launches) -> None:
    launch = launches(3, ["--ready-after", "0.2", "--spawn-helper"])
    launch.wait_for_health(200)  # once the first serves: a startupProbe on /healthz passes here
    launch.wait_for_serving(3)

    events = records(launch.record)
    starts = {e["port"]: e["time"] for e in events if e["event"] == "start"}
    listening = {e["port"]: e["time"] for e in events if e["event"] == "listening"}
    ports = [launch.first_port + i for i in range(3)]
    assert sorted(starts) == ports
    for earlier, later in itertools.pairwise(ports):
        assert starts[later] >= listening[earlier], "a replica started before the previous was healthy"

    status, body = get(launch.url("/v1/models"))
    assert status == 200 and json.loads(body)["data"]

    launch.process.send_signal(signal.SIGTERM)
    code, output = launch.finish()
    assert code == 0, output
    assert "SIGTERM received" in output
    pids = launch.all_pids()
    assert len(pids) == 6  # three servers, three helpers
    wait_until(lambda: all(is_gone(pid) for pid in pids), timeout_s=5, what="no process left")


def test_a_replica_that_dies_after_start_leaves_the_pod_ready_and_alive_on_the_other(launches) -> None:
    launch = launches(2, [])
    launch.wait_for_serving(2)
    victim = next(e["pid"] for e in records(launch.record) if e["port"] == launch.first_port + 1)
    os.kill(victim, signal.SIGKILL)

    ready = launch.wait_for_serving(1)
    assert ready["ok"] and ready["notServing"] == [1]
    assert ready["replicas"][1]["reason"] == "process exited with code -9"
    assert get(launch.url("/healthz"))[0] == 200  # restarting the pod would stop replica 0 too
    for _ in range(4):  # the survivor takes everything
        assert get(launch.url("/v1/models"))[0] == 200
    assert metric_value(launch, "llmpack_router_replicas_serving") == 1

    launch.process.send_signal(signal.SIGTERM)
    code, output = launch.finish()
    assert code == 0, output
    assert "replica 1 exited with code -9" in output


def test_a_dead_server_is_seen_at_once_and_its_helpers_are_killed(launches) -> None:
    """Like vLLM's engine core, the helper keeps the server's output pipe open after the server is
    killed: the launcher must see the exit anyway, and kill the helper. Health checks are made too
    rare here to be what notices it."""
    launch = launches(2, ["--spawn-helper"], ["--health-interval", "600"])
    launch.wait_for_serving(2)
    events = records(launch.record)
    port = launch.first_port + 1
    victim = next(e["pid"] for e in events if e["event"] == "start" and e["port"] == port)
    helper = next(e["helper_pid"] for e in events if e["event"] == "helper" and e["port"] == port)
    os.kill(victim, signal.SIGKILL)

    launch.wait_for_serving(1, timeout_s=3)  # the exit seen
    wait_until(lambda: is_gone(helper), timeout_s=3, what="the dead server's helper killed")
    # Orphaned, the helper became the launcher's child (as vLLM's engine core becomes the child of
    # llmpack, PID 1 in its container), which must reap it rather than keep a zombie.
    wait_until(lambda: not Path(f"/proc/{helper}").exists(), timeout_s=7, what="the helper reaped")
    exits = {
        s.labels["replica"]: s.value
        for f in text_string_to_metric_families(get(launch.url("/metrics"))[1].decode())
        if f.name == "llmpack_replica_exits"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert exits == {"1": 1.0}
    assert get(launch.url("/v1/models"))[0] == 200  # the other replica serves on

    launch.process.send_signal(signal.SIGTERM)
    code, output = launch.finish()
    assert code == 0, output
    assert "replica 1 exited with code -9" in output
    assert f"killed the 1 processes its server left behind (pids {helper})" in output, output
    wait_until(lambda: all(is_gone(pid) for pid in launch.all_pids()), timeout_s=5, what="no process left")


def metric_value(launch: Launch, family: str) -> float:
    text = get(launch.url("/metrics"))[1].decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name in (family, family + "_total")
    )


def test_a_hung_replica_times_out_requests_and_a_pod_with_none_serving_fails_liveness(launches) -> None:
    """SIGSTOP: the process lives, its socket accepts, nothing answers, as with a wedged engine."""
    launch = launches(1, [], ["--read-timeout", "1", "--unserving-grace", "1"])
    launch.wait_for_serving(1)
    (replica,) = launch.all_pids()
    os.kill(replica, signal.SIGSTOP)
    try:
        started = time.monotonic()
        json_type = {"Content-Type": "application/json"}
        request = urllib.request.Request(launch.url("/v1/completions"), b'{"prompt": "hi"}', json_type)
        with pytest.raises(urllib.error.HTTPError) as answered:
            urllib.request.urlopen(request, timeout=10)
        assert answered.value.code == 504
        assert 1 <= time.monotonic() - started < 5
        # The recheck it asked for times out too (5 s): unready, then not alive a second later.
        wait_until(lambda: get(launch.url("/readyz"))[0] == 503, timeout_s=10, what="unready")
        wait_until(lambda: get(launch.url("/healthz"))[0] == 503, timeout_s=5, what="not alive")
        assert metric_value(launch, "llmpack_router_replicas_serving") == 0
    finally:
        os.kill(replica, signal.SIGCONT)
    launch.wait_for_health(200)  # back before the kubelet acted: alive again
    launch.process.send_signal(signal.SIGTERM)
    code, output = launch.finish()
    assert code == 0, output
    assert "replica 0: sent nothing for 1 s before answering" in output


def test_a_replica_crashing_during_start_fails_the_launch_with_its_output(launches) -> None:
    launch = launches(
        2,
        [],
        ["--replica-args=", "--replica-args=--exit-after 0.05 --exit-code 7"],
    )
    code, output = launch.finish()
    assert code == 1
    assert "replica 1" in output and "exited with code 7" in output
    assert "CUDA out of memory (fake)" in output  # the tail of its output, in the launcher's error
    wait_until(lambda: all(is_gone(pid) for pid in launch.all_pids()), timeout_s=5, what="no process left")


def test_a_replica_not_healthy_in_time_fails_the_launch(launches) -> None:
    launch = launches(1, ["--ready-after", "60"], ["--start-timeout", "0.5"])
    code, output = launch.finish()
    assert code == 1
    assert "was not healthy within 0.5 s (--start-timeout)" in output
    wait_until(lambda: all(is_gone(pid) for pid in launch.all_pids()), timeout_s=5, what="no process left")


def test_the_launcher_exits_1_when_every_replica_has_exited(launches) -> None:
    launch = launches(1, [])
    launch.wait_for_health(200)
    os.kill(next(iter(launch.all_pids())), signal.SIGKILL)
    code, output = launch.finish()
    assert code == 1
    assert "every replica has exited" in output


def test_sigterm_during_the_staggered_start_stops_the_starting_replica(launches) -> None:
    launch = launches(2, ["--ready-after", "60", "--spawn-helper"])
    wait_until(lambda: any(e["event"] == "helper" for e in records(launch.record)), what="replica 0 started")
    launch.process.send_signal(signal.SIGTERM)
    code, output = launch.finish()
    assert code == 0, output
    assert [e["port"] for e in records(launch.record) if e["event"] == "start"] == [launch.first_port]
    wait_until(lambda: all(is_gone(pid) for pid in launch.all_pids()), timeout_s=5, what="no process left")


def test_an_engine_not_on_path_fails_the_launch_with_a_clear_message() -> None:
    """`vllm` must resolve on PATH: if it does not, say so (exit 1), rather than a traceback."""
    launch = subprocess.run(
        [
            *(sys.executable, "-m", "llmpack.cli", "launch", "--router-host", "127.0.0.1"),
            *("--first-port", str(free_port()), "--router-port", str(free_port())),
            *("--", "no-such-engine-llmpack", "serve", "m"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert launch.returncode == 1, launch.stderr
    assert "replica 0 (no-such-engine-llmpack serve m" in launch.stdout + launch.stderr
    assert "could not be started" in launch.stdout + launch.stderr
    assert "Traceback" not in launch.stdout + launch.stderr
