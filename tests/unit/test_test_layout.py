"""The test suite's own layout: pytest imports test modules by their basename (no __init__.py in
tests/), so two test files with the same name in different folders stop the whole run at collection
("import file mismatch"). Caught here, in the unit tests, instead of minutes into CI."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "__pycache__" not in path.parts and path.name != "conftest.py":  # pytest loads those by path
            seen[path.stem].append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
