"""What `vllm serve` writes to its log: the start-up facts, the engine's own config line, and, when
it fails to start, the root cause.

Every pattern here was checked against logs of vLLM 0.32 (the CPU build, tests/fixtures/vllm,
recaptured by hack/engine/capture_fixtures.py) and, for the GPU-only lines, against the 0.33
source quoted in FACTS.md 1.2. Lines are matched wherever they appear: vLLM prefixes each line
with its process ("(EngineCore pid=7) ") and a level, date and source ("INFO 11-29 17:29:49
[core.py:133] "), and the platform decides some words ("GPU KV cache size" on CUDA, "CPU KV cache
size" on the CPU build).

Limits: the memory-profiling lines exist only on GPU; on the CPU build the only memory line is
"Explicitly set (X/Y) GiB for KV cache on node N" (the KV pool and the node's memory). A figure a
log lacks stays None. The last occurrence of a line wins (an engine restarted in the same log
logs them again). Pure: text in, facts out.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

GIB = 1 << 30

_NUM = r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)"


def _to_float(text: str) -> float:
    return float(text.replace(",", ""))


def _gib(value: str) -> int:
    return round(_to_float(value) * GIB)


@dataclass(frozen=True)
class StartupFacts:
    """What the engine logged at start-up (GiB figures converted to bytes)."""

    version: str | None = None
    dtype: str | None = None  # "dtype=torch.float16" of the engine's config line
    config: dict[str, str] = field(default_factory=dict)  # the whole config line, see engine_config
    weight_bytes: int | None = None  # "Model loading took X GiB" (GPU)
    device_free_bytes: int | None = None  # "Free memory on device (F/T GiB) on startup" (GPU)
    device_total_bytes: int | None = None
    gpu_memory_utilization: float | None = None  # "Desired GPU memory utilization is (u, R GiB)"
    consumed_bytes: int | None = None  # weights + non-torch ("for consumed memory" / weight + non-torch)
    peak_activation_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    suggested_kv_cache_bytes: int | None = None  # `--kv-cache-memory=N` to fit the requested memory
    available_kv_cache_bytes: int | None = None  # "Available KV cache memory: X GiB" (GPU)
    kv_cache_set_bytes: int | None = None  # CPU: "Explicitly set (X/Y) GiB for KV cache on node N"
    node_memory_bytes: int | None = None  # CPU: the Y of that line
    kv_cache_tokens: int | None = None  # "<device> KV cache size: N tokens"
    kv_cache_device: str | None = None  # the <device> of that line: GPU, CPU, XPU...
    max_concurrency: float | None = None  # "Maximum concurrency for L tokens per request: X.XXx"

    @property
    def non_kv_bytes(self) -> int | None:
        """Memory besides the KV cache: weights, non-torch, activation peak, CUDA graphs."""
        if self.consumed_bytes is None or self.peak_activation_bytes is None:
            return None
        return self.consumed_bytes + self.peak_activation_bytes + (self.cuda_graph_bytes or 0)

    @property
    def kv_cache_dtype(self) -> str | None:
        return self.config.get("kv_cache_dtype")

    @property
    def device(self) -> str | None:
        """cuda, cpu, ... from `device_config=` of the config line."""
        return self.config.get("device_config")


_PATTERNS: dict[str, re.Pattern[str]] = {
    "version": re.compile(
        r"vLLM API server version ([0-9][^\s,]*)|Initializing a V1 LLM engine \(v([0-9][^\s)]*)\)"
    ),
    "config": re.compile(r"Initializing a V1 LLM engine \([^)]*\) with config: (.*)$", re.MULTILINE),
    "dtype": re.compile(r"\bdtype=torch\.(\w+)"),
    "weights": re.compile(r"Model loading took " + _NUM + r" ?GiB"),
    "weights_v0": re.compile(r"Loading model weights took " + _NUM + r" ?GB"),
    "device": re.compile(r"Free memory on device \(" + _NUM + r"/" + _NUM + r" GiB\) on startup"),
    "desired": re.compile(r"Desired GPU memory utilization is \(" + _NUM + r", " + _NUM + r" GiB\)"),
    "consumed": re.compile(r"Actual usage is " + _NUM + r" GiB for consumed memory"),
    "weight_part": re.compile(r"Actual usage is " + _NUM + r" GiB for weight"),
    "non_torch": re.compile(_NUM + r" GiB for non-torch memory"),
    "activation": re.compile(_NUM + r" GiB for peak activation"),
    "graphs": re.compile(_NUM + r" GiB for CUDAGraph memory"),
    "suggested": re.compile(r"`--kv-cache-memory=([0-9]+)`[^`]*to fit into requested memory"),
    "available": re.compile(r"Available KV cache memory: " + _NUM + r" GiB"),
    "cpu_kv_set": re.compile(r"Explicitly set \(" + _NUM + r"/" + _NUM + r"\) GiB for KV cache"),
    "kv_tokens": re.compile(r"\b([A-Z]{2,4}) KV cache size: " + _NUM + r" tokens"),
    "concurrency": re.compile(r"Maximum concurrency for [0-9,]+ tokens per request: ([0-9.]+)x"),
}


def parse_startup_log(text: str) -> StartupFacts:
    """The facts in a `vllm serve` log. The GPU memory-profiling line has two shapes: 0.33
    ("A GiB for consumed memory (weights + non-torch), P GiB for peak activation, and G GiB for
    CUDAGraph memory", FACTS 1.2) and earlier V1 releases ("W GiB for weight, P GiB for peak
    activation, N GiB for non-torch memory, and G GiB for CUDAGraph memory")."""

    def last(name: str) -> re.Match[str] | None:
        matches = list(_PATTERNS[name].finditer(text))
        return matches[-1] if matches else None

    version = None
    if (m := last("version")) is not None:
        version = m.group(1) or m.group(2)
    config = engine_config(m.group(1)) if (m := last("config")) is not None else {}
    dtype = m.group(1) if (m := last("dtype")) is not None else None
    weights = None
    if (m := last("weights")) is not None or (m := last("weights_v0")) is not None:
        weights = _gib(m.group(1))
    free = total = desired = None
    if (m := last("device")) is not None:
        free, total = _gib(m.group(1)), _gib(m.group(2))
    if (m := last("desired")) is not None:
        desired = _to_float(m.group(1))
    consumed = None
    if (m := last("consumed")) is not None:
        consumed = _gib(m.group(1))
    elif (m := last("weight_part")) is not None and (n := last("non_torch")) is not None:
        consumed = _gib(m.group(1)) + _gib(n.group(1))
    kv_set = node = None
    if (m := last("cpu_kv_set")) is not None:
        kv_set, node = _gib(m.group(1)), _gib(m.group(2))
    kv_tokens = kv_device = None
    if (m := last("kv_tokens")) is not None:
        kv_device, kv_tokens = m.group(1), int(_to_float(m.group(2)))
    return StartupFacts(
        version=version,
        dtype=dtype,
        config=config,
        weight_bytes=weights,
        device_free_bytes=free,
        device_total_bytes=total,
        gpu_memory_utilization=desired,
        consumed_bytes=consumed,
        peak_activation_bytes=_gib(m.group(1)) if (m := last("activation")) is not None else None,
        cuda_graph_bytes=_gib(m.group(1)) if (m := last("graphs")) is not None else None,
        suggested_kv_cache_bytes=int(m.group(1)) if (m := last("suggested")) is not None else None,
        available_kv_cache_bytes=_gib(m.group(1)) if (m := last("available")) is not None else None,
        kv_cache_set_bytes=kv_set,
        node_memory_bytes=node,
        kv_cache_tokens=kv_tokens,
        max_concurrency=float(m.group(1)) if (m := last("concurrency")) is not None else None,
        kv_cache_device=kv_device,
    )


# -- the engine's config line -------------------------------------------------------------------

# Settings worth keeping from the config line: what changes the engine a profile measured.
CONFIG_KEYS = (
    "dtype",
    "kv_cache_dtype",
    "quantization",
    "enforce_eager",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "max_seq_len",
    "device_config",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "seed",
    "revision",
    "trust_remote_code",
    "load_format",
)
_OPEN, _CLOSE = "([{", ")]}"


def split_top_level(text: str, sep: str = ", ") -> list[str]:
    """Split on `sep` outside brackets and quotes: the config line nests dicts and dataclasses."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def engine_config(line: str, keys: tuple[str, ...] = CONFIG_KEYS) -> dict[str, str]:
    """`key=value` settings of "Initializing a V1 LLM engine (vX) with config: k=v, k=v, ...",
    the ones in `keys`, values as printed (quotes and `torch.` removed: dtype=bfloat16)."""
    settings: dict[str, str] = {}
    for part in split_top_level(line):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            continue
        settings[key] = value.strip().strip("'\"").removeprefix("torch.")
    return settings


# -- why a start failed -------------------------------------------------------------------------

# "(EngineCore pid=12) ", "(APIServer pid=3) ", "(Worker_TP0 pid=9) " ...
_PROCESS_PREFIX = re.compile(r"^\((?:[A-Za-z_][\w-]*) pid=\d+\)\s?")
# "ERROR 11-29 17:29:27 [core.py:123] " and the like
_LOG_PREFIX = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d [\d:.]+ \[[^\]]*\]\s?")
_EXCEPTION = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
# Exceptions that only point elsewhere: the root cause is an earlier one.
_WRAPPERS = ("See root cause above", "Engine core initialization failed")
MESSAGE_LINES = 6


def _split_prefix(line: str) -> tuple[str, str]:
    """(prefix, text): the process and log-record prefix vLLM put before the text, and the text."""
    line = line.rstrip("\r\n")
    process = _PROCESS_PREFIX.match(line)
    rest = line[process.end() :] if process else line
    record = _LOG_PREFIX.match(rest)
    text = rest[record.end() :] if record else rest
    return line[: len(line) - len(text)], text


def _short_path(path: str) -> str:
    """site-packages/vllm/v1/worker/utils.py -> vllm/v1/worker/utils.py"""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path


@dataclass(frozen=True)
class RootCause:
    """The first exception of a failed start: its type, message and where it was raised."""

    exception: str  # "ValueError"
    message: str  # may span lines (pydantic's ValidationError does)
    location: str | None = None  # "vllm/config/model.py:512 in get_and_verify_max_len"

    def __str__(self) -> str:
        where = f" (raised at {self.location})" if self.location else ""
        return f"{self.exception}: {self.message}{where}"


def root_cause(log: str) -> RootCause | None:
    """The first exception a failed `vllm serve` logged, skipping those that only say "see root
    cause above". vLLM's engine core logs the real exception (a ValueError about memory, the model
    length, a flag) ~150 lines above the end of the log, whose last line is only "RuntimeError:
    Engine core initialization failed. See root cause above."; in a chained traceback the first
    exception is the cause. None when the log holds no exception."""
    split = [_split_prefix(line) for line in log.splitlines()]
    lines = [text for _, text in split]
    frame: str | None = None
    for i, line in enumerate(lines):
        if (f := _FRAME.match(line)) is not None:
            where = f"{_short_path(f.group(1))}:{f.group(2)} in {f.group(3)}"
            # the engine's own frame names the check that failed; a library's (pydantic) does not
            if frame is None or where.startswith("vllm/") or not frame.startswith("vllm/"):
                frame = where
            continue
        if line.startswith("Traceback"):
            frame = None
        m = _EXCEPTION.match(line)
        if m is None:
            continue
        exception = m.group(1).rsplit(".", 1)[-1]
        # the message goes on only on lines of the same log record (the same prefix)
        message = _message(m.group(2), _same_record(split, i))
        if any(w in message for w in _WRAPPERS):
            frame = None
            continue
        return RootCause(exception=exception, message=message, location=frame)
    return None


def _same_record(split: list[tuple[str, str]], i: int) -> list[str]:
    """The texts of the lines after line i that carry its prefix: the rest of its log record."""
    prefix = split[i][0]
    after = split[i + 1 : i + 1 + MESSAGE_LINES]
    return [text for _, text in itertools.takewhile(lambda pt: pt[0] == prefix, after)]


def _message(first: str, following: list[str]) -> str:
    """The exception's message: its line and the indented or plain continuation lines after it
    (pydantic puts the reason on the next lines), up to a traceback, a frame or an empty line."""
    parts = [first.strip()] if first.strip() else []
    for line in following:
        text = line.strip()
        if (
            not text
            or text.startswith(("Traceback", "During handling", "The above exception", "File "))
            or _EXCEPTION.match(line)
            or text.startswith("For further information visit")
        ):
            break
        parts.append(text)
    return " ".join(parts)
