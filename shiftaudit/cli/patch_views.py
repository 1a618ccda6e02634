"""What ``shiftaudit patch`` shows and writes: the decision at every strided layer, each step as it ends, the
before/after and latency comparison, the outputs, how to reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shiftaudit.antialias import SMALL_CALIBRATION, PatchConfig, PatchPlan, PatchResult, patch_model
from shiftaudit.antialias.inspection import inspect_model
from shiftaudit.antialias.report import PatchComparison, PatchLatency, PatchReport
from shiftaudit.antialias.workflow import save_patched
from shiftaudit.cli.common import console, err_console
from shiftaudit.engine.runner import LABEL_MISMATCH
from shiftaudit.errors import one_line
from shiftaudit.files import all_or_nothing, write_json_atomic
from shiftaudit.loading.architectures import kind_of
from shiftaudit.report.outputs import write_side_by_side_dir
from shiftaudit.report.terminal import comparison_table, describe_shifts, inspection_table, sig, text

RUN_FOLDERS = ("before", "after", "baseline_recalibrated")  # patch --eval --out: one report folder per model


class PatchSteps:
    """The ``on_step`` of :func:`~shiftaudit.antialias.workflow.patch_and_evaluate`: each step shown as it ends
    (with ``quiet``, only the warnings)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, name: str, report: PatchReport) -> None:
        getattr(self, name)(report)

    def say(self, line: str) -> None:
        if not self.quiet:
            console.print(Text(line), soft_wrap=True)

    def warn(self, line: str, style: str = "") -> None:
        err_console.print(Text(line, style=style), soft_wrap=True)

    def patch(self, report: PatchReport) -> None:
        result = report.patch
        if not self.quiet:
            console.print(steps_table(result))
            for note in result.notes:
                console.print(text(f"note: {note}", style="dim"), soft_wrap=True)
        if not result.patched:
            why = "the plan patches no layer" if result.plan is not None else "the model has no strided layer the policy selects"
            console.print(f"nothing to patch: {why}.", style="yellow")

    def recalibrate(self, report: PatchReport) -> None:
        rec = report.recalibration
        assert rec is not None
        self.say(f"re-estimated {len(rec.layers)} BatchNorm layers (those after the first blur) on {rec.images} images")
        if 0 < rec.images < SMALL_CALIBRATION:
            self.warn(
                f"warning: BatchNorm statistics re-estimated on only {rec.images} images (fewer than {SMALL_CALIBRATION}) are "
                "noisy; give more --calibration-data, or use --distill DIR instead."
            )

    def distill(self, report: PatchReport) -> None:
        d = report.distillation
        assert d is not None
        how = "fine-tuned" if d.settings.get("ce_weight") else "distilled"
        stop = f"{d.stopped_by} budget" if d.stopped_by in ("steps", "epochs", "seconds") else d.stopped_by
        kept = f"; kept the weights of step {d.best_step}" if d.best_step != d.steps else ""
        self.say(
            f"{how} {d.steps} steps ({stop}) in {sig(d.seconds)} s on {d.train_images} images{kept}; "
            f"on {d.heldout_images} held-out images: top-1 agreement with the original "
            f"{100 * d.agreement_before:.1f} % -> {100 * d.agreement_after:.1f} % as given, "
            f"{100 * d.shifted_agreement_before:.1f} % -> {100 * d.shifted_agreement_after:.1f} % shifted; "
            f"consistency {100 * d.consistency_before:.1f} % -> {100 * d.consistency_after:.1f} % "
            f"(the original: {100 * d.teacher_consistency:.1f} %)"
        )
        for note in d.notes:
            self.warn(f"note: {note}", style="yellow")

    def agreement(self, report: PatchReport) -> None:
        if report.agreement is not None and report.agreement_too_low:
            self.warn(
                f"warning: the patched model agrees with the original on only {100 * report.agreement:.1f} % of the --data "
                f"images at zero shift (below --min-agreement {100 * report.min_agreement:g} %); --distill DIR fine-tunes "
                "it to agree, on unlabelled images."
            )

    def compare(self, report: PatchReport) -> None:
        comparison = report.comparison
        assert comparison is not None
        results = [(n, r) for n, _, r in runs(report)]
        if not self.quiet:  # only the verdict and errors (the JSON and --out hold the tables)
            console.print(comparison_table(title=comparison_title(comparison), results=results, width=console.width))
            console.print(latency_table(comparison.latency))
        for note, whose in audit_notes(results):
            if note.startswith(LABEL_MISMATCH):  # numbers that are likely wrong: said on stderr, even with --quiet
                err_console.print(text(f"warning{whose}: {note}", style="yellow"), soft_wrap=True)
            elif not self.quiet:
                console.print(text(f"note{whose}: {note}", style="dim"), soft_wrap=True)
        noisy = latency_warning(comparison.latency)
        if noisy:
            self.warn(noisy, style="yellow")


