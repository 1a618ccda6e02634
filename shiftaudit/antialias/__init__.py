"""Anti-aliasing for any model: blur between the dense operation and the subsampling (the paper's §3.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shiftaudit.antialias import methods as methods  # registers the built-in patch methods (blurpool, aps)
from shiftaudit.antialias.calibrate import (
    SMALL_CALIBRATION,
    Recalibration,
    batchnorm_layers,
    downstream_batchnorms,
    recalibrate_batchnorm,
    top1_agreement,
    top1_predictions,
)
from shiftaudit.antialias.config import SPEC_VERSION, PatchConfig, PatchPlan, Treatment
from shiftaudit.antialias.costs import (
    LatencyStats,
    compare_latency,
    compare_latency_stats,
    conv_total_variation,
    filter_total_variation,
    latency_too_noisy,
    measure_latency,
)
from shiftaudit.antialias.distill import DistillResult, distill
from shiftaudit.antialias.modules import BlurThenConv2d, ConvThenBlur2d, PoolBlur2d, pool_output_size
from shiftaudit.antialias.report import PatchComparison, PatchLatency, PatchReport, compare_patch
from shiftaudit.antialias.rewrite import (
    PatchResult,
    PatchStep,
    apply_patch_spec,
    make_convs_circular,
    patch,
    patch_model,
    plan_patch,
)

if TYPE_CHECKING:
    from shiftaudit.antialias.search import Configuration, Frontier, PlanFile, SearchCost, search_cost, search_patch_plans

# The search runs audits (shiftaudit.engine), and the engine imports shiftaudit.antialias.aps, which runs this file
# first: importing the search here made `import shiftaudit.engine.plan` (and `shiftaudit.audit` used first) a circular
# import. Its names load on first use instead.
_SEARCH_NAMES = frozenset({"Configuration", "Frontier", "PlanFile", "SearchCost", "search_cost", "search_patch_plans"})


def __getattr__(name: str) -> Any:
    if name in _SEARCH_NAMES:
        from shiftaudit.antialias import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SMALL_CALIBRATION",
    "SPEC_VERSION",
    "DistillResult",
    "LatencyStats",
    "PatchConfig",
    "PatchPlan",
    "Treatment",
    "Configuration",
    "Frontier",
    "PlanFile",
    "SearchCost",
    "search_cost",
    "search_patch_plans",
    "top1_predictions",
    "Recalibration",
    "distill",
    "downstream_batchnorms",
    "compare_latency",
    "compare_latency_stats",
    "latency_too_noisy",
    "PatchResult",
    "PatchStep",
    "apply_patch_spec",
    "batchnorm_layers",
    "conv_total_variation",
    "filter_total_variation",
    "make_convs_circular",
    "measure_latency",
    "patch",
    "patch_model",
    "plan_patch",
    "recalibrate_batchnorm",
    "top1_agreement",
    "BlurThenConv2d",
    "ConvThenBlur2d",
    "PoolBlur2d",
    "pool_output_size",
    "PatchComparison",
    "PatchLatency",
    "PatchReport",
    "compare_patch",
]
