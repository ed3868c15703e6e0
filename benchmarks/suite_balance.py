"""How the test suite's time falls on its pytest-xdist workers, from the log of a verbose run with every duration.

``make test`` hands each worker whole scopes (a test module, or a class holding tests: ``--dist loadscope``), the
longest first (``LONGEST_SCOPES`` in tests/conftest.py, with ``--no-loadscope-reorder``). This reads a log of::

    make test PYTEST_ARGS="-vv --durations=0" > runs/suite.log 2>&1
    python benchmarks/suite_balance.py runs/suite.log --out runs/suite-balance.json

(``-vv``, one more than the ``-q`` of ``make test``, prints which worker ran each test; ``--durations=0`` how long
its setup, call and teardown took) and prints each scope's seconds, longest first, with the worker that ran it,
then each worker's busy seconds: two workers that end far apart say the order of ``LONGEST_SCOPES`` is out of
date, and the scopes list the order to give it.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from vitres_deploy.files import atomic_write_json

#: ``[gw0] [ 13%] PASSED tests/test_x.py::test_a`` (pytest-xdist, verbose).
WORKER_LINE = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] \w+ (\S+)")
#: ``12.34s call     tests/test_x.py::test_a`` (``--durations=0``).
DURATION_LINE = re.compile(r"^(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S+)")
#: ``533 passed, 18 skipped in 588.89s (0:09:48)``.
SUMMARY_LINE = re.compile(r"^=*\s*(\d+ passed.*) in (\d+(?:\.\d+)?)s")


def scope_of(nodeid: str) -> str:
    """The scope ``--dist loadscope`` hands out whole: the test's module, or its class."""
    return nodeid.rsplit("::", 1)[0]


def balance(log: str) -> dict:
    """Per scope and per worker seconds of a ``-vv --durations=0`` pytest-xdist log; see the module's docstring."""
    worker_of: dict[str, str] = {}
    seconds: dict[str, float] = defaultdict(float)
    wall = None
    outcome = ""
    for line in log.splitlines():
        if m := WORKER_LINE.match(line):
            worker_of[m.group(2)] = m.group(1)
        elif m := DURATION_LINE.match(line):
            seconds[m.group(3)] += float(m.group(1))
        elif m := SUMMARY_LINE.match(line):
            outcome, wall = m.group(1), float(m.group(2))
    if not worker_of or not seconds:
        raise SystemExit("error: no worker lines or no durations in the log: run the suite with "
                         'PYTEST_ARGS="-vv --durations=0" under pytest-xdist')
    scopes: dict[str, dict] = {}
    workers: dict[str, float] = defaultdict(float)
    for nodeid, s in seconds.items():
        worker = worker_of.get(nodeid, "?")
        scope = scopes.setdefault(scope_of(nodeid), {"seconds": 0.0, "workers": set()})
        scope["seconds"] += s
        scope["workers"].add(worker)
        workers[worker] += s
    ordered = sorted(scopes.items(), key=lambda kv: -kv[1]["seconds"])
    return {"wall_s": wall, "outcome": outcome,
            "workers_busy_s": {w: round(s, 1) for w, s in sorted(workers.items())},
            "scopes": [{"scope": name, "seconds": round(v["seconds"], 1), "workers": sorted(v["workers"])}
                       for name, v in ordered]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help='log of make test PYTEST_ARGS="-vv --durations=0"')
    parser.add_argument("--top", type=int, default=20, help="scopes to print (all are in --out)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    result = balance(args.log.read_text(errors="replace"))
    print(f"{'seconds':>8}  {'worker':<8} scope")
    for row in result["scopes"][:args.top]:
        print(f"{row['seconds']:>8.1f}  {','.join(row['workers']):<8} {row['scope']}")
    busy = ", ".join(f"{w} {s:.1f} s" for w, s in result["workers_busy_s"].items())
    print(f"workers busy: {busy}; wall {result['wall_s']} s ({result['outcome']})")
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
