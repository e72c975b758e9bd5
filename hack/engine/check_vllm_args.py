"""Check vLLM command lines against vLLM's own argument parser, all in one process.

    ENGINE_PYTHON hack/engine/check_vllm_args.py < commands.json > verdicts.json

Run it with the engine environment's python (hack/engine/install prints it); importing vLLM's
parser takes ~10 s, so give it every command line at once. stdin: a JSON list of
{"name": ..., "argv": [...]} where argv starts at the vllm subcommand, e.g.
["serve", "MODEL", "--max-num-seqs", "8"] or ["bench", "serve", "--model", "MODEL", ...] (a
leading "vllm", or a path ending in /vllm, is dropped). stdout: one JSON object,
{"vllm_version": ..., "results": [...]}, one result per command line in input order:

    {"name", "argv", "subcommand": "serve" | "bench serve" | ..., "ok": bool,
     "errors": [...], "warnings": [...], "values": {dest: value}}

Everything vLLM logs while importing and parsing goes to stderr.

What it checks, per command line:
- the parser: the one `vllm` itself builds (vllm/entrypoints/cli/main.py: a FlexibleArgumentParser
  whose subparsers come from each CLI module's cmd_init() and subparser_init(); `vllm serve` is
  make_arg_parser, `vllm bench serve` the benchmark's add_cli_args), parsed with that parser's
  parse_args, so vLLM's own rewriting (underscores to dashes, `--model` moved to the positional,
  dotted JSON arguments, -O) applies as on the command line. Unknown and removed flags
  (--swap-space, --disable-log-requests in 0.32) and invalid values (vLLM's type= and choices=
  checks) come back as the parser's message, which names the flag;
- exact spelling: every option token (for `--flag=value`, the part before `=`; for a dotted JSON
  argument `--flag.key`, the part before the first `.`) must be an option string of that
  subcommand's parser as written. argparse would silently expand an abbreviation
  (`--kv-cache-memory` -> `--kv-cache-memory-bytes`) and vLLM rewrites `--max_num_seqs`; both are
  errors here, naming the option vLLM would have taken;
- `vllm serve` only: the subcommand's own validate() (validate_parsed_serve_args, what `vllm`
  runs right after parsing), and the constraints of vLLM's CacheConfig on the parsed
  --gpu-memory-utilization and --kv-cache-memory-bytes (0 < utilisation <= 1), which vLLM
  otherwise checks only when it builds the engine config;
- `vllm serve` with a `config_model` (a local model folder standing in for the named model): the
  engine config vLLM builds from the arguments before it loads anything (check_engine_config),
  so flags that constrain each other (--max-num-batched-tokens against --max-num-seqs and, without
  chunked prefill, --max-model-len) are refused here as at start-up;
- warnings (not errors): an option given more than once (the last one wins; vLLM only logs
  "Found duplicate keys").

values: for every argument the command line set (each option token, resolved to its dest the way
argparse would, and the subcommand's positionals), the parsed value (JSON-friendly: other types
as str), so a caller can compare what vLLM understood with what it meant.

Limits: without a config_model no engine config is built; with one, what needs the named model
itself (--max-model-len against its context, --dtype against its weights, quantization) or a GPU
(memory, the CUDA-only GPU count of parallel flags) is still not checked: a command line this
accepts may still fail at start-up. Only `vllm serve`
and `vllm bench ...` are known. A token starting with `-` is taken as an option unless it is a
negative number, so a value that itself starts with `-` must be written `--flag=value`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any

NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class ParseError(Exception):
    """argparse's error(): raised instead of printing usage and exiting."""


