"""The launcher's router against real HTTP servers on loopback standing in for vLLM (in process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from launcher_fake_vllm import FakeVllm, sse_chunk
from prometheus_client.parser import text_string_to_metric_families

from llmpack.launcher.health import HealthMonitor
from llmpack.launcher.replica import Replica, ReplicaState
from llmpack.launcher.router import REPLICA_HEADER, Router, upstream_session

pytestmark = pytest.mark.timeout(30)


class Upstream:
    """One fake vLLM listening on loopback, which a test can kill and bring back on the same port."""

    def __init__(self, name: str) -> None:
        self.fake = FakeVllm(name)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # handler_cancellation: like vLLM, which aborts a request whose client has gone.
        self._runner = web.AppRunner(
            self.fake.make_app(), access_log=None, shutdown_timeout=0.1, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        """Stop listening and drop open connections, as a crashed server would."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def routed(
    count: int, *, read_timeout_s: float | None = None, **limits: object
) -> AsyncIterator[tuple[list[Upstream], Router, str, aiohttp.ClientSession]]:
    upstreams = [Upstream(f"fake-{i}") for i in range(count)]
    for upstream in upstreams:
        await upstream.start()
    replicas = [Replica(i, u.url) for i, u in enumerate(upstreams)]
    for replica in replicas:
        replica.mark_healthy()
    async with (
        upstream_session(connect_timeout_s=2, read_timeout_s=read_timeout_s) as upstream_client,
        aiohttp.ClientSession() as client,
    ):
        router = Router(replicas, upstream_client, **limits)
        port = await router.start("127.0.0.1", 0)
        try:
            yield upstreams, router, f"http://127.0.0.1:{port}", client
        finally:
            await router.stop()
            for upstream in upstreams:
                await upstream.kill()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def complete(client: aiohttp.ClientSession, url: str, **payload: object) -> tuple[int, str, dict]:
    async with client.post(url + "/v1/completions", json={"prompt": "hi", **payload}) as response:
        return response.status, response.headers.get(REPLICA_HEADER, ""), await response.json()


def test_requests_go_to_the_replica_with_fewest_in_flight() -> None:
    async def scenario() -> None:
        async with routed(2) as (upstreams, router, url, client):
            first_wave = [asyncio.create_task(complete(client, url, hold=True)) for _ in range(6)]
            await eventually(lambda: sum(u.fake.completions for u in upstreams) == 6)
            assert [u.fake.completions for u in upstreams] == [3, 3]

            for _ in range(3):  # replica 0 finishes its three; replica 1 still holds three
                upstreams[0].fake.release_held.put_nowait(None)
            await eventually(lambda: router.replicas[0].in_flight == 0)
            second_wave = [asyncio.create_task(complete(client, url, hold=True)) for _ in range(3)]
            await eventually(lambda: upstreams[0].fake.completions == 6)
            assert upstreams[1].fake.completions == 3

            for _ in range(3):
                upstreams[0].fake.release_held.put_nowait(None)
                upstreams[1].fake.release_held.put_nowait(None)
            answers = await asyncio.gather(*first_wave, *second_wave)
            assert all(status == 200 for status, _, _ in answers)
            assert sorted(replica for _, replica, _ in answers) == ["0"] * 6 + ["1"] * 3

    asyncio.run(scenario())


def test_idle_replicas_take_turns() -> None:
    async def scenario() -> None:
        async with routed(3) as (upstreams, _router, url, client):
            for _ in range(9):
                assert (await complete(client, url))[0] == 200
            assert [u.fake.completions for u in upstreams] == [3, 3, 3]

    asyncio.run(scenario())


def test_stream_arrives_chunk_by_chunk_and_byte_for_byte() -> None:
    async def scenario() -> None:
        async with routed(1) as (upstreams, _router, url, client):
            fake = upstreams[0].fake
            payload = {"prompt": "hi", "stream": True, "chunks": 4, "gated": True}
            async with client.post(url + "/v1/completions", json=payload) as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                received = await response.content.readuntil(b"\n\n")
                # Chunk 0 is here while the replica has not been allowed to write chunk 1: nothing
                # between client and replica waited for the whole body.
                assert received == sse_chunk("fake-0", 0)
                for index in range(1, 4):
                    fake.next_chunk.put_nowait(None)
                    chunk = await response.content.readuntil(b"\n\n")
                    assert chunk == sse_chunk("fake-0", index)
                    received += chunk
                received += await response.content.read()
            expected = b"".join(sse_chunk("fake-0", i) for i in range(4)) + b"data: [DONE]\n\n"
            assert received == expected

    asyncio.run(scenario())


