"""Each program installs only what it imports: pyproject.toml's extras checked against the code.

The base install (pydantic, pyyaml) is what every program needs; each program adds its extra, and
its image installs only that one (images/README.md):

    extra      command                                           code
    operator   llmpack operator                                  llmpack.controller
    profiler   llmpack profile, fill-model-cache (Jobs)          llmpack.profiler
    serving    llmpack launch (the serving pods' router)         llmpack.launcher
    cli        llmpack advise, llmpack predict (tables, --plot)  advise_cli, predict_cli, plotting
    (none)     llmpack plan, llmpack crd

Proved twice. By reading: every third-party import under operator/llmpack is a declared
dependency, and every one a command can reach (at module level or inside a function) is in the
base or its extra. By running: in a Python whose import system refuses every installed package
that `pip install 'llmpack[EXTRA]'` would not install (the requirements followed through the
installed packages' metadata), every module of the program imports and the command runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llmpack.cli import EXTRAS as SUBCOMMAND_EXTRA
from llmpack.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOT = ROOT / "operator"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
TEST_ONLY_EXTRAS = {"test"}

# The packages that are programs of their own: a command does not need another program's extra for
# a function it calls from there (`llmpack plan --simulate` runs the profiler's simulated backend),
# so reading stops at their border; running the command proves the part it uses.
PROGRAM_PACKAGES = ("llmpack.controller", "llmpack.profiler", "llmpack.launcher")
# Imported only where installed, behind `except ImportError`: not a dependency of any extra.
OPTIONAL_IMPORTS = {
    "transformers": "profiler/model_files.py reads a Hub model's config.json with it where the "
    "image has it (vLLM's does); without it the built-in catalogue is used",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- what pyproject.toml declares ---------------------------------------------------------------


def declared(extra: str | None) -> list[Requirement]:
    """The requirements of `pip install 'llmpack[extra]'` as pyproject.toml writes them, with the
    extras an extra names of llmpack itself (`llmpack[operator,...]`) written out."""
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in EXTRAS[name]:
            requirement = Requirement(line)
            if canonical(requirement.name) == canonical(PROJECT["name"]):
                todo += sorted(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def declared_names(extra: str | None) -> set[str]:
    return {canonical(r.name) for r in declared(extra)}


def installed_closure(extra: str | None) -> set[str]:
    """Every distribution pip installs for llmpack[extra]: its requirements and theirs, markers
    evaluated for this Python, as the installed packages' metadata states them."""
    found: set[str] = {canonical(PROJECT["name"])}
    todo = [(r.name, frozenset(r.extras)) for r in declared(extra)]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in done:
            continue
        done.add((canonical(name), extras))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it can be imported either
        found.add(canonical(name))
        for line in requires:
            requirement = Requirement(line)
            environments = [{"extra": e} for e in ("", *extras)]
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def distributions_of(import_name: str) -> set[str]:
    return {canonical(d) for d in importlib.metadata.packages_distributions().get(import_name, [])}


# --- what the code imports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    module: str  # what is imported, absolute
    importer: str  # the llmpack module that imports it
    in_function: bool
    guarded: bool  # inside `try:` with an `except ImportError` (or ModuleNotFoundError)

    @property
    def top(self) -> str:
        return self.module.partition(".")[0]

    @property
    def third_party(self) -> bool:
        return self.top not in sys.stdlib_module_names and self.top not in ("llmpack", "__future__")


def llmpack_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SOURCE_ROOT / "llmpack").rglob("*.py")):
        parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = llmpack_modules()


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool, guarded: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, module, in_function, guarded)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield Import(source, module, in_function, guarded)
            for alias in node.names:  # `from llmpack.advisor import bca` imports a module
                if f"{source}.{alias.name}" in MODULES:
                    yield Import(f"{source}.{alias.name}", module, in_function, guarded)
        for child in ast.iter_child_nodes(node):
            child_guarded = guarded or (
                isinstance(node, ast.Try)
                and child in node.body
                and any(_catches_import_error(h) for h in node.handlers)
            )
            child_in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from visit(child, child_in_function, child_guarded)

    yield from visit(ast.parse(path.read_text()), False, False)


