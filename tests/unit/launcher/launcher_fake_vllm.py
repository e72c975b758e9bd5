"""A stand-in for `vllm serve` in the launcher's tests: the same endpoints, no GPU.

Run as a script by the launcher (it accepts and ignores vLLM's flags), or used in process through
FakeVllm, whose gates let a test decide when a held request answers and when each stream chunk goes.

As a script it mimics vLLM's start: nothing listens until --ready-after seconds have passed, and it
appends JSON lines to --record (start and listening times, its pid, a helper's pid) so that a test can
check the staggered start and that no process outlives the launcher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class FakeVllm:
    def __init__(self, name: str) -> None:
        self.name = name
        self.completions = 0
        self.uploaded = 0  # bytes of /upload bodies received so far, as they arrive
        # Tests put a token per event they allow: a held request answering, a stream chunk going.
        self.release_held: asyncio.Queue[None] = asyncio.Queue()
        self.next_chunk: asyncio.Queue[None] = asyncio.Queue()
        self.registry = CollectorRegistry()
        self.running = Gauge("vllm:num_requests_running", "Running requests.", registry=self.registry)
        self.success = Counter(
            "vllm:request_success", "Finished requests.", ["finished_reason"], registry=self.registry
        )
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=self.registry
        )

    def make_app(self) -> web.Application:
        # vLLM (uvicorn) sets no body limit: what reaches the replica is the router's business.
        app = web.Application(client_max_size=2**30)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions_handler)
        app.router.add_post("/v1/chat/completions", self.completions_handler)
        app.router.add_post("/upload", self.upload)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        """Counts the body as it arrives, so a test can see it come before the client is done."""
        while chunk := await request.content.readany():
            self.uploaded += len(chunk)
        return web.json_response({"received": self.uploaded})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "owned_by": self.name}]})

    async def completions_handler(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.completions += 1
        self.running.inc()
        try:
            if payload.get("stream"):
                return await self._stream(request, payload)
            if payload.get("hold"):
                await self.release_held.get()
            await asyncio.sleep(float(payload.get("delay", 0)))
            self.success.labels("stop").inc()
            self.latency.observe(0.05)
            return web.json_response({"served_by": self.name, "prompt": payload.get("prompt")})
        finally:
            self.running.dec()

    async def _stream(self, request: web.Request, payload: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(int(payload.get("chunks", 3))):
            if index and payload.get("gated"):
                await self.next_chunk.get()
            await asyncio.sleep(float(payload.get("chunk_delay", 0)))
            await response.write(sse_chunk(self.name, index))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.success.labels("stop").inc()
        return response


def sse_chunk(name: str, index: int) -> bytes:
    event = {"served_by": name, "index": index, "text": f"tok{index}"}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def record(path: str | None, **event: object) -> None:
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({**event, "time": time.time(), "pid": os.getpid()}) + "\n")


async def serve(args: argparse.Namespace) -> None:
    record(args.record, event="start", port=args.port)
    print(f"fake vllm on port {args.port}: loading weights", flush=True)
    if args.spawn_helper:
        # Like vLLM's engine core: a child in the same process group that ignores nothing.
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        record(args.record, event="helper", helper_pid=helper.pid, port=args.port)
    if args.exit_after is not None:
        await asyncio.sleep(args.exit_after)
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(args.exit_code)
    await asyncio.sleep(args.ready_after)
    # handler_cancellation: like vLLM, which aborts a request whose client has gone.
    runner = web.AppRunner(
        FakeVllm(f"port-{args.port}").make_app(), access_log=None, handler_cancellation=True
    )
    await runner.setup()
    record(args.record, event="listening", port=args.port)
    await web.TCPSite(runner, args.host, args.port).start()
    print("Application startup complete.", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--record")
    parser.add_argument("--spawn-helper", action="store_true")
    args, _vllm_flags = parser.parse_known_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