def test_streams_with_delays_are_relayed_intact_under_concurrency() -> None:
    async def read_stream(client: aiohttp.ClientSession, url: str) -> tuple[str, bytes]:
        payload = {"stream": True, "chunks": 5, "chunk_delay": 0.01}
        async with client.post(url + "/v1/chat/completions", json=payload) as response:
            return response.headers[REPLICA_HEADER], await response.read()

    async def scenario() -> None:
        async with routed(2) as (_upstreams, _router, url, client):
            results = await asyncio.gather(*(read_stream(client, url) for _ in range(8)))
            for replica, body in results:
                expected = b"".join(sse_chunk(f"fake-{replica}", i) for i in range(5))
                assert body == expected + b"data: [DONE]\n\n"
            assert {replica for replica, _ in results} == {"0", "1"}

    asyncio.run(scenario())


def test_a_dead_replica_gets_no_requests_and_none_is_lost() -> None:
    async def scenario() -> None:
        async with routed(2) as (upstreams, router, url, client):
            await upstreams[1].kill()  # the router has not noticed yet: no health monitor runs here
            answers = await asyncio.gather(*(complete(client, url, prompt=str(i)) for i in range(20)))
            assert [status for status, _, _ in answers] == [200] * 20
            assert {replica for _, replica, _ in answers} == {"0"}
            assert sorted(body["prompt"] for _, _, body in answers) == sorted(str(i) for i in range(20))
            assert router.replicas[1].state is ReplicaState.UNHEALTHY
            assert router.metrics.retries.labels("1")._value.get() >= 1

    asyncio.run(scenario())


def test_no_healthy_replica_is_a_503_that_names_them() -> None:
    async def scenario() -> None:
        async with routed(1) as (upstreams, _router, url, client):
            await upstreams[0].kill()
            async with client.post(url + "/v1/completions", json={}) as response:
                assert response.status == 503
                body = await response.json()
            assert body["error"] == "no healthy replica"
            assert body["replicas"][0]["state"] == "unhealthy"

    asyncio.run(scenario())


def test_health_monitor_brings_a_recovered_replica_back() -> None:
    async def scenario() -> None:
        async with routed(2) as (upstreams, router, url, client), upstream_session(1) as session:
            monitor = HealthMonitor(session, path="/health", interval_s=60, recheck_s=0.02, timeout_s=1)
            watchers = [asyncio.create_task(monitor.watch(r)) for r in router.replicas]
            await upstreams[1].kill()
            await complete(client, url)
            await complete(client, url)  # one of the two met the dead replica
            assert router.replicas[1].state is ReplicaState.UNHEALTHY

            await upstreams[1].start()  # same port
            await eventually(lambda: router.replicas[1].serving)
            async with client.get(url + "/healthz") as response:
                assert response.status == 200
            for watcher in watchers:
                watcher.cancel()

    asyncio.run(scenario())


def test_an_exited_replica_is_never_picked_again() -> None:
    async def scenario() -> None:
        async with routed(2) as (upstreams, router, url, client):
            router.replicas[0].mark_exited(-9)
            router.replicas[0].mark_healthy()  # a late health answer must not revive it
            answers = [await complete(client, url) for _ in range(4)]
            assert {replica for _, replica, _ in answers} == {"1"}
            assert upstreams[0].fake.completions == 0

    asyncio.run(scenario())


def test_a_response_broken_mid_stream_breaks_the_clients_response_too() -> None:
    async def scenario() -> None:
        async with routed(1) as (upstreams, router, url, client):
            payload = {"stream": True, "chunks": 3, "gated": True}
            async with client.post(url + "/v1/completions", json=payload) as response:
                await response.content.readuntil(b"\n\n")
                await upstreams[0].kill()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            await eventually(lambda: router.metrics.upstream_errors.labels("0", "response")._value.get() == 1)

    asyncio.run(scenario())


def gauge(metric) -> float:
    return metric._value.get()


