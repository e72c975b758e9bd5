"""Fixtures of the real-engine tests (marker `engine`): vLLM's CPU build and the tiny models.

A missing engine fails these tests (it is installed by hack/engine/install, which `make test`
runs first); it never skips them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.engine)


def pytest_report_header(config: pytest.Config) -> str | None:
    args = [str(a) for a in config.args]
    if not any("engine" in a for a in args) and "engine" not in (config.option.markexpr or ""):
        return None
    try:
        return f"vLLM engine: {engine.vllm_version()} ({engine.vllm_python()})"
    except Exception as err:  # the fixtures below fail the tests with the reason
        return f"vLLM engine: unavailable ({err})"


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    try:
        return engine.vllm_python()
    except engine.EngineUnavailable as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def vllm_version(vllm_python) -> str:
    return engine.vllm_version()


@pytest.fixture(scope="session")
def tiny_models(vllm_python) -> dict[str, Path]:
    try:
        return engine.tiny_models()
    except engine.EngineUnavailable as err:
        pytest.fail(str(err), pytrace=False)
