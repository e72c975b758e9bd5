"""What the launcher's router adds to each request, on loopback.

    python -m bench.router_overhead [--requests 2000] [--chunks 16]

Starts `llmpack launch` with one replica that is a tiny stand-in for vLLM (this module with
--stand-in), exactly as a serving pod runs: the launcher process owns the router, the stand-in is
its child. Then sends the same requests alternately straight to the replica and through the router,
one at a time from a client with keep-alive on both paths, and prints median and p99 latency for
each path and what the router adds. Alternating cancels drift (CPU frequency, other load) between the
two paths. The stand-in answers at once, so the figures are pure proxy cost: against a real
completion (tens of milliseconds at least) divide the added median by that instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
from aiohttp import web

COMPLETION = {"id": "cmpl-bench", "object": "text_completion", "choices": [{"index": 0, "text": "x" * 64}]}


# --- the stand-in replica ---------------------------------------------------------------------


def stand_in_app(chunks: int) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def complete(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if not payload.get("stream"):
            return web.json_response(COMPLETION)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(chunks):
            await response.write(f"data: {json.dumps({'index': index, 'text': 'tok'})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", complete)
    return app


def run_stand_in(host: str, port: int, chunks: int) -> None:
    web.run_app(stand_in_app(chunks), host=host, port=port, print=None, access_log=None)


# --- measuring --------------------------------------------------------------------------------


async def timed_request(session: aiohttp.ClientSession, url: str, payload: dict) -> float:
    started = time.perf_counter()
    async with session.post(url, json=payload) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    return time.perf_counter() - started


async def measure(direct: str, routed: str, requests: int, payload: dict) -> tuple[list[float], list[float]]:
    direct_s: list[float] = []
    routed_s: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(min(100, requests)):  # warm up both paths (connections, code paths)
            await timed_request(session, direct, payload)
            await timed_request(session, routed, payload)
        for _ in range(requests):
            direct_s.append(await timed_request(session, direct, payload))
            routed_s.append(await timed_request(session, routed, payload))
    return direct_s, routed_s


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, direct_s: list[float], routed_s: list[float]) -> list[str]:
    direct_median, routed_median = statistics.median(direct_s), statistics.median(routed_s)
    ms = 1000.0
    return [
        f"{name:<24}{'median ms':>11}{'p99 ms':>9}",
        f"{'  direct to replica':<24}{direct_median * ms:>11.3f}{percentile(direct_s, 0.99) * ms:>9.3f}",
        f"{'  through the router':<24}{routed_median * ms:>11.3f}{percentile(routed_s, 0.99) * ms:>9.3f}",
        f"  added by the router: {(routed_median - direct_median) * ms:.3f} ms median per request, "
        f"{routed_median / direct_median:.2f}x the direct median",
    ]


# --- running the launcher -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_healthy(url: str, launcher: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if launcher.poll() is not None:
                raise RuntimeError(f"llmpack launch exited with {launcher.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not healthy within {timeout_s} s")


def start_launcher(replica_port: int, router_port: int, chunks: int) -> subprocess.Popen:
    stand_in = [sys.executable, "-m", "bench.router_overhead", "--stand-in", "--chunks", str(chunks)]
    argv = [sys.executable, "-m", "llmpack.cli", "launch", "--first-port", str(replica_port)]
    argv += ["--router-host", "127.0.0.1", "--router-port", str(router_port), "--start-poll", "0.05"]
    return subprocess.Popen([*argv, "--", *stand_in], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def benchmark(requests: int, chunks: int) -> list[str]:
    replica_port, router_port = free_port(), free_port()
    while router_port == replica_port:
        router_port = free_port()
    launcher = start_launcher(replica_port, router_port, chunks)
    try:
        await wait_healthy(f"http://127.0.0.1:{router_port}/healthz", launcher)
        direct = f"http://127.0.0.1:{replica_port}/v1/completions"
        routed = f"http://127.0.0.1:{router_port}/v1/completions"
        lines = [
            f"{requests} requests each way, one at a time, alternating; loopback; {os.cpu_count()} CPUs",
            "",
        ]
        plain = await measure(direct, routed, requests, {"prompt": "hi", "max_tokens": 16})
        lines += [*report("completion (JSON)", *plain), ""]
        streamed = await measure(direct, routed, requests, {"prompt": "hi", "stream": True})
        lines += report(f"stream ({chunks} SSE chunks)", *streamed)
        return lines
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.router_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path and kind")
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks in a streamed answer")
    parser.add_argument("--stand-in", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stand_in:
        run_stand_in(args.host, args.port, args.chunks)
        return 0
    print("\n".join(asyncio.run(benchmark(args.requests, args.chunks))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
