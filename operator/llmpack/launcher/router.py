"""The HTTP front of replicas that share a GPU (the router container of a DRA MPS pod, or the one
`llmpack launch` runs for the replicas it starts): spreads requests over them and answers health
and metrics.

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

Limits (the router container has 1 GiB; every one is a flag of `llmpack launch`):
- Request bodies are streamed to the replica, not buffered: the router holds at most aiohttp's read
  buffers (64 KiB high-water marks each way) per request, whatever the body's size. A request that
  could not be connected is still sent again safely, because nothing of its body has been read by
  then. A body over --max-body-bytes (16 MiB) is answered 413 with the limit, before any replica is
  contacted when its Content-Length says so, or when the count passes the limit for a chunked one
  (the replica's connection is then closed). 16 MiB holds any text prompt a served context allows
  (a million tokens as token ids is ~7 MiB of JSON) and a few base64 images for multimodal chat,
  while refusing a runaway upload before vLLM, which parses the whole body in memory, sees it.
- At most --max-in-flight (1024) requests are proxied at once; one more is answered 503 at once with
  Retry-After rather than queued without bound. With streamed bodies each costs well under 1 MiB,
  so the cap bounds the router's memory far below its limit, and it sits above what the replicas of
  one GPU run at once (their max-num-seqs sum to a few hundred), so it only bites on an overload
  that vLLM would otherwise queue. Health, readiness and metrics are never capped: probes must
  answer most when the pod is busiest.
- A request body must arrive whole within --body-timeout (60 s) of the router starting to read it,
  else the request is answered 408 and its replica connection closed: a client uploading a byte at a
  time would otherwise hold its in-flight slot (and a replica's connection) for as long as it likes,
  and --max-in-flight such clients would lock everyone else out. 60 s moves the largest body
  allowed (16 MiB) at 280 KB/s; a prompt of a few KB needs a tiny fraction of that.
- A connection must deliver a complete request line and headers within --header-timeout (15 s) of
  opening, and of the previous answer on a kept-alive connection, else it is closed (aiohttp's
  keep-alive timer, which also runs from the moment a connection opens): a client trickling its
  headers (slowloris) holds no slot, but would hold a socket and its buffers. The same timer closes
  idle kept-alive connections; vLLM's own server (uvicorn) closes them after 5 s.
- The request target is routed by its path and query in both forms HTTP/1.1 allows, origin-form
  (`/v1/models`) and absolute-form (`http://host/v1/models`, which a server must accept); the host
  it names is not used, as the router forwards only to its replicas.
- A replica that sends nothing for --read-timeout (600 s) is given up on: 504 to the client if no
  answer has begun, else the client's connection is broken (as for a replica that breaks off), and
  it counts as the replica's failure (llmpack_router_upstream_errors{kind="timeout"}, health
  rechecked at once). The timer runs between received chunks and starts once the body is sent, so
  a slow upload is not held against the replica. It must be long because a plain (non-streaming)
  completion sends nothing until it is done: 600 s is the OpenAI Python client's own default
  timeout, beyond which the usual client has given up anyway. Meanwhile a hung replica collects
  in-flight requests, so the fewest-in-flight choice already steers new requests away from it.

Health: /readyz is 200 while at least one replica serves (and not while shutting down): one replica
down lowers the pod's capacity but must not pull the healthy ones out of the Service. /healthz is
liveness, and one replica down never fails it (restarting the pod would stop the replicas that
serve too). With `unserving_grace_s` (what `llmpack launch` sets) it is 503 until the first replica
serves (what a startupProbe waits for) and once none has served for that long, because the
launcher never restarts a replica and only a restart of the container mends that. Without it (the
router-only mode, whose replica containers have liveness probes of their own) it answers for the
router alone: a router that cannot answer fails it by itself. How many replicas serve is the gauge
llmpack_router_replicas_serving and the `serving` field of both answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmpack.launcher.metrics import METRICS_CONTENT_TYPE, RouterMetrics, merge_replica_metrics
from llmpack.launcher.replica import Replica, ReplicaState

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
# The client library sets Host for the upstream request, and chunks a body without Content-Length
# itself; Expect: 100-continue was answered to the client by the router already.
REQUEST_HEADERS_NOT_FORWARDED = HOP_BY_HOP_HEADERS | {"host", "expect"}
REPLICA_HEADER = "X-LLMPack-Replica"

# The limits' defaults, and why, are in the module docstring.
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_READ_TIMEOUT_S = 600.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_HEADER_TIMEOUT_S = 15.0
RETRY_AFTER_S = 1  # an overload is answered at once; a client that retries soon finds a free slot


def upstream_session(connect_timeout_s: float, read_timeout_s: float | None = None) -> aiohttp.ClientSession:
    """The client for replicas: no keep-alive (see the module docstring), no connection cap (vLLM
    queues on its own, and the router caps requests itself), no total timeout (a long generation is
    not an error) but an idle read timeout between chunks (a hung replica is), no decompression, and
    no default headers of its own (an Accept-Encoding the client did not send would change the
    body)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )


class _NotSent(Exception):
    """The replica could not be connected: the request never left, another replica may take it."""


class _BodyTooLarge(Exception):
    """A chunked request body passed the limit while it was streamed to the replica."""


class _BodyTooSlow(Exception):
    """The request body did not arrive whole within the body timeout."""


class _RequestBody:
    """The client's body, streamed to one replica and counted on the way (see the module docstring).

    Not read before a replica is connected, so a request whose replica could not be connected can
    still go whole to another."""

    def __init__(self, request: web.Request, limit: int, timeout_s: float) -> None:
        self._request = request
        self._limit = limit
        self._timeout_s = timeout_s
        self.bytes_read = 0
        self.too_large = False
        self.too_slow = False

    def payload(self) -> AsyncIterator[bytes] | None:
        return self._chunks() if self._request.body_exists else None

    async def _chunks(self) -> AsyncIterator[bytes]:
        content = self._request.content
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await content.readany()
            except TimeoutError:
                self.too_slow = True
                raise _BodyTooSlow from None
            if not chunk:
                return
            self.bytes_read += len(chunk)
            if self.bytes_read > self._limit:
                self.too_large = True
                raise _BodyTooLarge
            yield chunk


class Router:
    def __init__(
        self,
        replicas: Sequence[Replica],
        session: aiohttp.ClientSession,
        *,
        metrics: RouterMetrics | None = None,
        metrics_timeout_s: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        unserving_grace_s: float | None = None,
    ) -> None:
        """unserving_grace_s: how long /healthz stays 200 while no replica serves (and none is still
        starting, once one has served: see live()); None keeps it 200 whatever the replicas do (see
        the module docstring)."""
        self.replicas = list(replicas)
        self.metrics = metrics or RouterMetrics()
        self.draining = False  # set on SIGTERM: not ready any more, still serving what arrives
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.body_timeout_s = body_timeout_s
        self.header_timeout_s = header_timeout_s
        self.unserving_grace_s = unserving_grace_s
        self.in_flight = 0  # requests being proxied, over all replicas
        self._session = session
        self._metrics_timeout_s = metrics_timeout_s
        self._rotation = 0
        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()

    # --- serving -------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        # Proxied bodies are streamed and counted by the router itself (client_max_size only bounds
        # request.read(), which nothing here calls); aiohttp's default 1 MiB stays for the rest.
        app = web.Application()
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
            keepalive_timeout=self.header_timeout_s,  # the header timeout (module docstring)
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        # loop.create_server's Server (asyncio's or uvloop's); aiohttp types it as AbstractServer,
        # which has no sockets.
        server = cast("asyncio.Server | None", site._server)
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
        if self.in_flight >= self.max_in_flight:
            self.metrics.rejected.labels("overloaded").inc()
            return web.json_response(
                {
                    "error": f"the router has {self.max_in_flight} requests in flight, its limit "
                    "(--max-in-flight); retry shortly",
                    "maxInFlight": self.max_in_flight,
                },
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return self._body_too_large(length)
        self.in_flight += 1
        try:
            return await self._proxy(request)
        finally:
            self.in_flight -= 1

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body = _RequestBody(request, self.max_body_bytes, self.body_timeout_s)
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
                if body.bytes_read:  # cannot happen (the body is read once connected); never resend part
                    return web.json_response({"error": "request body lost in a failed send"}, status=502)
            except asyncio.CancelledError:
                if request.transport is None:  # the client's connection is gone
                    self._client_left(request, replica, "closed the connection")
                raise
            finally:
                replica.in_flight -= 1
        self.metrics.unroutable.inc()
        return web.json_response({"error": "no healthy replica", "replicas": self._status()}, status=503)

    def _body_too_slow(self) -> web.Response:
        self.metrics.rejected.labels("body_timeout").inc()
        return web.json_response(
            {
                "error": f"request body not received within {self.body_timeout_s:g} s (--body-timeout)",
                "bodyTimeoutSeconds": self.body_timeout_s,
            },
            status=408,
            headers={"Connection": "close"},
        )

    def _body_too_large(self, size: int | None) -> web.Response:
        self.metrics.rejected.labels("body_too_large").inc()
        what = f"{size} bytes" if size is not None else "the body"
        return web.json_response(
            {
                "error": f"request body too large: {what} over the limit of {self.max_body_bytes} "
                "bytes (--max-body-bytes)",
                "maxBodyBytes": self.max_body_bytes,
            },
            status=413,
        )

    async def _forward(
        self, request: web.Request, replica: Replica, body: _RequestBody, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        # rel_url: the path and query of an origin-form and of an absolute-form target alike.
        url = URL(replica.base_url + request.rel_url.raw_path_qs, encoded=True)
        try:
            upstream = await self._session.request(
                request.method, url, data=body.payload(), headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            self.metrics.upstream_errors.labels(replica.label, "connect").inc()
            replica.report_connection_failure(f"connection failed: {err}")
            log.warning("replica %s: could not connect (%s); trying another", replica.index, err)
            raise _NotSent from err
        except aiohttp.SocketTimeoutError as err:
            self._replica_timed_out(request, replica, "before answering")
            return web.json_response(
                {"error": f"replica {replica.index} sent nothing for {self._read_timeout_s():g} s: {err}"},
                status=504,
            )
        except (aiohttp.ClientError, _BodyTooLarge, _BodyTooSlow) as err:
            if body.too_large:  # the client's doing, not the replica's
                return self._body_too_large(None)
            if body.too_slow:
                return self._body_too_slow()
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
                # The replica broke off or went silent mid-answer. Headers are out, so the only honest
                # signal left is to break the client's connection too, rather than end the body as
                # if complete.
                if isinstance(err, aiohttp.SocketTimeoutError):
                    self._replica_timed_out(request, replica, "mid-answer")
                else:
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

    def _replica_timed_out(self, request: web.Request, replica: Replica, when: str) -> None:
        """The replica's failure: counted, and its health checked at once (a hung engine may still
        answer /health; then it stays, and its growing in-flight count keeps requests away)."""
        self.metrics.upstream_errors.labels(replica.label, "timeout").inc()
        replica.recheck_now.set()
        log.warning(
            "replica %s: sent nothing for %g s %s to %s %s; given up",
            replica.index,
            self._read_timeout_s(),
            when,
            request.method,
            request.path,
        )

    def _read_timeout_s(self) -> float:
        return self._session.timeout.sock_read or 0.0

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

    def serving(self) -> int:
        return sum(r.serving for r in self.replicas)

    def live(self) -> bool:
        """With unserving_grace_s: True while a replica serves, and for that long after the last one
        stopped; False before any has served (a startupProbe on /healthz waits for the first).
        Once one has served, also True while another is still starting: restarting the container
        would throw away a boot that may take minutes. Without: always True, since a router that
        cannot answer fails its probe by itself."""
        if self.unserving_grace_s is None or self.serving():
            return True
        stops = [r.stopped_serving_at for r in self.replicas if r.stopped_serving_at is not None]
        if stops and any(r.state is ReplicaState.STARTING for r in self.replicas):
            return True
        stops = [r.stopped_serving_at for r in self.replicas if r.stopped_serving_at is not None]
        return bool(stops) and time.monotonic() - max(stops) < self.unserving_grace_s

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 unless no replica has served for a while (see live()); one replica down
        keeps it 200, since restarting the pod would also stop the replicas that serve."""
        return self._health_answer(ok=self.live())

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 while at least one replica serves and the router is not shutting down."""
        return self._health_answer(ok=self.serving() > 0 and not self.draining)

    def _health_answer(self, ok: bool) -> web.Response:
        not_serving = [r.index for r in self.replicas if not r.serving]
        body = {
            "ok": ok,
            "draining": self.draining,
            "serving": self.serving(),
            "notServing": not_serving,
            "replicas": self._status(),
        }
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
