"""``shiftaudit patch --search`` and ``--plan``: the flags' checks, the search's cost (``--dry-run``), its frontier as a
table, and what it writes (the plan, the frontier's JSON and picture, the patched model of the chosen plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from shiftaudit.antialias.search import DEFAULT_FILTERS, Frontier, PlanFile, search_cost, search_patch_plans
from shiftaudit.antialias.workflow import patch_and_evaluate, save_patched
from shiftaudit.cli.common import console, err_console
from shiftaudit.cli.patch_views import rebuild_message
from shiftaudit.cli.progress import RichProgress
from shiftaudit.engine.config import AuditConfig
from shiftaudit.errors import UsageError
from shiftaudit.files import Refused, all_or_nothing, read_regular, write_json_atomic
from shiftaudit.jsonfile import JsonInputError, load_json
from shiftaudit.report.figures import plot_frontier
from shiftaudit.report.terminal import text

SEARCH_FILES = ("frontier.png", "frontier.json")  # what --search --out writes
MAX_PLAN_BYTES = 1 << 20
DEFAULT_BUDGET = 0.01


@dataclass(frozen=True)
class SearchFlags:
    """The search's own flags, as the command line gave them (``None``: not given)."""

    search: bool = False
    max_agreement_drop: float | None = None
    filters: tuple[str, ...] = ()
    plan_out: Path | None = None
    plan_in: Path | None = None
    stem: bool = False  # --stem: the search considers the stem too

    def check(self, *, data: Path | None, evaluate: bool, distill: bool, one_config: bool) -> None:
        """Flags that need, or exclude, one another: refused before the model is loaded. ``one_config``: a flag
        that shapes the one-config patch (--method, --filter, --pad, --only, --skip, --circular-conv, --no-shortcuts)
        was given."""
        one_method = "--method, --filter, --pad, --only, --skip, --circular-conv and --no-shortcuts"
        if not self.search:
            named = (("--max-agreement-drop", self.max_agreement_drop), ("--plan-out", self.plan_out))
            given = [f for f, v in named if v is not None]
            if self.filters:
                given.append("--search-filter")
            if given:
                raise UsageError(f"{given[0]} belongs to --search: add --search (and --data), or drop {given[0]}.")
        elif data is None:
            raise UsageError("--search needs --data (held-out images to measure each plan on; labels unused).")
        elif evaluate or distill or self.plan_in is not None:
            raise UsageError(
                "--search measures plans and stops: drop --eval, --distill and --plan, then apply the chosen plan with "
                "`shiftaudit patch MODEL --plan PLAN.json` and those flags."
            )
        if self.search and one_config:
            raise UsageError(
                f"--search chooses each layer's treatment (--search-filter sets the blurs it tries): drop {one_method}."
            )
        if self.plan_in is not None and (one_config or self.stem):
            raise UsageError(f"--plan gives every layer its own treatment: drop --stem, {one_method}.")


def read_plan(path: Path) -> PlanFile:
    """The plan ``patch --search --plan-out`` wrote (strict: anything else is refused in one sentence)."""
    try:
        raw = load_json(read_regular(path, MAX_PLAN_BYTES))
    except Refused as exc:
        raise UsageError(f"Plan {path} {exc}.") from None
    except JsonInputError as exc:
        raise UsageError(
            f"{path} is not a patch plan ({exc}); write one with `shiftaudit patch MODEL --search --plan-out FILE`."
        ) from None
    return PlanFile.from_json(raw)


def warn_unrecalibrated(path: Path, plan: PlanFile, calibration_data: Path | None) -> None:
    """A plan measured with BatchNorm re-estimation, applied without it: its figures are not what the patch gives."""
    if plan.recalibrated and calibration_data is None:
        n = plan.calibration_images
        line = (
            f"warning: the figures of {path} assume BatchNorm statistics re-estimated on {n} images, as the search measured "
            f"it; add --recalibrate {n} --calibration-data DIR (the search's calibration images) to patch as measured"
        )
        err_console.print(text(line, style="yellow"), soft_wrap=True)


