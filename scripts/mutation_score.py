"""The mutation score of the last ``make mutate`` run, per module and in total, from mutmut's result files.

Score = detected / (detected + survived + not covered), where detected = killed, timed out or caught by the type
checker. Mutants no selected test runs ("no tests") count against the score: an uncovered line is not a tested one.

A surviving mutant is either a missing test or an equivalent mutant (one no test could tell from the original).
``scripts/mutation_equivalents.toml`` lists the equivalent kinds, each with its reason and a pattern that the mutated
line must match; the table shows them in their own column and a second score without them. Everything else that
survived is listed as untriaged.

Usage (from the repository root, after ``mutmut run``)::

    python scripts/mutation_score.py              # the table
    python scripts/mutation_score.py --survivors  # and every survivor with its changed line, by reason
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import tomllib  # Python 3.11+, as the dev environment's mutmut runs
from mutmut.stats import status_by_exit_code

DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
MISSED = {"survived", "no tests", "suspicious"}
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.toml")


def changed_lines(name: str) -> tuple[str, str]:
    """The original and the mutated lines of a mutant (joined when several), from mutmut's own diff."""
    from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=find_mutant(name).path).splitlines()
    old = " ".join(line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---"))
    new = " ".join(line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++"))
    return old, new


def equivalence_reason(name: str, old: str, new: str, rules: list[dict[str, str]]) -> str | None:
    """The reason of the first rule whose ``function`` and ``mutated`` patterns match, or None."""
    for rule in rules:
        patterns = ((rule.get("function", ""), name), (rule.get("mutated", ""), new), (rule.get("original", ""), old))
        if all(re.search(pattern, text) for pattern, text in patterns):
            return rule["reason"]
    return None


def main(argv: list[str]) -> int:
    metas = sorted(Path("mutants").glob("shiftaudit/**/*.py.meta"))
    if not metas:
        print("no mutmut results: run `make mutate` first", file=sys.stderr)
        return 2
    rules = tomllib.loads(EQUIVALENTS.read_text())["equivalent"]
    total: Counter[str] = Counter()
    by_reason: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    print(f"{'module':45} {'mutants':>8} {'detected':>8} {'survived':>9} {'no tests':>9} {'equiv.':>7} {'score':>7}", end="")
    print(f" {'w/o equiv.':>10}")
    for meta in metas:
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if not codes:
            continue
        counts = Counter(status_by_exit_code[c] for c in codes.values())
        equivalent = 0
        for name, code in sorted(codes.items()):
            if status_by_exit_code[code] not in MISSED:
                continue
            old, new = changed_lines(name)
            reason = equivalence_reason(name, old, new, rules) if status_by_exit_code[code] == "survived" else None
            equivalent += reason is not None
            by_reason[reason or "untriaged"].append((name, old, new))
        total += counts
        total["equivalent"] += equivalent
        module = str(meta.relative_to("mutants"))[: -len(".meta")]
        print(_row(module, len(codes), counts, equivalent))
    print(_row("total", sum(v for k, v in total.items() if k != "equivalent"), total, total["equivalent"]))
    if total["not checked"]:
        print(f"({total['not checked']} not checked yet)")
    if "--survivors" in argv:
        for reason in sorted(by_reason, key=lambda r: (r == "untriaged", r)):
            print(f"\n## {reason} ({len(by_reason[reason])})")
            for name, old, new in by_reason[reason]:
                print(f"{name}\n    - {old}\n    + {new}")
    return 0


def _row(module: str, mutants: int, counts: Counter[str], equivalent: int) -> str:
    detected = sum(counts[s] for s in DETECTED)
    judged = detected + sum(counts[s] for s in MISSED)
    score = f"{100 * detected / judged:.1f} %" if judged else "-"
    strict = f"{100 * detected / (judged - equivalent):.1f} %" if judged > equivalent else "-"
    cells = f"{mutants:8} {detected:8} {counts['survived']:9} {counts['no tests']:9} {equivalent:7} {score:>7} {strict:>10}"
    return f"{module:45} {cells}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
