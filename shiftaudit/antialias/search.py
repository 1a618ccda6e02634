"""Which downsampling points to anti-alias, and how: a label-free search of per-point patch plans (``patch --search``).

Each configuration (a :class:`~shiftaudit.antialias.config.PatchPlan`, with or without BatchNorm re-estimation) is
measured on held-out unlabelled images by two numbers: its zero-shift top-1 **agreement** with the original (the
accuracy proxy that needs no labels; the drop ``1 - agreement`` is what the budget bounds) and its **consistency**
(the audit engine's, under the same :class:`~shiftaudit.engine.config.AuditConfig` the patch job audits with). The
search returns every configuration it measured and the one of largest consistency whose agreement drop stays within
``max_agreement_drop``: all combinations when they are few (``exhaustive``), else greedily, one point at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from shiftaudit.antialias.calibrate import agreement_of, recalibrate_batchnorm, top1_predictions
from shiftaudit.antialias.config import PatchConfig, PatchPlan, Treatment
from shiftaudit.antialias.rewrite import patch_model, plan_patch
from shiftaudit.engine.config import AuditConfig, resolve_device
from shiftaudit.engine.observers import Progress
from shiftaudit.engine.plan import plan_audit, resolve_data
from shiftaudit.engine.runner import run_plan
from shiftaudit.errors import UsageError

if TYPE_CHECKING:  # shiftaudit.loading imports antialias back: loaded when a search runs
    from shiftaudit.loading import LoadedModel

SEARCH_SCHEMA = "shiftaudit/patch-search"
SEARCH_VERSION = 1
DEFAULT_FILTERS = ("tri3", "binomial5")
EXHAUSTIVE_LIMIT = 64
"""``strategy="auto"`` measures every combination when there are at most this many configurations, else searches
greedily."""
STRATEGIES = ("auto", "exhaustive", "greedy")
BUDGET_SLACK = 1e-9  # agreement is k/n: 1 - 99/100 is 0.010000000000000009 in floating point, within a 0.01 budget
AUDIT_SETTINGS = ("shifts", "mode", "pairs", "seed", "precision")
"""The keys of an audit report's ``settings`` that the search JSON's ``settings`` copies: what its consistencies depend on."""
PLAN_FILE_KEYS = ("recalibrated", "calibration_images")


@dataclass(frozen=True)
class Configuration:
    """One measured configuration: the plan, whether BatchNorm statistics were re-estimated, and its numbers."""

    plan: PatchPlan
    recalibrated: bool
    agreement: float
    consistency: float

    @property
    def agreement_drop(self) -> float:
        return 1.0 - self.agreement

    @property
    def label(self) -> str:
        return self.plan.label + (" + BN re-estimated" if self.recalibrated else "")

    def within(self, max_agreement_drop: float) -> bool:
        return self.agreement_drop <= max_agreement_drop + BUDGET_SLACK

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json()["points"],
            "recalibrated": self.recalibrated,
            "agreement": self.agreement,
            "agreement_drop": self.agreement_drop,
            "consistency": self.consistency,
        }


@dataclass(frozen=True)
class Frontier:
    """Every configuration the search measured (the unpatched model first) and the index of the chosen one."""

    points: tuple[str, ...]
    candidates: tuple[Treatment, ...]
    configurations: tuple[Configuration, ...]
    chosen: int
    max_agreement_drop: float
    strategy: str
    images: int
    consistency_kind: str  # "exact" (every shift) or "sampled"
    recalibrate: int  # calibration images of the re-estimated configurations (0: none measured)
    settings: dict[str, Any] = field(hash=False)  # the audits' shift set and draws, the data's preprocessing (a dict: unhashed)
    seconds: float = 0.0

    @property
    def baseline(self) -> Configuration:
        return self.configurations[0]

    @property
    def best(self) -> Configuration:
        return self.configurations[self.chosen]

    def pareto(self) -> list[bool]:
        """Whether each configuration is on the trade-off frontier: no other has both more agreement and more
        consistency (one strictly)."""
        cs = self.configurations
        return [
            not any(
                o.agreement >= c.agreement
                and o.consistency >= c.consistency
                and (o.agreement, o.consistency) != (c.agreement, c.consistency)
                for o in cs
            )
            for c in cs
        ]

    def to_json(self) -> dict[str, Any]:
        front = self.pareto()
        return {
            "schema": SEARCH_SCHEMA,
            "schema_version": SEARCH_VERSION,
            "points": list(self.points),
            "candidates": [t.to_json() for t in self.candidates],
            "max_agreement_drop": self.max_agreement_drop,
            "strategy": self.strategy,
            "images": self.images,
            "consistency": self.consistency_kind,
            "recalibrate": self.recalibrate,
            "settings": self.settings,
            "seconds": self.seconds,
            "configurations": [{**c.to_json(), "pareto": p} for c, p in zip(self.configurations, front)],
            "chosen": self.chosen,
            "plan": self.best.plan.to_json(),
        }

    def plan_file(self) -> PlanFile:
        """The chosen plan as ``--plan-out`` writes it: with the re-estimation its numbers assumed, which the plan
        alone does not say."""
        return PlanFile(self.best.plan, self.recalibrate if self.best.recalibrated else 0)


@dataclass(frozen=True)
class PlanFile:
    """A plan file (``patch --search --plan-out``, read by ``patch --plan``): the plan and the calibration images its
    BatchNorm statistics were re-estimated on when it was measured (0: none), so that applying it without the
    re-estimation can be warned about. A file written before the search recorded this reads as 0."""

    plan: PatchPlan
    calibration_images: int = 0

    @property
    def recalibrated(self) -> bool:
        return self.calibration_images > 0

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "recalibrated": self.recalibrated, "calibration_images": self.calibration_images}

    @classmethod
    def from_json(cls, d: Any) -> PlanFile:
        """As strict as :meth:`PatchPlan.from_json`; the two keys come together, and agree, or are both absent."""
        if not isinstance(d, dict):
            return cls(PatchPlan.from_json(d))  # refused there, in its words
        plan = PatchPlan.from_json({k: v for k, v in d.items() if k not in PLAN_FILE_KEYS})
        if not any(k in d for k in PLAN_FILE_KEYS):
            return cls(plan)
        recalibrated, images = d.get("recalibrated"), d.get("calibration_images")
        if (
            not isinstance(recalibrated, bool)
            or not isinstance(images, int)
            or isinstance(images, bool)
            or images < 0
            or recalibrated != (images > 0)
        ):
            raise UsageError(
                "The patch plan's `recalibrated` (true or false) and `calibration_images` (how many images its BatchNorm "
                "statistics were re-estimated on, 0 when not) must be given together and agree."
            )
        return cls(plan, images)


@dataclass(frozen=True)
class SearchCost:
    """What a search will cost before it runs (``patch --search --dry-run``): the configurations it measures (at most,
    for the greedy search) and the forward passes: each configuration's audit (images x shifts) and zero-shift
    agreement pass, each re-estimated configuration's calibration pass."""

    points: int
    candidates: int
    strategy: str
    configurations: int
    recalibrated_configurations: int
    audit_forwards: int  # per configuration
    agreement_forwards: int  # per configuration
    recalibration_forwards: int  # per re-estimated configuration

    @property
    def total_forwards(self) -> int:
        each = self.audit_forwards + self.agreement_forwards
        return (
            self.configurations * each + self.recalibrated_configurations * self.recalibration_forwards + self.agreement_forwards
        )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_forwards": self.total_forwards}


