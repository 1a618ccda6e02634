"""The mutation score of the last ``make mutate`` run, per module and in total, from mutmut's result files.

Score = detected / (detected + survived + not covered), where detected = killed, timed out or caught by the type
checker. Mutants no selected test runs ("no tests") count against the score: an uncovered line is not a tested one.
Usage: ``python scripts/mutation_score.py [--survivors]`` after ``mutmut run`` (run from the repository root).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
MISSED = {"survived", "no tests", "suspicious"}


def main(argv: list[str]) -> int:
    metas = sorted(Path("mutants").glob("shiftaudit/**/*.py.meta"))
    if not metas:
        print("no mutmut results: run `make mutate` first", file=sys.stderr)
        return 2
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print(f"{'module':45} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    for meta in metas:
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        counts = Counter(status_by_exit_code[c] for c in codes.values())
        if not codes:
            continue
        total += counts
        survivors += [k for k, c in codes.items() if status_by_exit_code[c] in MISSED]
        detected = sum(counts[s] for s in DETECTED)
        judged = detected + sum(counts[s] for s in MISSED)
        score = f"{100 * detected / judged:.1f} %" if judged else "-"
        module = str(meta.relative_to("mutants"))[: -len(".meta")]
        print(f"{module:45} {len(codes):8} {detected:7} {counts['survived']:9} {counts['no tests']:9} {score:>7}")
    detected = sum(total[s] for s in DETECTED)
    judged = detected + sum(total[s] for s in MISSED)
    pending = total["not checked"]
    print(f"{'total':45} {sum(total.values()):8} {detected:7} {total['survived']:9} {total['no tests']:9} "
          f"{100 * detected / judged if judged else 0:6.1f} %" + (f"  ({pending} not checked yet)" if pending else ""))
    if "--survivors" in argv:
        print("\n".join(sorted(survivors)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
