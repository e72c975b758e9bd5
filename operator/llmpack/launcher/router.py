"""The pod's HTTP front: spreads requests over the local replicas and answers health and metrics.

Choice of replica: the healthy one with the fewest requests in flight (ties rotate), because vLLM's
latency grows with its running batch, and requests differ too much in length for round robin.

Retries: a request goes to another replica only when the chosen one could not be connected, since
only then is it certain that the request was never sent; once sent, a completion may already be
running, and sending it twice would double its cost and could answer the client twice.

Upstream connections are not kept alive. uvicorn (vLLM's server) closes idle keep-alive connections
after 5 s, and a replica that dies leaves pooled connections behind; a POST written to such a
connection fails after it was sent, which is not retriable. A fresh loopback connection per request
makes "could not connect" exact. It costs about 0.2 ms (bench/router_overhead.py: 0.71 ms added per
request without keep-alive, 0.50 ms with it, on a busy 2-CPU machine), against a completion's tens
of milliseconds.

A client that goes away ends the upstream request too: its handler is cancelled the moment the
connection is lost (aiohttp only does that since 3.9 when the runner is made with
handler_cancellation=True; a non-streaming completion sends nothing until it is done, so there is no
failed write to notice it by), and a write to the gone client ends the relay. Either way the
upstream connection is closed, which is how vLLM learns to abort the request and free its batch
slot. A client leaving is not a replica failure: the replica is not marked nor rechecked.

Responses are relayed chunk by chunk as they arrive (SSE streams stay incremental) and byte for byte:
the upstream body is not decompressed and the client's own headers are the only ones sent upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmpack.launcher.metrics import METRICS_CONTENT_TYPE, RouterMetrics, merge_replica_metrics
from llmpack.launcher.replica import Replica

log = logging.getLogger("llmpack.launcher.router")

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The client library sets these for the upstream request from what it actually sends.
REQUEST_HEADERS_NOT_FORWARDED = HOP_BY_HOP_HEADERS | {"host", "content-length"}
REPLICA_HEADER = "X-LLMPack-Replica"
MAX_REQUEST_BYTES = 256 * 2**20  # chat requests can carry base64 images; aiohttp's default is 1 MiB


def upstream_session(connect_timeout_s: float) -> aiohttp.ClientSession:
    """The client for replicas: no keep-alive (see the module docstring), no connection cap (vLLM
    queues on its own), no read timeout (a long generation is not an error), no decompression, and no
    default headers of its own (an Accept-Encoding the client did not send would change the body)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )


class _NotSent(Exception):
    """The replica could not be connected: the request never left, another replica may take it."""