def runs(report: PatchReport) -> list[tuple[str, str, Any]]:
    """(column name, --out sub-folder, audit) of each model compared."""
    c, config = report.comparison, report.patch.config
    assert c is not None
    name = f"Patched ({config.filter})" if config.method == "blurpool" else f"Patched (APS, {config.filter})"
    if report.patch.plan is not None:
        name = "Patched (plan)"
    if report.distillation is not None:
        name = name[:-1] + ", distilled)"
    control = [] if c.baseline_recalibrated is None else [("Baseline recalibrated", RUN_FOLDERS[2], c.baseline_recalibrated)]
    return [("Baseline", RUN_FOLDERS[0], c.before), *control, (name, RUN_FOLDERS[1], c.after)]


def audit_notes(results: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Each note of the compared audits once, naming the audits that hold it (" [Baseline]") only when not all do:
    the data's notes, every audit's, are said once, as ``eval`` says them."""
    holders: dict[str, list[str]] = {}
    for name, result in results:
        for note in result.notes:
            if name not in holders.setdefault(note, []):
                holders[note].append(name)
    return [(note, "" if len(names) == len(results) else f" [{', '.join(names)}]") for note, names in holders.items()]


def comparison_title(comparison: PatchComparison) -> str:
    before = comparison.before
    return f"Before / after: {before.data.get('description', 'data')}; {describe_shifts(before)}"


def show_dry_run(model: Any, config: PatchConfig | PatchPlan, prep: Any) -> None:
    insp = inspect_model(model, prep.size, channels=prep.channels)
    plan = {s.name: s for s in patch_model(model, config).steps}  # a copy: shows the real placements
    console.print(inspection_table(insp, {"Patch": {n: s.action for n, s in plan.items()}}, width=console.width))
    n = sum(s.patched for s in plan.values())
    console.print(f"dry run: {n} of {len(plan)} strided layers would be patched; nothing was changed.")


def say_written(
    output: Path | None, fmt: str, arch: str | None, *, json_out: Path | None, out: Path | None, written: list[Path]
) -> None:
    if output is not None:
        console.print(rebuild_message(output, fmt, arch), soft_wrap=True)
    if json_out is not None and str(json_out) != "-":
        console.print(f"wrote {json_out}")
    if out is not None:
        console.print(text(f"wrote {len(written)} files to {out}: open {Path(out) / 'report.html'}"), soft_wrap=True)


def steps_table(result: PatchResult) -> Table:
    cfg = result.config
    what = f"{cfg.filter}, {cfg.pad} padding" if cfg.method == "blurpool" else f"APS, blur {cfg.filter}, {cfg.pad} padding"
    if result.plan is not None:
        what = escape("plan: " + one_line(result.plan.label))  # layer names are the model's: shown, never markup
    t = Table(title=f"Patch ({what})", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Layer", "Kind", "Rule", "Decision"):
        t.add_column(col)
    for s in result.steps:
        t.add_row(
            *(text(c) for c in (s.name, s.kind, s.rule if s.patched else "-", s.action)), style=None if s.patched else "dim"
        )
    return t


def latency_table(latency: PatchLatency) -> Table:
    """Median and IQR (:class:`~shiftaudit.antialias.LatencyStats`) of baseline and patched, and the overhead."""
    shape, b, a = latency.input_shape, latency.baseline, latency.patched
    t = Table(
        title=f"Forward latency, batch {shape[0]} of {shape[2]}x{shape[3]} on {latency.device} (median and IQR over "
        f"{b.repeats} runs)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("Baseline", "Patched", "Overhead"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_row(
        f"{sig(b.median)} ms (IQR {sig(b.iqr)})", f"{sig(a.median)} ms (IQR {sig(a.iqr)})", f"{100 * latency.overhead:+.1f} %"
    )
    return t


def latency_warning(latency: PatchLatency) -> str | None:
    if not latency.too_noisy:
        return None
    b, a = latency.baseline, latency.patched
    return (
        f"warning: latency noise exceeds the difference (IQR {sig(b.iqr)} and {sig(a.iqr)} ms, medians "
        f"{sig(b.median)} and {sig(a.median)} ms): the overhead is not measurable on this machine now; rerun on a quiet machine."
    )


def rebuild_message(output: Path, fmt: str, arch: str | None) -> str:
    """What it takes to load the saved model again: true for every kind of architecture."""
    if fmt == "torchscript":
        return (
            f"wrote {output} (torchscript, deprecated by torch: prefer .pt2); `shiftaudit eval {output} --data ...` runs "
            "it with no other flags (a black box: no inspection)"
        )
    if fmt == "pt2":
        return (
            f"wrote {output} (pt2); `shiftaudit eval {output} --data ...` runs it with no other flags, and "
            f"`torch.export.load('{output}').module()` anywhere torch runs"
        )
    if arch and kind_of(arch) == "factory":
        module = arch.partition(":")[0]
        if module != "shiftaudit" and not module.startswith("shiftaudit."):
            top = module.split(".")[0]
            where = (
                f"the package {top} is installed here: install it wherever you evaluate the file"
                if _installed(top)
                else f"the module {module} must be importable: run from its folder or set PYTHONPATH"
            )
            return (
                f"wrote {output} (safetensors); rebuild it with `shiftaudit eval {output} --arch {arch} --data ...` "
                f"({where}; its arguments, the patch and the preprocessing are stored in the file)"
            )
    if arch and kind_of(arch) == "timm":
        return (
            f"wrote {output} (safetensors); `shiftaudit eval {output} --data ...` rebuilds it with no other flags (timm "
            "must be installed)"
        )
    return f"wrote {output} ({fmt}); `shiftaudit eval {output} --data ...` rebuilds it with no other flags"


def _installed(package: str) -> bool:
    """Whether ``package`` is imported from an installed location (site-packages), not the current folder or PYTHONPATH."""
    import importlib.util
    import sysconfig

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    origin = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
    if not origin:
        return False
    roots = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return any(Path(origin).resolve().is_relative_to(root) for root in roots)


def write_outputs(
    report: PatchReport,
    loaded: Any,
    prep: Any,
    *,
    output: Path | None,
    fmt: str,
    json_out: Path | None,
    out: Path | None,
    dataset: Any,
) -> list[Path]:
    """The report folder, the patched model and the JSON, together, once every step succeeded; returns the folder's files."""
    written: list[Path] = []
    with all_or_nothing():
        if out is not None and report.comparison is not None:
            written = write_side_by_side_dir(
                runs(report),
                out,
                title=f"shiftaudit patch: {Path(report.model).name}, before / after",
                intro=comparison_title(report.comparison),
                dataset=dataset,
            )
        if output is not None:
            report = save_patched(report, loaded, output, format=fmt, preprocessing=prep)
        if json_out is not None:
            write_json_atomic(json_out, report.to_json())
    return written