def program_package(module: str) -> str | None:
    return next((p for p in PROGRAM_PACKAGES if module == p or module.startswith(p + ".")), None)


def reachable_imports(entry: str) -> list[Import]:
    """Every import the command of module `entry` can execute: the modules it imports, at module
    level or in a function, and theirs, without entering another program's package."""
    own = program_package(entry)
    seen, todo, found = set(), [entry], []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [p for p in parents if p in MODULES]  # importing a.b.c runs a and a.b first
        for imported in imports_of(module):
            found.append(imported)
            other = program_package(imported.module)
            if imported.module in MODULES and (other is None or other == own):
                todo.append(imported.module)
    return found


def test_every_command_has_its_extra_and_every_extra_a_program() -> None:
    assert set(SUBCOMMAND_EXTRA) == set(SUBCOMMANDS), "a new subcommand: say which extra it needs"
    programs = {e for e in SUBCOMMAND_EXTRA.values() if e is not None}
    assert programs | TEST_ONLY_EXTRAS == set(EXTRAS)


def test_the_test_extra_installs_every_program() -> None:
    everything = set().union(*(declared_names(e) for e in set(EXTRAS) - TEST_ONLY_EXTRAS))
    assert everything <= declared_names("test")


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """Across operator/llmpack: each import of a package outside the standard library belongs to a
    distribution the base install or an extra declares (not only pulls in through another one)."""
    dependencies = set().union(*(declared_names(e) for e in set(EXTRAS) - TEST_ONLY_EXTRAS))
    undeclared = []
    for module in MODULES:
        for imported in imports_of(module):
            if not imported.third_party or imported.top in OPTIONAL_IMPORTS:
                continue
            distributions = distributions_of(imported.top)
            if not distributions & dependencies:
                where = ", ".join(sorted(distributions)) or "no installed distribution"
                undeclared.append(f"{imported.importer} imports {imported.top} ({where})")
    assert undeclared == []


def test_optional_imports_are_guarded() -> None:
    """An import that no extra declares works only behind `except ImportError`."""
    optional = [i for m in MODULES for i in imports_of(m) if i.top in OPTIONAL_IMPORTS]
    assert optional, "an optional import is gone: drop it from OPTIONAL_IMPORTS"
    assert [i for i in optional if not i.guarded] == []


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMAND_EXTRA))
def test_a_command_imports_only_the_base_and_its_extra(subcommand: str) -> None:
    extra = SUBCOMMAND_EXTRA[subcommand]
    allowed = declared_names(extra)
    entry = SUBCOMMANDS[subcommand][0]
    outside = sorted(
        f"{i.importer} imports {i.top}"
        for i in reachable_imports(entry)
        if i.third_party and i.top not in OPTIONAL_IMPORTS and not distributions_of(i.top) & allowed
    )
    assert outside == [], f"`llmpack {subcommand}` needs more than llmpack[{extra or ''}]"


def test_another_programs_package_is_entered_only_inside_a_function() -> None:
    """Reading stops at another program's package; that is sound only while nothing imports one at
    module level, which would need that program's extra just to start."""
    crossings = [
        f"{i.importer} imports {i.module}"
        for m in MODULES
        for i in imports_of(m)
        if not i.in_function
        and program_package(i.module) is not None
        and program_package(i.module) != program_package(m)
    ]
    assert crossings == []


# --- by running: a Python that has only what the extra installs ---------------------------------

