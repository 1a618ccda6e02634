"""``shiftaudit compare A.json B.json ...``: runs of the same data side by side, with each change from the first run.

Typical pairs: baseline vs anti-aliased patch, two checkpoints, two filters. A change is marked significant when the
two runs' 95 % confidence intervals do not overlap (see :data:`~shiftaudit.report.rows.SIGNIFICANCE_RULE`).
Runs on different data are refused: their numbers would look comparable and not be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shiftaudit.antialias.report import SCHEMA as PATCH_SCHEMA
from shiftaudit.cli import app
from shiftaudit.cli.common import check_outputs, console, handle_errors, json_to_stdout, say_stale
from shiftaudit.errors import UsageError
from shiftaudit.files import Refused, all_or_nothing, make_folder, read_regular, write_json_atomic
from shiftaudit.jsonfile import JsonInputError, load_json
from shiftaudit.limits import is_int
from shiftaudit.report.outputs import remove_stale_pictures
from shiftaudit.report.rows import SIGNIFICANCE_RULE, compare_rows
from shiftaudit.report.terminal import comparison_table, describe_shifts
from shiftaudit.result import AuditResult, short

COMPARISON_SCHEMA = "shiftaudit/comparison"
DATA_FIELDS = ("description", "num_images", "image_size", "labelled")

FilesArg = Annotated[
    list[Path],
    typer.Argument(
        help="JSON reports written by `eval --json` or `demo --json` on the same data, or `patch --eval --json` reports (each "
        "gives its baseline and patched runs); two runs at least.",
        show_default=False,
    ),
]
NamesOpt = Annotated[
    str | None, typer.Option("--names", help="Comma-separated column names, one per report (default: the file names).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Folder for the combined pictures (adversarial curve, variation, accuracy over shifts)."),
]
JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", help="Write the comparison (values, intervals, changes, significance) as JSON ('-' for stdout)."),
]
PICTURES = ("adversarial.png", "variation.png", "accuracy_map.png")


MAX_REPORT_BYTES = 512 << 20  # a 1.2M-image ImageNet train-set report is ~150 MB
NOT_OURS = "compare reads reports written by `shiftaudit eval --json` or `shiftaudit patch --eval --json`"
PATCH_RUNS = (("before", "baseline"), ("baseline_recalibrated", "baseline recalibrated"), ("after", "patched"))


def load_runs(path: Path) -> list[tuple[str | None, AuditResult]]:
    """The runs of one file: an audit report gives one (suffix None); a ``patch --eval --json`` report gives its
    baseline, the baseline recalibrated (when there is one) and the patched model, each with its suffix.

    The file is read without blocking (a FIFO or device is refused unread), up to a size limit, as strict JSON (no
    NaN, Infinity or 1e400, bounded nesting), and each audit is read into its types (:meth:`AuditResult.from_json`).
    Anything else (or a newer version of a schema) is refused in one sentence naming the field.
    """
    try:
        raw = load_json(read_regular(path, MAX_REPORT_BYTES))
    except Refused as exc:
        raise UsageError(f"Report {path} {exc}.") from None
    except JsonInputError as exc:
        raise UsageError(f"{path} is not a shiftaudit audit report ({exc}); {NOT_OURS}.") from None
    if isinstance(raw, dict) and raw.get("schema") == PATCH_SCHEMA:
        version = raw.get("schema_version")
        if not is_int(version) or version > 1:
            raise UsageError(
                f"{path} uses patch report schema version {short(version)}, newer than this shiftaudit reads (1); upgrade "
                "shiftaudit."
            )
        runs = [(suffix, _audit(raw[key], path)) for key, suffix in PATCH_RUNS if isinstance(raw.get(key), dict)]
        if not runs:
            raise UsageError(
                f"{path} is a patch report without audits; write one with `shiftaudit patch ... --eval --json FILE`."
            )
        return list(runs)
    return [(None, _audit(raw, path))]


def _audit(raw: object, path: Path) -> AuditResult:
    result = AuditResult.from_json(raw, str(path), NOT_OURS)
    if "sequential" in result.metrics:
        raise UsageError(
            f"{path} is a sequential gate report: it holds only the gated estimates; rerun that eval with --exact to compare it."
        )
    return result


def run_names(paths: list[Path], names: str | None) -> list[str]:
    if names is not None:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(paths) or not all(out):
            raise UsageError(f"--names needs {len(paths)} non-empty comma-separated names, one per report; got {names!r}.")
        return out
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def check_same_data(runs: list[tuple[str, AuditResult]]) -> list[str]:
    """Refuse runs on different data; return notes for differences that keep the comparison meaningful but qualified."""
    (name0, first), notes = runs[0], []
    for name, res in runs[1:]:
        for key in DATA_FIELDS:
            a, b = first.data.get(key), res.data.get(key)
            if a != b:
                raise UsageError(
                    f"{name} ran on different data than {name0} ({key}: {b!r} vs {a!r}); compare only runs on the same images."
                )
        ids_a, ids_b = first.per_image.get("image_id"), res.per_image.get("image_id")
        if ids_a is not None and ids_b is not None and ids_a != ids_b:
            raise UsageError(
                f"{name} evaluated other images than {name0} (per-image ids differ); compare only runs on the same images."
            )
        mode_a, mode_b = _shift_mode(first), _shift_mode(res)
        if mode_a != mode_b:
            raise UsageError(
                f"{name} used shift mode {mode_b} and {name0} shift mode {mode_a}: circular, crop and sub-pixel shifts "
                "measure different things, so their numbers are not comparable; compare runs of one shift mode."
            )
        if res.settings.get("shifts") != first.settings.get("shifts"):
            notes.append(
                f"{name} used a different shift set than {name0} ({_shifts(res)} vs {_shifts(first)}): consistency, "
                "variation and accuracy over shifts depend on the set, so compare them with care"
            )
        if res.settings.get("mode") != first.settings.get("mode"):
            notes.append(
                f"{name} ran in {res.settings.get('mode')} mode, {name0} in {first.settings.get('mode')} mode: some rows "
                "exist for one run only"
            )
        if res.data.get("preprocessing") != first.data.get("preprocessing"):
            notes.append(f"{name} preprocessed the images differently from {name0}")
    return notes


def _shift_mode(result: AuditResult) -> str:
    """The shift mode of a report (reports written before shift modes existed are circular)."""
    return str(result.settings.get("shift_mode") or result.settings.get("shifts", {}).get("mode") or "circular")


def _shifts(result: AuditResult) -> str:
    s = result.settings.get("shifts", {})
    return f"{s.get('count', '?')} shifts, max {s.get('max_shift', '?')} px, step {s.get('step', '?')}"


def comparison_json(runs: list[tuple[str, AuditResult]], paths: list[Path], notes: list[str]) -> dict[str, object]:
    rows = []
    for row in compare_rows(runs):
        rows.append(
            {
                "metric": row.metric,
                "unit": "fraction" if row.percent else "value",
                "values": row.values,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "change": [None, *(_change(row.delta(i), row.percent) for i in range(1, len(runs)))],
                "significant": [None, *(row.significant(i) for i in range(1, len(runs)))],
            }
        )
    return {
        "schema": COMPARISON_SCHEMA,
        "schema_version": 1,
        "runs": [
            {"name": name, "file": str(path), "model": res.model, "settings": res.settings}
            for (name, res), path in zip(runs, paths)
        ],
        "data": runs[0][1].data,
        "rows": rows,
        "significance_rule": SIGNIFICANCE_RULE,
        "notes": notes,
    }


def _change(delta: float | None, percent: bool) -> float | None:
    """A change as a fraction for percentage rows (the JSON holds fractions, the table percentage points)."""
    return None if delta is None else delta / (100.0 if percent else 1.0)


@app.command("compare")
@handle_errors
def compare_command(
    files: FilesArg,
    names: NamesOpt = None,
    out: OutOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Compare audit reports of the same data side by side, with each change from the first and whether it is beyond
    the confidence intervals.

    Exit codes: 0 compared, 2 a file is not a shiftaudit report, is newer than this version, or ran on other data.
    """
    check_outputs({"--json": json_out}, {"--out": (out, PICTURES)}, inputs=list(files))
    json_to_stdout(json_out)
    labels = run_names(files, names)
    runs, paths = [], []
    for label, path in zip(labels, files):
        for suffix, res in load_runs(path):
            runs.append((label if suffix is None else f"{label} ({suffix})", res))
            paths.append(path)
    if len(runs) < 2:
        raise UsageError(
            "compare needs at least two runs, e.g. shiftaudit compare baseline.json patched.json, or one `patch --eval "
            "--json` report."
        )
    notes = check_same_data(runs)
    first = runs[0][1]
    console.print(
        comparison_table(
            runs,
            title=f"Comparison on {first.data.get('description', 'the same data')}; {describe_shifts(first)}",
            width=console.width,
        )
    )
    for note in notes:
        console.print(f"note: {note}", style="dim", soft_wrap=True)
    written: list[Path | None] = []
    pictures: list[Path | None] = []
    with all_or_nothing() as outputs:
        if json_out is not None:
            write_json_atomic(json_out, comparison_json(runs, paths, notes))
            if str(json_out) != "-":
                written.append(json_out)
        if out is not None:
            # local: matplotlib
            from shiftaudit.report.figures import plot_accuracy_map, plot_adversarial_curve, plot_variation_distribution

            folder = make_folder(out)
            pictures = [
                plot_adversarial_curve(runs, folder / PICTURES[0]),
                plot_variation_distribution(runs, folder / PICTURES[1]),
                plot_accuracy_map(runs, folder / PICTURES[2]),
            ]
            remove_stale_pictures(folder, PICTURES, [p for p in pictures if p is not None])
    for output in written + pictures:
        if output is not None:
            console.print(f"wrote {output}")
    say_stale(outputs)
    if out is not None and not any(pictures):
        console.print("note: no run has the all-shift metrics (sampled mode or unlabelled data): no picture to draw", style="dim")
    raise typer.Exit(0)