def run_search(
    loaded: Any,
    prep: Any,
    flags: SearchFlags,
    *,
    data: Any,
    calibration: Any,
    recalibrate: int,
    settings: AuditConfig,
    dry_run: bool,
    outputs: dict[str, Any],
    quiet: bool,
) -> None:
    """Search (or with ``dry_run`` say what it would cost), show the frontier, write ``outputs`` (``output``, ``fmt``,
    ``json_out``, ``out``) all or nothing."""
    filters = flags.filters or DEFAULT_FILTERS
    how: dict[str, Any] = dict(
        settings=settings, filters=filters, calibration=calibration, recalibrate=recalibrate, stem=flags.stem
    )
    if dry_run:
        return show_cost(search_cost(loaded, data, **how))
    budget = DEFAULT_BUDGET if flags.max_agreement_drop is None else flags.max_agreement_drop
    progress = RichProgress(enabled=not quiet)
    progress.unit = "configurations"
    frontier = search_patch_plans(loaded, data, max_agreement_drop=budget, progress=progress, **how)
    if not quiet:
        console.print(frontier_table(frontier), soft_wrap=True)
        console.print(text(f"chosen: {frontier.best.label}"), soft_wrap=True)
        if frontier.best.recalibrated:
            line = f"the chosen plan was measured with BatchNorm re-estimated on {recalibrate} images: `patch --plan` it with "
            console.print(text(line + "the same --recalibrate and --calibration-data"), soft_wrap=True)
    with all_or_nothing():
        if flags.plan_out is not None:
            write_json_atomic(flags.plan_out, frontier.plan_file().to_json())
        if outputs["json_out"] is not None:
            write_json_atomic(outputs["json_out"], frontier.to_json())
        if outputs["out"] is not None:
            out = Path(outputs["out"])
            write_json_atomic(out / SEARCH_FILES[1], frontier.to_json())
            plot_frontier(frontier.to_json(), out / SEARCH_FILES[0])
        if outputs["output"] is not None:
            _save_chosen(frontier, loaded, prep, calibration, recalibrate, settings, outputs)
    if not quiet:
        _say_written(flags, outputs, frontier)


def _save_chosen(
    frontier: Frontier, loaded: Any, prep: Any, calibration: Any, recalibrate: int, settings: AuditConfig, outputs: dict[str, Any]
) -> None:
    """The chosen plan's patched model, its BatchNorm statistics re-estimated as they were measured; the plan goes
    into the file's patch spec."""
    best = frontier.best
    report = patch_and_evaluate(
        loaded,
        best.plan,
        evaluate=False,
        settings=settings,
        calibration=calibration if best.recalibrated else None,
        recalibrate=recalibrate,
        control=False,
    )
    save_patched(report, loaded, outputs["output"], format=outputs["fmt"], preprocessing=prep)


def _say_written(flags: SearchFlags, outputs: dict[str, Any], frontier: Frontier) -> None:
    console.print(
        text(f"searched {len(frontier.configurations)} configurations on {frontier.images} images in {frontier.seconds:.1f} s"),
        soft_wrap=True,
    )
    if flags.plan_out is not None:
        line = f"wrote {flags.plan_out}: `shiftaudit patch MODEL --plan {flags.plan_out}` applies it"
        console.print(text(line), soft_wrap=True)
    if outputs["json_out"] is not None and str(outputs["json_out"]) != "-":
        console.print(text(f"wrote {outputs['json_out']}"), soft_wrap=True)
    if outputs["out"] is not None:
        console.print(text(f"wrote {', '.join(SEARCH_FILES)} to {outputs['out']}"), soft_wrap=True)
    if outputs["output"] is not None:
        console.print(text(rebuild_message(Path(outputs["output"]), outputs["fmt"], None)), soft_wrap=True)


def show_cost(cost: Any) -> None:
    console.print(
        text(
            f"dry run: {cost.points} strided layers x {cost.candidates} treatments ({cost.strategy} search): at most "
            f"{cost.configurations} configurations, {cost.total_forwards} forward passes ({cost.audit_forwards} per audit, "
            f"{cost.agreement_forwards} per agreement pass, {cost.recalibration_forwards} per BatchNorm re-estimation); "
            "nothing was run."
        ),
        soft_wrap=True,
    )


def frontier_table(frontier: Frontier) -> Table:
    """The unpatched model, every configuration on the frontier and the chosen one (the JSON lists all)."""
    front = frontier.pareto()
    shown = [i for i, on in enumerate(front) if on or i in (0, frontier.chosen)]
    base = frontier.baseline.consistency
    t = Table(
        title=f"Patch plans on {frontier.images} images: agreement budget {frontier.max_agreement_drop:g} ({frontier.strategy} "
        f"search, {sum(front)} of {len(front)} configurations on the frontier)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("#", "Plan", "BN", "Agreement", "Drop", "Consistency", "Gain", ""):
        t.add_column(col, justify="left" if col in ("Plan", "BN", "") else "right")
    for i in shown:
        c = frontier.configurations[i]
        mark = "chosen" if i == frontier.chosen else ("frontier" if front[i] else "")
        t.add_row(
            str(i),
            text(c.plan.label),
            "re-estimated" if c.recalibrated else "-",
            f"{c.agreement:.4f}",
            f"{c.agreement_drop:.4f}",
            f"{c.consistency:.4f}",
            f"{c.consistency - base:+.4f}",
            mark,
            style="bold" if i == frontier.chosen else None,
        )
    return t
