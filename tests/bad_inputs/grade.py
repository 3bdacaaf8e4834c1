"""Grade the catalogue of bad inputs on this checkout: a table (case, grade, why) and the good/weak/bad counts.

    .venv/bin/python -m tests.bad_inputs.grade              # every case, in one process (Prefect's server starts once)
    .venv/bin/python tests/bad_inputs/grade.py -k squad     # the cases whose id contains "squad"
    .venv/bin/python tests/bad_inputs/grade.py --subprocess # each case as a real `ragtune` process (slow)

The code under test is this checkout's (its directory comes first on sys.path), whatever the virtualenv's editable
install points at. Exit status 0 when every case is good, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's tests/, flows/ and tasks/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.bad_inputs.catalogue import empty_mlflow_store, load_cases, prepare  # noqa: E402
from tests.bad_inputs.grading import (  # noqa: E402
    Grade,
    Outcome,
    captured_fds,
    grade,
    run_in_process,
    run_subprocess,
    show,
)


def _grade_all(ids: list[str], subprocesses: bool) -> list[tuple[Grade, Outcome]]:
    from tasks.offline import enable_offline_mode

    enable_offline_mode()
    import flows.pipeline  # noqa: F401 - Prefect configures its log handlers on the real streams, before any capture

    cases = [c for c in load_cases() if not ids or any(i in c.id for i in ids)]
    grades = []
    with tempfile.TemporaryDirectory(prefix="ragtune-catalogue-") as scratch:
        store = empty_mlflow_store(Path(scratch) / "empty-mlflow.db")
        with captured_fds() as read_fds:
            for case in cases:
                ws = prepare(case, Path(scratch) / case.id, store)
                outcome = run_subprocess(case, ws) if subprocesses else run_in_process(case, ws, read_fds)
                grades.append((grade(case, ws, outcome), outcome))
    return grades


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", action="append", default=[], help="Only cases whose id contains this (repeatable).")
    parser.add_argument("--subprocess", action="store_true", help="Run each case as a real ragtune process.")
    parser.add_argument("--show", action="store_true", help="Print what the user saw for each case not graded good.")
    parser.add_argument("--json", type=Path, help="Also write the grades to this JSON file.")
    args = parser.parse_args()

    import flows

    start = time.perf_counter()
    results = _grade_all(args.k, args.subprocess)
    total = time.perf_counter() - start
    if args.show:
        for g, outcome in results:
            if g.grade != "good":
                print(f"=== {g.case}: {g.grade} ({g.why})\n{show(outcome)}\n")
    grades = [g for g, _ in results]
    if not grades:
        print(f"no case id contains any of {args.k}")
        return 2
    width = max(len(g.case) for g in grades)
    print(f"code under test: {Path(flows.__file__).parent.parent}")
    print(f"{'case':<{width}}  grade  {'s':>5}  why")
    for g in grades:
        print(f"{g.case:<{width}}  {g.grade:<5}  {g.seconds:5.1f}  {g.why}")
    counts = Counter(g.grade for g in grades)
    print(f"\n{len(grades)} cases: good {counts['good']}, weak {counts['weak']}, bad {counts['bad']}; "
          f"{total:.0f} s in all ({'one process per case' if args.subprocess else 'in one process'})")
    if args.json:
        args.json.write_text(json.dumps([vars(g) for g in grades], indent=1))
    return 0 if counts["good"] == len(grades) else 1


if __name__ == "__main__":
    sys.exit(main())
