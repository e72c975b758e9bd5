"""Adaptive against exhaustive sweep on every group of the paper's measurements.

    python -m bench.adaptive_sweep [--paper-data DIR] [--json]

For each of the 20 (model, family, output length) groups of shared/paper-data/profiles.csv, runs
`llmpack profile`'s two sweeps with the paper backend (measuring = looking a row up; a failed run
is a failed point) and prints, each way: the points measured (successful measurements; failed
attempts in brackets) and the advisor's B_opt on the resulting profile, then the ratio of points
adaptive / exhaustive. The exhaustive sweep is the baseline; the adaptive one must agree on B_opt
everywhere while measuring at most half as many points.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from llmpack.advisor import advise
from llmpack.advisor.loaders import read_paper_rows
from llmpack.profiler.paper import PaperBackend
from llmpack.profiler.sweep import run_sweep


def groups(data_dir: str | None) -> list[tuple[str, str, int | None]]:
    found = defaultdict(int)
    for row in read_paper_rows(data_dir):
        setting = row["output_len_setting"]
        found[(row["model"], row["family"], None if setting == "sharegpt" else int(setting))] += 1
    return sorted(found, key=lambda g: (g[0], g[1], g[2] or 0))


def compare(model: str, output_len: int | None, data_dir: str | None) -> dict:
    backend = PaperBackend(model, output_len, data_dir)
    candidates = backend.default_candidates()
    row: dict = {"model": model, "output_len": output_len, "candidates": len(candidates)}
    for mode in ("exhaustive", "adaptive"):
        result = run_sweep(candidates, backend.measure, mode)
        profile = backend.profile(result.points, result.notes())
        row[mode] = {
            "points": len(result.points),
            "failed": len(result.failures),
            "b_opt": advise(profile).b_opt,
            "order": result.order,
        }
    row["same_b_opt"] = row["adaptive"]["b_opt"] == row["exhaustive"]["b_opt"]
    row["ratio"] = row["adaptive"]["points"] / row["exhaustive"]["points"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-data", metavar="DIR", help="folder holding profiles.csv")
    parser.add_argument("--json", action="store_true", help="print one JSON object per group")
    args = parser.parse_args(argv)
    rows = [
        compare(model, output_len, args.paper_data) for model, _family, output_len in groups(args.paper_data)
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{'model':<12} {'family/OL':<11} {'cands':>5}  {'exhaustive':>14}  {'adaptive':>14}  "
              f"{'ratio':>5}  adaptive order")  # fmt: skip
        print(f"{'':<12} {'':<11} {'':>5}  {'points  B_opt':>14}  {'points  B_opt':>14}")
        for row in rows:
            ex, ad = row["exhaustive"], row["adaptive"]
            group = "background" if row["output_len"] is None else f"advisor/{row['output_len']}"

            def cell(side: dict) -> str:
                failed = f"[{side['failed']}]" if side["failed"] else ""
                return f"{side['points']:>3}{failed:<3} {side['b_opt']:>6}"

            mark = "" if row["same_b_opt"] else "  B_opt DIFFERS"
            print(
                f"{row['model']:<12} {group:<11} {row['candidates']:>5}  {cell(ex):>14}  {cell(ad):>14}  "
                f"{row['ratio']:>5.2f}  {','.join(map(str, ad['order']))}{mark}"
            )
        points_ex = sum(r["exhaustive"]["points"] for r in rows)
        points_ad = sum(r["adaptive"]["points"] for r in rows)
        attempts_ex = sum(r["exhaustive"]["points"] + r["exhaustive"]["failed"] for r in rows)
        attempts_ad = sum(r["adaptive"]["points"] + r["adaptive"]["failed"] for r in rows)
        same = sum(r["same_b_opt"] for r in rows)
        worst = max(r["ratio"] for r in rows)
        print(
            f"\n{len(rows)} groups: same B_opt in {same}/{len(rows)}; points measured adaptive/exhaustive "
            f"{points_ad}/{points_ex} = {points_ad / points_ex:.2f} (worst group {worst:.2f}); "
            f"attempts incl. failed runs {attempts_ad}/{attempts_ex} = {attempts_ad / attempts_ex:.2f}"
        )
        print("[n] = failed runs the sweep attempted (missing rows of the paper data), not counted as points")
    ok = all(r["same_b_opt"] and r["ratio"] <= 0.5 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