def search_cost(
    model: LoadedModel | nn.Module,
    data: Any,
    *,
    settings: AuditConfig | None = None,
    filters: Sequence[str] = DEFAULT_FILTERS,
    aps: bool = True,
    calibration: Any = None,
    recalibrate: int = 0,
    stem: bool = False,
    strategy: str = "auto",
) -> SearchCost:
    """The cost of :func:`search_patch_plans` with the same arguments, planned (one audit plan), not run. The total
    counts the original's own zero-shift pass once."""
    loaded, data, points, candidates, variants = _prepare(
        model, data, settings, filters, aps, 0.0, calibration, recalibrate, stem
    )
    settings = settings or AuditConfig()
    chosen = _strategy(strategy, len(points), len(candidates), len(variants))
    count = (_exhaustive_count if chosen == "exhaustive" else _greedy_count)(len(points), len(candidates), len(variants))
    audit = plan_audit(settings, loaded, data).plan
    loaded.model.eval().cpu()
    return SearchCost(
        points=len(points),
        candidates=len(candidates),
        strategy=chosen,
        configurations=count,
        recalibrated_configurations=(count - 1) // 2 if len(variants) > 1 else 0,
        audit_forwards=audit.forward_rows,
        agreement_forwards=len(data),
        recalibration_forwards=min(recalibrate, len(calibration)) if len(variants) > 1 else 0,
    )


def search_points(model: nn.Module, stem: bool = False) -> list[str]:
    """The strided layers a search considers: those ``patch`` would patch by default (the stem with ``stem``)."""
    return [s.name for s in plan_patch(model, PatchConfig(stem=stem)) if s.patched]