def _raise_parse_error(self: argparse.ArgumentParser, message: str) -> None:
    raise ParseError(f"{self.prog}: error: {message}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """vllm's top-level parser with the serve and bench subcommands, built as main() builds it.

    `vllm bench` adds its benchmarks only when the process's own command line is `vllm bench ...`
    (it scans sys.argv), so sys.argv says so while the parser is built."""
    saved = sys.argv
    sys.argv = ["vllm", "bench", "serve"]
    try:
        import vllm.entrypoints.cli.benchmark.main as bench_cli
        import vllm.entrypoints.cli.serve as serve_cli
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        commands: dict[str, Any] = {}
        for module in (serve_cli, bench_cli):
            for command in module.cmd_init():
                command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
                commands[command.name] = command
    finally:
        sys.argv = saved
    return parser, commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The parser of the (nested) subcommand argv names, and how many words name it."""
    current, depth = parser, 0
    while True:
        choices = _subparsers(current)
        if not choices or depth >= len(argv) or argv[depth] not in choices:
            break
        current, depth = choices[argv[depth]], depth + 1
    return current, depth


def _vllm_spelling(key: str) -> str:
    """What FlexibleArgumentParser turns an option name into: underscores to dashes between the
    leading -- and the first dot."""
    if not key.startswith("--"):
        return key
    name, dot, rest = key[2:].partition(".")
    return "--" + name.replace("_", "-") + dot + rest


def resolve(leaf: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    """The action argparse would give this option token to (exact, rewritten, or expanded)."""
    key = _vllm_spelling(key).split(".", 1)[0]
    if key in leaf._option_string_actions:
        return leaf._option_string_actions[key]
    if key.startswith("--"):
        matches = {t[0] for t in leaf._get_option_tuples(key) if t[0] is not None}
        if len(matches) == 1:
            return matches.pop()
    return None


def spelling_errors(leaf: argparse.ArgumentParser, words: list[str], command: str) -> list[str]:
    """Option tokens that are not exactly an option string of `leaf`."""
    errors = []
    for word in words:
        if not word.startswith("-") or word == "--" or NEGATIVE_NUMBER.match(word):
            continue
        key = word.split("=", 1)[0]
        if key.startswith("-O") and not key.startswith("--"):
            key = "--optimization-level"  # vLLM's -O3 / -O=3 / -O 3 short form
        base = key.split(".", 1)[0].removesuffix("+")
        if base in leaf._option_string_actions:
            continue
        rewritten = _vllm_spelling(base)
        action = resolve(leaf, base)
        if action is None:
            errors.append(f"{base}: not an option of vllm {command}")
        elif rewritten in leaf._option_string_actions:
            errors.append(
                f"{base}: not an option of vllm {command} as written; vLLM rewrites it to {rewritten}"
            )
        else:
            expanded = next(
                (o for o in action.option_strings if o.startswith(rewritten)), action.option_strings[-1]
            )
            errors.append(
                f"{base}: not an option of vllm {command}, "
                f"only an abbreviation argparse expands to {expanded}"
            )
    return errors


def duplicate_warnings(leaf: argparse.ArgumentParser, words: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    warnings = []
    for word in words:
        if not word.startswith("--"):
            continue
        key = word.split("=", 1)[0]
        if "." in key:
            continue  # dotted JSON keys merge; vLLM itself warns about repeated ones
        action = resolve(leaf, key)
        if action is None:
            continue
        if action.dest in seen and not isinstance(action, argparse._AppendAction):
            warnings.append(f"{key} given again after {seen[action.dest]}: the last value wins")
        seen.setdefault(action.dest, key)
    return warnings


def given_dests(leaf: argparse.ArgumentParser, words: list[str]) -> list[str]:
    dests = [a.dest for a in leaf._actions if not a.option_strings and a.dest != argparse.SUPPRESS]
    for word in words:
        if word.startswith("-") and not NEGATIVE_NUMBER.match(word):
            key = word.split("=", 1)[0]
            if key.startswith("-O") and not key.startswith("--"):
                key = "--optimization-level"
            action = resolve(leaf, key)
            if action is not None and action.dest not in dests and action.dest != argparse.SUPPRESS:
                dests.append(action.dest)
    return dests


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def check_serve(args: argparse.Namespace, command: Any) -> list[str]:
    """What vLLM checks about `vllm serve` arguments before it looks at the model."""
    from vllm.config import CacheConfig

    errors = []
    try:
        command.validate(args)
    except Exception as err:
        errors.append(f"vllm serve validate(): {type(err).__name__}: {err}")
    try:
        CacheConfig(
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        )
    except Exception as err:
        message = " ".join(str(err).split())
        errors.append(f"CacheConfig (--gpu-memory-utilization / --kv-cache-memory-bytes): {message}")
    return errors


def check_engine_config(args: argparse.Namespace, config_model: str) -> list[str]:
    """The engine config `vllm serve` builds before it loads anything (AsyncEngineArgs over the
    parsed arguments, create_engine_config with the API server's usage context, as
    vllm/entrypoints/cli/serve.py does), with the model's name replaced by `config_model`, a local
    folder of the same kind of model: the scheduler's, cache's, parallel and model checks run
    (vllm/config/scheduler.py verify_max_model_len, config/parallel.py, config/model.py). A
    --max-model-len beyond the stand-in's context is allowed (VLLM_ALLOW_LONG_MAX_MODEL_LEN: the
    real model's limit is llmpack's own check); the CUDA-only GPU count check does not run here."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    args = argparse.Namespace(**vars(args))
    args.model = args.model_tag = config_model
    args.revision = args.tokenizer_revision = args.code_revision = None
    args.tokenizer = None
    try:
        AsyncEngineArgs.from_cli_args(args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    except Exception as err:
        errors = getattr(err, "errors", None)
        detail = errors()[0].get("ctx", {}).get("error", err) if callable(errors) and errors() else err
        return [f"engine config: {type(err).__name__}: {' '.join(str(detail).split())}"]
    return []


def check(
    parser: argparse.ArgumentParser,
    commands: dict[str, Any],
    name: str,
    argv: list[str],
    config_model: str | None = None,
) -> dict:
    argv = [str(a) for a in argv]
    if argv and argv[0] not in commands and (argv[0] == "vllm" or argv[0].endswith("/vllm")):
        argv = argv[1:]
    result: dict[str, Any] = {"name": name, "argv": argv, "ok": False, "errors": [], "warnings": []}
    leaf, depth = leaf_parser(parser, argv)
    subcommand = " ".join(argv[:depth])
    result["subcommand"] = subcommand
    result["values"] = {}
    if depth == 0 or _subparsers(leaf):
        known = ", ".join(sorted(_subparsers(leaf) if depth else commands))
        result["errors"].append(f"{' '.join(argv[: depth + 1])!r} names no vllm subcommand (known: {known})")
        return result
    words = argv[depth:]
    result["errors"] += spelling_errors(leaf, words, subcommand)
    result["warnings"] += duplicate_warnings(leaf, words)
    try:
        args = parser.parse_args(argv)
    except (ParseError, ValueError, TypeError, AssertionError) as err:
        result["errors"].append(str(err))
        return result
    except SystemExit as err:  # --help, --version
        result["errors"].append(f"the parser exited ({err.code}) instead of returning arguments")
        return result
    result["values"] = {dest: jsonable(getattr(args, dest, None)) for dest in given_dests(leaf, words)}
    if subcommand == "serve":
        result["errors"] += check_serve(args, commands["serve"])
        if config_model and not result["errors"]:
            result["errors"] += check_engine_config(args, config_model)
    result["ok"] = not result["errors"]
    return result


def main() -> int:
    requests = json.load(sys.stdin)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM's logs and warnings: stderr, so stdout is only the verdict
    sys.stdout = sys.stderr
    argparse.ArgumentParser.error = _raise_parse_error  # type: ignore[assignment,method-assign]
    parser, commands = build_parser()
    import vllm

    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    results = [check(parser, commands, r["name"], r["argv"], r.get("config_model")) for r in requests]
    json.dump({"vllm_version": vllm.__version__, "results": results}, out)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
