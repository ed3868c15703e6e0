"""Compare supernets of one space from their ``supernet_ranking.py`` reports: one row per supernet.

    python benchmarks/compare_rankings.py NAME=REPORT.json NAME=REPORT.json ... [--json]

For each report: the largest and smallest sub-network's test top-1 and their gap, the 50 random archs' mean test
top-1, the uniform archs' mean and range, the hold-out/test Kendall tau, the inherited/trained-alone taus; and
against the first report, on how many of the same random and uniform archs each later supernet scores higher
on test. The reports must cover the same archs (same space, seed and table), which the script checks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def summary(report: dict[str, Any], first: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of one report, and its wins over ``first`` on the same archs."""
    random_test = {r["hash"]: r["test_top1"] for r in report["random"]["rows"]}
    uniform_test = {r["hash"]: r["test_top1"] for r in report["uniform"]}
    row = {
        "supernet": report["supernet"],
        "largest": report["largest"]["test_top1"], "smallest": report["smallest"]["test_top1"],
        "gap": report["largest"]["test_top1"] - report["smallest"]["test_top1"],
        "random_mean": statistics.mean(random_test.values()),
        "uniform_mean": statistics.mean(uniform_test.values()),
        "uniform_range": [min(uniform_test.values()), max(uniform_test.values())],
        "holdout_test_tau": report["random"]["holdout_test_kendall_tau"],
        "inherited_alone_tau": report["alone"]["inherited_alone_kendall_tau"],
        "holdout_alone_tau": report["alone"]["holdout_alone_kendall_tau"],
    }
    if first is not None:
        theirs_random = {r["hash"]: r["test_top1"] for r in first["random"]["rows"]}
        theirs_uniform = {r["hash"]: r["test_top1"] for r in first["uniform"]}
        if set(theirs_random) != set(random_test) or set(theirs_uniform) != set(uniform_test):
            raise SystemExit("error: the reports cover different archs: use the same space, --seed and table")
        row["random_higher"] = sum(random_test[h] > theirs_random[h] for h in random_test)
        row["uniform_higher"] = sum(uniform_test[h] > theirs_uniform[h] for h in uniform_test)
    return row


def markdown(names: list[str], rows: list[dict[str, Any]], archs: tuple[int, int]) -> str:
    """The comparison as a Markdown table (top-1 in %)."""
    lines = ["| supernet | largest | smallest | gap (points) | random archs, mean | uniform archs, mean (range) "
             "| hold-out/test τ | inherited/alone τ | hold-out/alone τ | higher than the first on test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in zip(names, rows):
        higher = (f"{r['random_higher']}/{archs[0]} random, {r['uniform_higher']}/{archs[1]} uniform"
                  if "random_higher" in r else "—")
        lines.append(
            f"| {name} | {100 * r['largest']:.2f} | {100 * r['smallest']:.2f} | {100 * r['gap']:.2f} "
            f"| {100 * r['random_mean']:.2f} | {100 * r['uniform_mean']:.2f} ({100 * r['uniform_range'][0]:.2f}-"
            f"{100 * r['uniform_range'][1]:.2f}) | {r['holdout_test_tau']:+.3f} | {r['inherited_alone_tau']:+.3f} "
            f"| {r['holdout_alone_tau']:+.3f} | {higher} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="NAME=path/to/report.json, the reference first.")
    parser.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    args = parser.parse_args()
    names, reports = [], []
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: give NAME=REPORT.json")
        names.append(name)
        reports.append(json.loads(Path(path).read_text()))
    rows = [summary(r, reports[0] if i else None) for i, r in enumerate(reports)]
    if args.json:
        print(json.dumps(dict(zip(names, rows)), indent=2))
    else:
        print(markdown(names, rows, (len(reports[0]["random"]["rows"]), len(reports[0]["uniform"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