def search_candidates(filters: Sequence[str] = DEFAULT_FILTERS, aps: bool = True) -> list[Treatment]:
    """Blur with each filter, then APS (no blur), as treatments."""
    found = [Treatment("blurpool", f) for f in filters] + ([Treatment("aps")] if aps else [])
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UsageError("The search needs at least one treatment: give a blur filter or keep APS.")
    return unique


def _strategy(strategy: str, points: int, candidates: int, variants: int) -> str:
    if strategy not in STRATEGIES:
        raise UsageError(f"Unknown search strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if strategy != "auto":
        return strategy
    return "exhaustive" if _exhaustive_count(points, candidates, variants) <= EXHAUSTIVE_LIMIT else "greedy"


def _exhaustive_count(points: int, candidates: int, variants: int) -> int:
    return 1 + ((candidates + 1) ** points - 1) * variants


def _greedy_count(points: int, candidates: int, variants: int) -> int:
    return 1 + variants * candidates * points * (points + 1) // 2


def _best(configs: Sequence[Configuration], max_drop: float) -> Configuration | None:
    """Largest consistency within the budget; ties: more agreement, fewer points, no re-estimation, measured first."""
    ok = [(i, c) for i, c in enumerate(configs) if c.within(max_drop)]
    if not ok:
        return None
    return max(ok, key=lambda ic: (ic[1].consistency, ic[1].agreement, -len(ic[1].plan.points), not ic[1].recalibrated, -ic[0]))[
        1
    ]


class _Measure:
    """Measures configurations of one model on one data set: the original's zero-shift predictions are kept."""

    def __init__(self, loaded: LoadedModel, data: Any, settings: AuditConfig, calibration: Any, recalibrate: int) -> None:
        self.loaded, self.data, self.settings = loaded, data, settings
        self.calibration, self.recalibrate = calibration, recalibrate
        self.device = resolve_device(settings.device)
        self.reference = top1_predictions(loaded.model, data, device=self.device)
        loaded.model.eval().cpu()
        self.kind = ""
        self.audit_settings: dict[str, Any] = {}

    def __call__(self, plan: PatchPlan, recalibrated: bool) -> Configuration:
        model, spec = self.loaded.model, self.loaded.patch_spec
        if plan.points:
            result = patch_model(self.loaded.model, plan)
            model, spec = result.model, result.spec
        if recalibrated:
            recalibrate_batchnorm(
                model, self.calibration, num_images=self.recalibrate, seed=self.settings.seed, device=self.device
            )
        agreement = agreement_of(self.reference, top1_predictions(model, self.data, device=self.device))
        model.eval().cpu()
        audit = run_plan(plan_audit(self.settings, dataclasses.replace(self.loaded, model=model, patch_spec=spec), self.data))
        model.eval().cpu()
        consistency = audit.consistency
        if consistency is None:
            raise UsageError("The search compares shifted copies of each image: give a --max-shift above 0.")
        self.kind = "exact" if audit.consistency_exact is not None else "sampled"
        self.audit_settings = {
            **{k: audit.settings[k] for k in AUDIT_SETTINGS},
            "preprocessing": audit.data.get("preprocessing"),
        }  # as the audit report records them: every configuration's audit has the same
        return Configuration(plan, recalibrated, agreement, float(consistency))


def search_patch_plans(
    model: LoadedModel | nn.Module,
    data: Any,
    *,
    settings: AuditConfig | None = None,
    filters: Sequence[str] = DEFAULT_FILTERS,
    aps: bool = True,
    max_agreement_drop: float = 0.01,
    calibration: Any = None,
    recalibrate: int = 0,
    stem: bool = False,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> Frontier:
    """Measure per-point patch plans of ``model`` (left untouched) on the images of ``data`` (labels unused) and
    choose the one of largest consistency whose zero-shift top-1 agreement with the original drops by at most
    ``max_agreement_drop``. Candidates per point: no change, blur with each of ``filters``, APS (with ``aps``); with
    ``calibration`` and ``recalibrate`` images, each plan is measured with and without BatchNorm re-estimation too.
    Deterministic given ``settings.seed``."""
    loaded, data, points, candidates, variants = _prepare(
        model, data, settings, filters, aps, max_agreement_drop, calibration, recalibrate, stem
    )
    settings = settings or AuditConfig()
    chosen_strategy = _strategy(strategy, len(points), len(candidates), len(variants))
    measure = _Measure(loaded, data, settings, calibration, recalibrate)
    total = (_exhaustive_count if chosen_strategy == "exhaustive" else _greedy_count)(len(points), len(candidates), len(variants))
    started = time.perf_counter()
    if progress is not None:
        progress.start(total, "searching patch plans")
    try:
        measured = [measure(PatchPlan(), False)]
        if progress is not None:
            progress.advance(1)
        walk = _exhaustive if chosen_strategy == "exhaustive" else _greedy
        measured += walk(
            points, candidates, variants, lambda p, r: _step(measure, progress, p, r), max_agreement_drop, measured[0]
        )
        if progress is not None and hasattr(progress, "set_total"):  # a greedy walk ends below its upper bound
            progress.set_total(len(measured))
    finally:
        if progress is not None:
            progress.stop()
    best = _best(measured, max_agreement_drop)
    assert best is not None  # the unpatched model agrees with itself
    return Frontier(
        points=tuple(points),
        candidates=tuple(candidates),
        configurations=tuple(measured),
        chosen=measured.index(best),
        max_agreement_drop=max_agreement_drop,
        strategy=chosen_strategy,
        images=len(data),
        consistency_kind=measure.kind,
        recalibrate=min(recalibrate, len(calibration)) if len(variants) > 1 else 0,  # the images re-estimation used
        settings=measure.audit_settings,
        seconds=time.perf_counter() - started,
    )


def _prepare(
    model: LoadedModel | nn.Module,
    data: Any,
    settings: AuditConfig | None,
    filters: Sequence[str],
    aps: bool,
    max_agreement_drop: float,
    calibration: Any,
    recalibrate: int,
    stem: bool,
) -> tuple[LoadedModel, Any, list[str], list[Treatment], tuple[bool, ...]]:
    """Check the request before any work: the loaded model, the data as the audits read it, the points, the
    treatments and the re-estimation variants."""
    from shiftaudit.antialias.workflow import check_patchable  # local: workflow imports loading, which imports antialias
    from shiftaudit.loading import load_model  # local: loading imports antialias back (load, onnx_inspect)

    if not 0.0 <= max_agreement_drop <= 1.0:
        raise UsageError(f"The agreement budget is a share in [0, 1], e.g. 0.01; got {max_agreement_drop:g}.")
    loaded = load_model(model) if isinstance(model, nn.Module) else model
    check_patchable(loaded)
    settings = settings or AuditConfig()
    settings.check()
    data = resolve_data(data, loaded.preprocessing, settings)
    if len(data) == 0:
        raise UsageError("The search needs images to measure on; the data has none.")
    points = search_points(loaded.model, stem)
    if not points:
        raise UsageError("The model has no strided layer to patch: there is nothing to search.")
    candidates = search_candidates(filters, aps)
    variants = (False, True) if calibration is not None and recalibrate > 0 else (False,)
    return loaded, data, points, candidates, variants


def _step(measure: _Measure, progress: Progress | None, plan: PatchPlan, recalibrated: bool) -> Configuration:
    config = measure(plan, recalibrated)
    if progress is not None:
        progress.advance(1)
    return config


Measure = Callable[[PatchPlan, bool], Configuration]


def _plans(base: PatchPlan, points: Sequence[str], candidates: Sequence[Treatment]) -> Iterator[PatchPlan]:
    for name in points:
        if name not in base.treatments():
            for t in candidates:
                yield base.with_point(name, t)


def _exhaustive(
    points: Sequence[str],
    candidates: Sequence[Treatment],
    variants: Sequence[bool],
    measure: Measure,
    _budget: float,
    _base: Configuration,
) -> list[Configuration]:
    """Every combination of a treatment or none per point (the unpatched one is measured already)."""
    out = []
    for choice in itertools.product([None, *candidates], repeat=len(points)):
        plan = PatchPlan.of({n: t for n, t in zip(points, choice) if t is not None})
        if plan.points:
            out += [measure(plan, r) for r in variants]
    return out


def _greedy(
    points: Sequence[str],
    candidates: Sequence[Treatment],
    variants: Sequence[bool],
    measure: Measure,
    budget: float,
    base: Configuration,
) -> list[Configuration]:
    """From the unpatched model, add the one point treatment that gains the most consistency within the budget, while
    one does."""
    out: list[Configuration] = []
    current = base
    while True:
        round_ = [measure(plan, r) for plan in _plans(current.plan, points, candidates) for r in variants]
        out += round_
        top = _best(round_, budget)
        if top is None or top.consistency <= current.consistency:
            return out
        current = top
