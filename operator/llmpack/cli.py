"""The `llmpack` command. Each subcommand lives beside the code it drives, in a module that
provides `add_arguments(parser)` and `run(args) -> int`; it is imported only when used, so
`llmpack advise` never pays for importing kopf or the Kubernetes client."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from llmpack.errors import UserError

__all__ = ["DESCRIPTION", "EXTRAS", "SUBCOMMANDS", "UserError", "build_parser", "main"]

DESCRIPTION = (
    "Serve small LLMs with vLLM on Kubernetes: profile a model, choose the batch size that reaches "
    "the throughput plateau within the latency objective, and pack memory-capped replicas onto "
    "each GPU (MPS or MIG)."
)

# name -> (module, one-line help: lower case, no full stop, as argparse lists commands; the
# command's own --help turns it into a sentence)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "advise": ("llmpack.advise_cli", "recommend max-num-seqs, KV cache size and packing from a profile"),
    "predict": ("llmpack.predict_cli", "predict throughput and latency of R replicas on one GPU"),
    "plan": ("llmpack.plan_cli", "dry run: what the operator would decide and apply for an LLMDeployment"),
    "profile": ("llmpack.profiler.cli", "measure a model on this GPU and publish the Profile"),
    "fill-model-cache": (
        "llmpack.profiler.model_cache",
        "download a model revision into a model cache folder and verify it",
    ),
    "launch": ("llmpack.launcher.cli", "start packed vLLM replicas one after another behind a router"),
    "operator": ("llmpack.controller.cli", "run the operator"),
    "crd": ("llmpack.api.crd", "print the LLMDeployment CustomResourceDefinition"),
}

# What each command needs besides the base install (pydantic, pyyaml): an extra of pyproject.toml
# (None: nothing). tests/unit/test_extras.py proves each command runs with its extra alone.
EXTRAS: dict[str, str | None] = {
    "advise": "cli",
    "predict": "cli",
    "plan": None,
    "profile": "profiler",
    "fill-model-cache": "profiler",
    "launch": "serving",
    "operator": "operator",
    "crd": None,
}


# Commands a person runs at a terminal: an unexpected error is one line (LLMPACK_DEBUG=1: the
# traceback). The others run in pods, where the traceback in the log is what a report needs.
INTERACTIVE = frozenset({"advise", "predict", "plan", "crd"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpack", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage or the error for an unknown command
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        sub = argparse.ArgumentParser(prog=f"llmpack {name}", description=sentence(help_text))
        module.add_arguments(sub)
        args = sub.parse_args(rest)
        try:
            return int(module.run(args) or 0)
        except UserError as err:
            print(f"llmpack {name}: {err}", file=sys.stderr)
            return 2
        except ModuleNotFoundError:
            raise  # an extra not installed: install_hint below names it
        except Exception as err:  # a fault of llmpack's, not the input's: one line, not a traceback
            if os.environ.get("LLMPACK_DEBUG") or name not in INTERACTIVE:
                raise  # in a pod (operator, profile, launch, fill) the traceback is the report
            print(
                f"llmpack {name}: internal error: {type(err).__name__}: {' '.join(str(err).split())[:500]} "
                "(a bug in llmpack: please report it with the input; LLMPACK_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            return 70  # EX_SOFTWARE
    except ModuleNotFoundError as err:
        if (hint := install_hint(name, err)) is None:
            raise
        print(hint, file=sys.stderr)
        return 2


def sentence(help_text: str) -> str:
    """A command's one-line help as its --help description: "Run the operator."."""
    return help_text[:1].upper() + help_text[1:] + "."


def install_hint(command: str, err: ModuleNotFoundError) -> str | None:
    """What to install when a package the command's extra provides is absent (the command imports
    it only when used): "llmpack advise needs rich: pip install 'llmpack[cli]'"."""
    package = (err.name or "").partition(".")[0]
    extra = EXTRAS.get(command)
    if extra is None or package in ("", "llmpack"):
        return None
    return f"llmpack {command} needs {package}: pip install 'llmpack[{extra}]'"


if __name__ == "__main__":
    # UserError lives in llmpack.errors, so `python -m llmpack.cli` and the console script share
    # one class without going through the imported module.
    sys.exit(main())