class Router:
    def __init__(
        self,
        replicas: Sequence[Replica],
        session: aiohttp.ClientSession,
        *,
        metrics: RouterMetrics | None = None,
        metrics_timeout_s: float = 5.0,
    ) -> None:
        self.replicas = list(replicas)
        self.metrics = metrics or RouterMetrics()
        self.draining = False  # set on SIGTERM: not ready any more, still serving what arrives
        self._session = session
        self._metrics_timeout_s = metrics_timeout_s
        self._rotation = 0
        self._runner: web.AppRunner | None = None

    # --- serving -------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/health", self.healthz)  # vLLM's own name, for clients that probe it
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_route("*", "/{path:.*}", self.proxy)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); return the port."""
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            handler_cancellation=True,  # see the module docstring: a client leaving ends its request
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- choosing a replica --------------------------------------------------------------------

    def pick(self, exclude: Sequence[Replica] = ()) -> Replica | None:
        """The serving replica with the fewest requests in flight; ties go round the replicas."""
        count = len(self.replicas)
        start, self._rotation = self._rotation, (self._rotation + 1) % max(count, 1)
        rotated = self.replicas[start:] + self.replicas[:start]
        candidates = [r for r in rotated if r.serving and r not in exclude]
        return min(candidates, key=lambda r: r.in_flight, default=None)

    # --- proxying ------------------------------------------------------------------------------

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # whole, so that a request that was not sent can be sent again
        headers = forwarded_headers(request.headers)
        not_connected: list[Replica] = []
        while (replica := self.pick(exclude=not_connected)) is not None:
            if not_connected:
                self.metrics.retries.labels(not_connected[-1].label).inc()
            replica.in_flight += 1  # before any await, so concurrent picks see it
            try:
                return await self._forward(request, replica, body, headers)
            except _NotSent:
                not_connected.append(replica)
            except asyncio.CancelledError:
                if request.transport is None:  # the client's connection is gone
                    self._client_left(request, replica, "closed the connection")
                raise
            finally:
                replica.in_flight -= 1
        self.metrics.unroutable.inc()
        return web.json_response({"error": "no healthy replica", "replicas": self._status()}, status=503)

    async def _forward(
        self, request: web.Request, replica: Replica, body: bytes, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        url = URL(replica.base_url + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method, url, data=body or None, headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as err:
            # With no read timeout, a timeout here can only be the connect timeout.
            self.metrics.upstream_errors.labels(replica.label, "connect").inc()
            replica.report_connection_failure(f"connection failed: {err}")
            log.warning("replica %s: could not connect (%s); trying another", replica.index, err)
            raise _NotSent from err
        except aiohttp.ClientError as err:
            self.metrics.upstream_errors.labels(replica.label, "response").inc()
            replica.recheck_now.set()
            log.warning(
                "replica %s: %s %s failed after it was sent: %s",
                replica.index,
                request.method,
                request.path,
                err,
            )
            return web.json_response({"error": f"replica {replica.index} failed: {err}"}, status=502)
        try:
            return await self._relay(request, upstream, replica)
        finally:
            upstream.close()  # without keep-alive, this also tells the replica a client left early

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, replica: Replica
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP_HEADERS:
                response.headers.add(name, value)
        response.headers[REPLICA_HEADER] = replica.label
        self.metrics.requests.labels(replica.label, str(upstream.status)).inc()
        try:
            await response.prepare(request)
        except ConnectionError:
            self._client_left(request, replica, "left before the answer")
            return response
        while True:
            try:
                chunk = await upstream.content.readany()
            except aiohttp.ClientError as err:
                # The replica broke off mid-answer. Headers are out, so the only honest signal left
                # is to break the client's connection too, rather than end the body as if complete.
                self.metrics.upstream_errors.labels(replica.label, "response").inc()
                replica.recheck_now.set()
                log.warning("replica %s: response to %s broke off: %s", replica.index, request.path, err)
                if request.transport is not None:
                    request.transport.abort()
                return response
            try:
                if not chunk:
                    await response.write_eof()
                    return response
                await response.write(chunk)
            except ConnectionError:
                # aiohttp's ClientConnectionResetError is both a ConnectionError and a ClientError:
                # it must not be taken for the replica's failure above.
                self._client_left(request, replica, "closed the connection mid-answer")
                return response

    def _client_left(self, request: web.Request, replica: Replica, what: str) -> None:
        """Not the replica's failure: counted, logged, and the replica left as it is."""
        self.metrics.client_disconnects.labels(replica.label).inc()
        log.info(
            "client of %s %s %s; closing the request to replica %s",
            request.method,
            request.path,
            what,
            replica.index,
        )

    # --- health and metrics --------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """200 only while every replica serves: a pod missing a replica is wasting its GPU share."""
        return self._health_answer(ok=all(r.serving for r in self.replicas))

    async def readyz(self, request: web.Request) -> web.Response:
        """Like /healthz, and also not ready once shutting down, so the Service stops sending."""
        return self._health_answer(ok=all(r.serving for r in self.replicas) and not self.draining)

    def _health_answer(self, ok: bool) -> web.Response:
        not_serving = [r.index for r in self.replicas if not r.serving]
        body = {"ok": ok, "draining": self.draining, "notServing": not_serving, "replicas": self._status()}
        return web.json_response(body, status=200 if ok else 503)

    def _status(self) -> list[dict[str, object]]:
        return [
            {"index": r.index, "state": r.state.value, "reason": r.reason, "inFlight": r.in_flight}
            for r in self.replicas
        ]

    async def metrics_page(self, request: web.Request) -> web.Response:
        pages = await asyncio.gather(*(self._replica_metrics(r) for r in self.replicas))
        pages_by_label = {r.label: page for r, page in zip(self.replicas, pages, strict=True) if page}
        merged = merge_replica_metrics(pages_by_label)
        self.metrics.observe(self.replicas)
        body = self.metrics.render() + merged
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _replica_metrics(self, replica: Replica) -> str | None:
        if not replica.serving:
            return None
        timeout = aiohttp.ClientTimeout(total=self._metrics_timeout_s)
        try:
            async with self._session.get(replica.base_url + "/metrics", timeout=timeout) as response:
                if response.status == 200:
                    return await response.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("replica %s: reading /metrics failed: %s", replica.index, err)
        self.metrics.scrape_errors.labels(replica.label).inc()
        return None


def forwarded_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in REQUEST_HEADERS_NOT_FORWARDED)