def test_a_client_leaving_a_pending_answer_cancels_the_replicas_request() -> None:
    """A non-streaming completion sends nothing before it is done: only the handler's cancellation
    on disconnect can end the upstream request (aiohttp does not cancel handlers by default)."""

    async def scenario() -> None:
        async with routed(1) as (upstreams, router, url, client):
            fake, replica = upstreams[0].fake, router.replicas[0]
            asking = asyncio.create_task(complete(client, url, hold=True))
            await eventually(lambda: gauge(fake.running) == 1)
            asking.cancel()  # the client hangs up
            await eventually(lambda: gauge(fake.running) == 0)
            await eventually(lambda: gauge(router.metrics.client_disconnects.labels("0")) == 1)
            assert replica.in_flight == 0
            # Not the replica's fault: still serving, no error counted, no recheck asked for.
            assert replica.serving and not replica.recheck_now.is_set()
            assert gauge(router.metrics.upstream_errors.labels("0", "response")) == 0
            assert (await complete(client, url))[0] == 200

    asyncio.run(scenario())


def test_a_client_leaving_mid_stream_cancels_the_replicas_request() -> None:
    async def scenario() -> None:
        async with routed(1) as (upstreams, router, url, client):
            fake, replica = upstreams[0].fake, router.replicas[0]
            payload = {"stream": True, "chunks": 50, "gated": True}
            async with client.post(url + "/v1/completions", json=payload) as response:
                await response.content.readuntil(b"\n\n")
                assert gauge(fake.running) == 1
                response.close()  # the client hangs up mid-stream
            fake.next_chunk.put_nowait(None)  # whether the replica writes again or not
            await eventually(lambda: gauge(fake.running) == 0)
            await eventually(lambda: gauge(router.metrics.client_disconnects.labels("0")) == 1)
            assert replica.in_flight == 0
            assert replica.serving and not replica.recheck_now.is_set()
            assert gauge(router.metrics.upstream_errors.labels("0", "response")) == 0
            assert gauge(fake.success.labels("stop")) == 0  # the stream never finished

    asyncio.run(scenario())