# Refuses every top-level module of an installed distribution outside the extra's closure, as if it
# were not installed (the ModuleNotFoundError an absent package raises), then imports and runs.
RESTRICTED_PYTHON = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    plan = json.loads(sys.argv[1])
    refused = set(plan["refused"])
    # setuptools' distutils-precedence.pth imports its shim as Python starts; nothing else may be in.
    already = sorted(m for m in sys.modules if m.partition(".")[0] in refused - {"_distutils_hack"})
    assert not already, f"imported before the refusal was installed: {already}"

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in refused:
                raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    for name in plan["packages"]:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            importlib.import_module(info.name)
    for name in plan["modules"]:
        importlib.import_module(name)
    if plan["argv"] is not None:
        from llmpack.cli import main
        try:
            code = main(plan["argv"])
        except SystemExit as stop:
            code = stop.code
        sys.exit(code)
    """
)


def refused_modules(extra: str | None) -> list[str]:
    installs = installed_closure(extra)
    return sorted(
        top
        for top, distributions in importlib.metadata.packages_distributions().items()
        if top not in sys.stdlib_module_names and not {canonical(d) for d in distributions} & installs
    )


def run_restricted(
    extra: str | None,
    *,
    packages: tuple[str, ...] = (),
    modules: tuple[str, ...] = (),
    argv: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    plan = {"refused": refused_modules(extra), "packages": packages, "modules": modules, "argv": argv}
    return subprocess.run(
        [sys.executable, "-c", RESTRICTED_PYTHON, json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


@dataclass(frozen=True)
class Run:
    extra: str | None
    packages: tuple[str, ...]
    argv: list[str]


def runs(tmp_path: Path) -> dict[str, Run]:
    return {
        "operator": Run("operator", ("llmpack.controller",), ["operator", "--help"]),
        "profile": Run("profiler", ("llmpack.profiler",), ["profile", "--help"]),
        "fill-model-cache": Run("profiler", ("llmpack.profiler",), ["fill-model-cache", "--help"]),
        "launch": Run("serving", ("llmpack.launcher",), ["launch", "--help"]),
        "advise": Run(
            "cli", (), ["advise", "--paper-model", "opt-1.3b", "--plot", str(tmp_path / "advice.png")]
        ),
        "predict": Run("cli", (), ["predict", "--paper-model", "opt-1.3b", "--max-num-seqs", "64"]),
        "plan": Run(None, (), ["plan", "-f", str(ROOT / "examples/opt-1.3b-mps-dra.yaml"), "--simulate"]),
        "crd": Run(None, (), ["crd"]),
    }


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMAND_EXTRA))
def test_a_command_runs_with_the_base_and_its_extra_alone(subcommand: str, tmp_path: Path) -> None:
    run = runs(tmp_path)[subcommand]
    assert run.extra == SUBCOMMAND_EXTRA[subcommand]
    done = run_restricted(run.extra, packages=run.packages, argv=run.argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()


def test_the_restricted_python_refuses_what_the_extra_does_not_install() -> None:
    """The proof above proves something: without its extra the operator cannot even be imported."""
    assert {"kopf", "rich", "matplotlib", "pynvml"} <= set(refused_modules("serving"))
    assert "aiohttp" not in refused_modules("serving")
    done = run_restricted(None, modules=("llmpack.controller.operator",))
    assert done.returncode != 0
    assert "No module named 'kopf' (refused)" in done.stderr


def test_the_operators_extra_has_no_tables_plots_or_gpu_library() -> None:
    """What issue 14 found in the operator image: matplotlib, rich and nvidia-ml-py."""
    assert {"matplotlib", "rich", "nvidia-ml-py"}.isdisjoint(installed_closure("operator"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["advise", "--paper-model", "opt-1.3b"], "llmpack advise needs rich: pip install 'llmpack[cli]'"),
        (["launch", "--help"], "llmpack launch needs aiohttp: pip install 'llmpack[serving]'"),
        (["operator"], "llmpack operator needs kubernetes: pip install 'llmpack[operator]'"),
    ],
)
def test_a_command_without_its_extra_names_the_extra_to_install(argv: list[str], message: str) -> None:
    done = run_restricted(None, argv=argv)
    assert (done.returncode, done.stderr.strip()) == (2, message)
