"""Smoke test of bench.advisor_vs_defaults on one model: the comparison is read from measured rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import advisor_vs_defaults as bench  # noqa: E402
from bench.common import Result  # noqa: E402

from llmpack.advisor.loaders import load_paper_profile  # noqa: E402


def test_opt_1_3b_sharegpt_compares_measured_rows_at_b_opt_and_256():
    row = bench.compare("opt-1.3b", None)
    profile = load_paper_profile("opt-1.3b")
    assert (row.b_opt, row.b_default, row.default_wanted) == (96, 256, 256)
    assert row.tokens_per_s_advisor == profile.point(96).total_tokens_per_s
    assert row.tokens_per_s_default == profile.point(256).total_tokens_per_s
    # the default pool is the run's own KV capacity: vLLM printed 54.04 GiB at B=256
    assert row.kv_default_bytes / (1 << 30) == pytest.approx(54.04, abs=0.01)
    assert 0 < row.kv_ratio < 0.25 and row.itl_ratio < 0.6 and 0.8 < row.throughput_ratio < 1


def test_a_failed_default_run_is_replaced_by_the_nearest_measured_batch():
    row = bench.compare("opt-1.3b", 130)  # the paper's run at B=256 failed (port in use)
    assert row.b_default == 128 and row.default_wanted == 256


def test_tables_and_markdown_of_one_model(tmp_path):
    rows = [bench.compare("opt-1.3b", ol) for ol in (None, 390)]
    tables = bench.tables(rows)
    assert len(tables[0].rows) == 2 and tables[1].rows[-1][0] == "all"
    result = Result(name="x", title="t", summary="s", tables=tables)
    text = result.markdown()
    assert "| opt-1.3b | ShareGPT | 96 | 256 |" in text and "nproc" in text


def test_every_paper_group_is_listed():
    groups = bench.paper_groups()
    assert len(groups) == 20 and ("llama-2-13b", 520) in groups
