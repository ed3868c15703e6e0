"""How reproducible are end-to-end measurements? Re-measure a table's validation networks and compare.

    python benchmarks/latency_repeatability.py profiles/amd-epyc/vit-resnas-tiny@112-ort-cpu-fp32-b1.json

Measures the same seeded networks that ``profile validate`` measured (same samples and seed, exports
cached) once more, without saving, and prints how far each network's median moved, plus the validation
figures of the second run. A predictor cannot be judged more precisely than this spread.
"""

from __future__ import annotations

import argparse

from vitres_deploy.latency import LatencyTable, validate_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    first = table.validation
    if not first:
        raise SystemExit(f"{args.table} has no validation report: run `vitres-deploy profile validate` first")
    again = validate_table(args.table, samples=first.samples, seed=first.seed, save=False, progress=False)
    second = {r.hash: r.measured_ms for r in again.rows}
    changes = sorted(100 * (second[r.hash] / r.measured_ms - 1) for r in first.rows)
    print(f"{len(changes)} networks, change of the measured median between two runs: "
          f"{changes[0]:+.1f}% .. {changes[-1]:+.1f}% (middle half {changes[len(changes) // 4]:+.1f}% .. "
          f"{changes[3 * len(changes) // 4]:+.1f}%)")
    print(f"second run: MAPE {again.errors.mape:.2f}%, within ±10% {again.errors.within_10pct:.0%}, "
          f"Kendall τ {again.errors.kendall_tau:.3f}")


if __name__ == "__main__":
    main()
