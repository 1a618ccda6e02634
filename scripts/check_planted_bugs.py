"""Plant known bugs one at a time into a copy of the package and check that the test named for each one fails.

These are the bugs that once passed a green suite (issue 12) plus one found since; each has a test named for it.
Run with ``make planted``; exit 1 when any planted bug survives. The working tree is never modified.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plant:
    name: str
    file: str
    old: str
    new: str
    test: str


PLANTS = [
    Plant(
        "95 % intervals with z = 1",
        "shiftaudit/metrics/stats.py",
        "Z95 = 1.959963984540054",
        "Z95 = 1.0",
        "tests/test_statistics.py::test_planted_z95_wrong_constant",
    ),
    Plant(
        "Wilson centre replaced by p",
        "shiftaudit/metrics/stats.py",
        "centre = (p + z * z / (2 * n)) / denom",
        "centre = p",
        "tests/test_statistics.py::test_planted_wilson_centre_replaced_by_p",
    ),
    Plant(
        "mean interval not divided by sqrt(n)",
        "shiftaudit/metrics/stats.py",
        "half = z * float(values.std(ddof=1)) / math.sqrt(n)",
        "half = z * float(values.std(ddof=1))",
        "tests/test_statistics.py::test_planted_mean_interval_not_divided_by_sqrt_n",
    ),
    Plant(
        "MAC with max instead of mean",
        "shiftaudit/metrics/stability.py",
        "np.abs(a - b).mean(axis=1)",
        "np.abs(a - b).max(axis=1)",
        "tests/test_statistics.py::test_planted_mac_max_instead_of_mean",
    ),
    Plant(
        "gate >= turned into >",
        "shiftaudit/gating.py",
        "passed = value >= t.value",
        "passed = value > t.value",
        "tests/test_rendering.py::test_planted_gate_ge_turned_into_gt",
    ),
    Plant(
        "table row 'Accuracy, random shift' shows the zero-shift value",
        "shiftaudit/report/rows.py",
        "        found = cls.readings(entry, result.settings)",
        '        found = cls.readings(m["accuracy"]["none"] if cls.key() == ("accuracy", "random") else entry, result.settings)',
        "tests/test_rendering.py::test_planted_table_random_shift_row_shows_zero_shift_value",
    ),
    Plant(
        "variation with ddof=1",
        "shiftaudit/metrics/variation.py",
        "p.std(axis=1)",
        "p.std(axis=1, ddof=1)",
        "tests/test_engine.py::test_every_all_shift_metric_equals_the_naive_loop",
    ),
    # issue 14 part 3: friction a practitioner hits
    Plant(
        "far identification candidates suggested",
        "shiftaudit/loading/identify.py",
        "USEFUL_OVERLAP = 0.5",
        "USEFUL_OVERLAP = 0.0",
        "tests/test_loading_identify.py::test_only_close_candidates_are_suggested",
    ),
    Plant(
        "per-image paths dropped",
        "shiftaudit/engine/runner.py",
        "    _add_image_paths(dataset, computed, per_image)\n",
        "",
        "tests/test_cli_eval.py::test_json_and_flip_examples_carry_image_paths",
    ),
    Plant(
        "latency noise never flagged",
        "shiftaudit/antialias/costs.py",
        "return overlap or max(a.iqr, b.iqr) >= abs(a.median - b.median)",
        "return False",
        "tests/test_cli_patch.py::test_latency_warns_when_noise_exceeds_the_difference",
    ),
    Plant(
        "--arch-kwargs not stored by patch -o",
        "shiftaudit/antialias/workflow.py",
        "        arch_kwargs=loaded.arch_kwargs,\n",
        "",
        "tests/test_loading.py::test_factory_with_arch_kwargs_in_the_current_folder_and_stored_when_patched",
    ),
]


def run_plant(plant: Plant, work: Path) -> bool:
    """True when the planted bug makes its test fail (the bug is caught)."""
    target = work / plant.file
    original = target.read_text()
    if original.count(plant.old) != 1:
        raise SystemExit(f"cannot plant {plant.name!r}: {plant.old!r} is not in {plant.file} exactly once (update this script)")
    target.write_text(original.replace(plant.old, plant.new))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist", plant.test],
            cwd=work,
            capture_output=True,
            text=True,
        )
    finally:
        target.write_text(original)
    return proc.returncode == 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shiftaudit-planted-") as tmp:
        work = Path(tmp)
        for part in ("shiftaudit", "tests", "benchmarks"):
            shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work)
        survived = []
        for plant in PLANTS:
            caught = run_plant(plant, work)
            print(f"{'caught  ' if caught else 'SURVIVED'} {plant.name}  ({plant.test})", flush=True)
            if not caught:
                survived.append(plant.name)
    print(f"{len(PLANTS) - len(survived)} of {len(PLANTS)} planted bugs caught")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