def test_metrics_merge_every_replica_with_a_replica_label() -> None:
    async def scenario() -> None:
        async with routed(2) as (_upstreams, _router, url, client):
            for _ in range(4):
                await complete(client, url)
            async with client.get(url + "/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        success = families["vllm:request_success"].samples
        assert {(s.labels["replica"], s.value) for s in success} == {("0", 2.0), ("1", 2.0)}
        latency = families["vllm:e2e_request_latency_seconds"].samples
        assert {s.labels["replica"] for s in latency} == {"0", "1"}
        routed_requests = families["llmpack_router_requests"].samples
        totals = {s.labels["replica"]: s.value for s in routed_requests if s.name.endswith("_total")}
        assert totals == {"0": 2.0, "1": 2.0}
        assert "llmpack_router_requests_in_flight" in families
        assert "llmpack_router_retries" in families
        assert "llmpack_router_upstream_errors" in families
        assert "llmpack_router_client_disconnects" in families
        assert "llmpack_replica_exits" in families
        # One header per family, as the text format requires.
        assert text.count("# TYPE vllm:num_requests_running ") == 1

    asyncio.run(scenario())


def test_other_paths_and_methods_are_proxied() -> None:
    async def scenario() -> None:
        async with routed(1) as (_upstreams, _router, url, client):
            async with client.get(url + "/v1/models?x=1") as response:
                assert response.status == 200
                assert json.loads(await response.text())["data"][0]["owned_by"] == "fake-0"
            async with client.get(url + "/no/such/path") as response:
                assert response.status == 404  # the replica's answer, relayed
                assert response.headers[REPLICA_HEADER] == "0"

    asyncio.run(scenario())


async def answer(client: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with client.get(url) as response:
        return response.status, await response.json()


async def scraped(client: aiohttp.ClientSession, url: str, family: str) -> float:
    async with client.get(url + "/metrics") as response:
        text = await response.text()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name in (family, family + "_total")
    )


# --- one replica down, all down: readiness, liveness, and the serving gauge --------------------------


def test_one_replica_down_keeps_the_pod_ready_and_alive_and_the_gauge_says_so() -> None:
    async def scenario() -> None:
        async with routed(2, unserving_grace_s=60) as (upstreams, router, url, client):
            assert await scraped(client, url, "llmpack_router_replicas_serving") == 2
            await upstreams[1].kill()
            router.replicas[1].report_connection_failure("connection refused")
            for path in ("/readyz", "/healthz"):
                status, body = await answer(client, url + path)
                assert status == 200, path
                assert body["serving"] == 1 and body["notServing"] == [1]
            assert await scraped(client, url, "llmpack_router_replicas_serving") == 1
            assert await scraped(client, url, "llmpack_router_replicas") == 2
            assert (await complete(client, url))[:2] == (200, "0")

    asyncio.run(scenario())


def test_all_replicas_down_is_unready_at_once_and_not_alive_after_the_grace() -> None:
    async def scenario() -> None:
        async with routed(2, unserving_grace_s=0.3) as (_upstreams, router, url, client):
            router.replicas[0].mark_unhealthy("GET /health timed out")
            router.replicas[1].mark_exited(-9)
            status, body = await answer(client, url + "/readyz")
            assert status == 503 and body["serving"] == 0
            assert (await answer(client, url + "/healthz"))[0] == 200  # a blip is not a restart
            await asyncio.sleep(0.35)
            status, body = await answer(client, url + "/healthz")
            assert status == 503 and body["notServing"] == [0, 1]
            assert await scraped(client, url, "llmpack_router_replicas_serving") == 0

            router.replicas[0].mark_healthy()  # back before the kubelet acted: alive and ready again
            assert (await answer(client, url + "/healthz"))[0] == 200
            assert (await answer(client, url + "/readyz"))[0] == 200

    asyncio.run(scenario())


def test_a_replica_still_booting_keeps_the_pod_alive_after_the_first_one_died() -> None:
    """llmpack launch starts replica 1 once replica 0 serves: if replica 0 dies while replica 1
    is still loading, restarting the container would throw that boot away."""

    async def scenario() -> None:
        async with routed(2, unserving_grace_s=0.3) as (_upstreams, router, url, client):
            router.replicas[1] = Replica(1, router.replicas[1].base_url)  # still starting
            router.replicas[0].mark_exited(-9)
            await asyncio.sleep(0.35)
            assert (await answer(client, url + "/readyz"))[0] == 503
            assert (await answer(client, url + "/healthz"))[0] == 200
            router.replicas[1].mark_exited(1)  # it did not make it either
            assert (await answer(client, url + "/healthz"))[0] == 503

    asyncio.run(scenario())


def test_liveness_waits_for_the_first_replica_and_draining_is_unready() -> None:
    async def scenario() -> None:
        async with routed(1, unserving_grace_s=60) as (_upstreams, router, url, client):
            router.replicas[0] = Replica(0, router.replicas[0].base_url)  # still starting
            assert (await answer(client, url + "/healthz"))[0] == 503  # what a startupProbe waits on
            assert (await answer(client, url + "/readyz"))[0] == 503
            router.replicas[0].mark_healthy()
            assert (await answer(client, url + "/healthz"))[0] == 200
            router.draining = True
            assert (await answer(client, url + "/readyz"))[0] == 503
            assert (await answer(client, url + "/healthz"))[0] == 200

    asyncio.run(scenario())


def test_without_a_grace_liveness_answers_for_the_router_alone() -> None:
    """The router-only mode: replica containers have liveness probes of their own."""

    async def scenario() -> None:
        async with routed(1) as (upstreams, router, url, client):
            await upstreams[0].kill()
            router.replicas[0].mark_unhealthy("connection refused")
            router.replicas[0].stopped_serving_at = 0.0  # long ago
            assert (await answer(client, url + "/healthz"))[0] == 200
            assert (await answer(client, url + "/readyz"))[0] == 503

    asyncio.run(scenario())


# --- a hung replica: the idle read timeout ----------------------------------------------------------


def test_a_replica_silent_past_the_read_timeout_is_a_504_and_its_failure() -> None:
    async def scenario() -> None:
        async with routed(1, read_timeout_s=0.3) as (upstreams, router, url, client):
            fake, replica = upstreams[0].fake, router.replicas[0]
            started = asyncio.get_running_loop().time()
            status, _, body = await complete(client, url, hold=True)  # never released: hung
            waited = asyncio.get_running_loop().time() - started
            assert status == 504
            assert "replica 0 sent nothing for 0.3 s" in body["error"]
            assert 0.3 <= waited < 2
            assert gauge(router.metrics.upstream_errors.labels("0", "timeout")) == 1
            assert replica.recheck_now.is_set()  # its health is checked at once
            await eventually(lambda: gauge(fake.running) == 0)  # and vLLM told to abort it
            assert replica.in_flight == 0

    asyncio.run(scenario())


def test_a_stream_gone_silent_mid_answer_is_broken_off_but_a_slow_one_is_not() -> None:
    async def scenario() -> None:
        async with routed(1, read_timeout_s=0.3) as (_upstreams, router, url, client):
            # Slow but alive: 6 chunks 0.1 s apart take longer than the timeout, each gap less.
            payload = {"stream": True, "chunks": 6, "chunk_delay": 0.1}
            async with client.post(url + "/v1/completions", json=payload) as response:
                assert (await response.read()).endswith(b"data: [DONE]\n\n")

            payload = {"stream": True, "chunks": 3, "gated": True}  # chunk 1 never allowed: hung
            async with client.post(url + "/v1/completions", json=payload) as response:
                assert response.status == 200
                await response.content.readuntil(b"\n\n")
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            assert gauge(router.metrics.upstream_errors.labels("0", "timeout")) == 1
            assert gauge(router.metrics.upstream_errors.labels("0", "response")) == 0

    asyncio.run(scenario())


# --- bodies: streamed, bounded ----------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_that_names_it_and_never_reaches_a_replica() -> None:
    async def scenario() -> None:
        async with routed(1, max_body_bytes=1000) as (upstreams, router, url, client):
            async with client.post(url + "/v1/completions", json={"prompt": "x" * 2000}) as response:
                assert response.status == 413
                body = await response.json()
            assert body["maxBodyBytes"] == 1000
            assert "over the limit of 1000 bytes (--max-body-bytes)" in body["error"]
            assert upstreams[0].fake.completions == 0
            assert gauge(router.metrics.rejected.labels("body_too_large")) == 1
            assert router.replicas[0].serving and not router.replicas[0].recheck_now.is_set()
            assert (await complete(client, url, prompt="x" * 900))[0] == 200

    asyncio.run(scenario())


def test_a_chunked_body_over_the_limit_is_cut_off_with_a_413() -> None:
    async def chunks():
        for _ in range(10):
            yield b"x" * 500

    async def scenario() -> None:
        async with routed(1, max_body_bytes=1000) as (upstreams, router, url, client):
            async with client.post(url + "/upload", data=chunks()) as response:  # no Content-Length
                assert response.status == 413
                assert (await response.json())["maxBodyBytes"] == 1000
            assert upstreams[0].fake.uploaded <= 1000
            assert gauge(router.metrics.rejected.labels("body_too_large")) == 1
            assert gauge(router.metrics.upstream_errors.labels("0", "response")) == 0
            assert router.replicas[0].serving

    asyncio.run(scenario())


def test_bodies_are_streamed_to_the_replica_not_buffered() -> None:
    async def scenario() -> None:
        async with routed(1) as (upstreams, _router, url, client):
            fake, more = upstreams[0].fake, asyncio.Event()

            async def chunks():
                yield b"a" * 65536
                await more.wait()
                yield b"b" * 65536

            sending = asyncio.create_task(client.post(url + "/upload", data=chunks()))
            # The replica has the first part while the client has not sent the rest.
            await eventually(lambda: fake.uploaded == 65536)
            more.set()
            async with await sending as response:
                assert response.status == 200
                assert (await response.json())["received"] == 131072

            # Bodies well over aiohttp's 1 MiB default pass whole.
            prompt = "p" * (3 * 2**20)
            status, _, body = await complete(client, url, prompt=prompt)
            assert status == 200 and body["prompt"] == prompt

    asyncio.run(scenario())


# --- overload: the concurrency cap ------------------------------------------------------------------


def test_past_the_in_flight_cap_requests_get_a_503_with_retry_after_and_probes_still_answer() -> None:
    async def scenario() -> None:
        async with routed(2, max_in_flight=2) as (upstreams, router, url, client):
            held = [asyncio.create_task(complete(client, url, hold=True)) for _ in range(2)]
            await eventually(lambda: sum(u.fake.completions for u in upstreams) == 2)
            async with client.post(url + "/v1/completions", json={"prompt": "hi"}) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                body = await response.json()
            assert body["maxInFlight"] == 2 and "--max-in-flight" in body["error"]
            assert sum(u.fake.completions for u in upstreams) == 2  # never sent
            for path in ("/healthz", "/readyz"):
                assert (await answer(client, url + path))[0] == 200
            assert await scraped(client, url, "llmpack_router_rejected_requests") == 1

            for upstream in upstreams:
                upstream.fake.release_held.put_nowait(None)
            assert [status for status, _, _ in await asyncio.gather(*held)] == [200, 200]
            assert router.in_flight == 0
            assert (await complete(client, url))[0] == 200

    asyncio.run(scenario())


# --- slow clients: body and header timeouts, and absolute-form targets ------------------------------


async def raw_connection(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def answered_whole(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    return length is not None and len(body) >= length


async def slow_upload(url: str, stop: asyncio.Event) -> bytes:
    """A client announcing a 1000-byte completion request and sending one byte every 0.1 s: never
    idle for long, never done. Returns what the router answered."""
    reader, writer = await raw_connection(url)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    answer = b""
    try:
        while not stop.is_set():
            if not answer:
                writer.write(b" ")
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    chunk = await reader.read(65536)
                    if not chunk or answered_whole(answer := answer + chunk):
                        return answer
    except ConnectionError:
        pass
    finally:
        writer.close()
    return answer


def test_slow_uploads_cannot_lock_out_other_clients() -> None:
    """The 1,024-slow-clients lock-out in small: with 2 slots, 2 trickling uploads take both; past
    the body timeout they are answered 408 and a third client, turned away meanwhile, is served."""

    async def scenario() -> None:
        async with routed(1, max_in_flight=2, body_timeout_s=1.0) as (upstreams, router, url, client):
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            started = loop.time()
            slow = [asyncio.create_task(slow_upload(url, stop)) for _ in range(2)]
            await eventually(lambda: router.in_flight == 2)
            assert (await complete(client, url))[0] == 503  # both slots held by the slow uploads
            while (status := (await complete(client, url))[0]) == 503:
                assert loop.time() - started < 3.0, "still locked out past the body timeout"
                await asyncio.sleep(0.05)
            assert status == 200 and upstreams[0].fake.completions == 1
            answers = await asyncio.gather(*slow)
            stop.set()
            for answer_bytes in answers:
                assert answer_bytes.startswith(b"HTTP/1.1 408"), answer_bytes
                assert b"--body-timeout" in answer_bytes
            assert router.in_flight == 0
            assert await scraped(client, url, "llmpack_router_rejected_requests") >= 3  # 2 x 408, 503s

    asyncio.run(scenario())


def test_a_connection_trickling_its_headers_is_closed_after_the_header_timeout() -> None:
    async def scenario() -> None:
        async with routed(1, header_timeout_s=0.5) as (_upstreams, _router, url, client):
            reader, writer = await raw_connection(url)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: router\r\n")
            closed_after = None
            for i in range(40):
                try:
                    writer.write(f"X-Slow-{i}: x\r\n".encode())
                    await writer.drain()
                    async with asyncio.timeout(0.1):
                        if await reader.read() == b"":
                            closed_after = loop.time() - started
                            break
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed_after = loop.time() - started
                    break
            writer.close()
            assert closed_after is not None and 0.4 < closed_after < 2.0, closed_after
            async with client.get(url + "/v1/models") as response:  # others are served meanwhile
                assert response.status == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("target", ["http://elsewhere.example/v1/models?x=1", "/v1/models?x=1"])
def test_absolute_and_origin_form_targets_are_routed_by_their_path(target: str) -> None:
    async def scenario() -> None:
        async with routed(1) as (_upstreams, _router, url, _client):
            reader, writer = await raw_connection(url)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n".encode())
            answer_bytes = await reader.read()
            writer.close()
            assert answer_bytes.startswith(b"HTTP/1.1 200"), answer_bytes
            assert b'"owned_by": "fake-0"' in answer_bytes or b'"owned_by":"fake-0"' in answer_bytes

    asyncio.run(scenario())
