"""The per-point patch plan and the label-free search (``patch --search``): every number the search reports equals a
naive computation (the configuration patched by hand, plain torch top-1 predictions over ``torch.roll`` shifts), and
the chosen plan is the best one within the budget (brute force over every combination)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from shiftaudit.antialias import PatchConfig, PatchPlan, Treatment, patch_model, recalibrate_batchnorm
from shiftaudit.antialias.rewrite import apply_patch_spec
from shiftaudit.antialias.search import Configuration, PlanFile, search_cost, search_patch_plans, search_points
from shiftaudit.data.presets import Preprocessing
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.runner import audit
from shiftaudit.errors import UsageError
from shiftaudit.loading import load_model

MAX_SHIFT = 2
SETTINGS = AuditConfig(max_shift=MAX_SHIFT, device="cpu", seed=3)
BUDGET = 0.5
TOLERANCE = 1e-12  # two consistencies of 12 images x 25 shifts that differ, differ by 1 / (12 x 625) at least
TREATMENTS = (Treatment("blurpool", "tri3"), Treatment("aps"))


def tiny_cnn() -> nn.Module:
    """Three downsampling points: a max-pool ("3"), a strided conv ("4", blur after its BN/ReLU), a max-pool ("7")."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.BatchNorm1d(32),
        nn.Linear(32, 5),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model[-1].weight.mul_(8.0)
    return model.eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


DATA = images(12, 1)
CALIBRATION = [(x, -1) for x in images(20, 2)]


def naive_patch(model: nn.Module, plan: PatchPlan) -> nn.Module:
    """The configuration patched by hand: one single-method patch per treatment, each on the model the last left."""
    groups: dict[Treatment, list[str]] = {}
    for name, t in plan.points:
        groups.setdefault(t, []).append(name)
    for t, names in groups.items():
        cfg = PatchConfig(method=t.method, filter=t.filter, pad=str(t.pad), stem=True, only=tuple(names))
        model = patch_model(model, cfg).model
    return model.eval()


@torch.no_grad()
def naive_numbers(plan: PatchPlan, recalibrated: bool) -> tuple[float, float]:
    """Zero-shift top-1 agreement with the original and exact consistency (docs/metrics.md: the mean over images of
    sum_c p_c^2 over the circular shifts of the window [-2, 2]^2)."""
    original = tiny_cnn()
    model = naive_patch(tiny_cnn(), plan)
    if recalibrated:
        recalibrate_batchnorm(model, CALIBRATION, num_images=len(CALIBRATION), seed=SETTINGS.seed)
    model.eval()
    agreement = (original(DATA).argmax(1) == model(DATA).argmax(1)).double().mean().item()
    shifts = list(itertools.product(range(-MAX_SHIFT, MAX_SHIFT + 1), repeat=2))
    per_image = []
    for x in DATA:
        preds = model(torch.stack([torch.roll(x, s, (-2, -1)) for s in shifts])).argmax(1)
        share = torch.bincount(preds).double() / len(shifts)
        per_image.append(float((share * share).sum()))
    return agreement, sum(per_image) / len(per_image)


def all_plans(points: tuple[str, ...]) -> list[PatchPlan]:
    return [
        PatchPlan.of({n: t for n, t in zip(points, choice) if t is not None})
        for choice in itertools.product([None, *TREATMENTS], repeat=len(points))
    ]


@pytest.fixture(scope="module")
def frontier():
    return search_patch_plans(
        tiny_cnn(),
        DATA,
        settings=SETTINGS,
        filters=("tri3",),
        max_agreement_drop=BUDGET,
        calibration=CALIBRATION,
        recalibrate=10 * len(CALIBRATION),  # more than there are: the record says the 20 used
    )


def test_every_point_equals_a_naive_audit(frontier) -> None:
    assert frontier.points == ("3", "4", "7")
    assert frontier.strategy == "exhaustive" and frontier.consistency_kind == "exact"
    assert len(frontier.configurations) == 1 + 26 * 2  # the unpatched model, then every plan with and without BN
    for c in frontier.configurations:
        agreement, consistency = naive_numbers(c.plan, c.recalibrated)
        assert c.agreement == agreement, c.label  # k / 12 both ways
        assert c.consistency == pytest.approx(consistency, abs=TOLERANCE, rel=0), c.label  # the mean's summation order
    numbers = {(c.agreement, c.consistency) for c in frontier.configurations}
    assert len(numbers) > 5, "the tiny model must tell configurations apart for the test to mean anything"


def test_chosen_is_the_brute_force_best_within_budget(frontier) -> None:
    brute = [(p, r, *naive_numbers(p, r)) for p in all_plans(frontier.points) for r in (False, True) if p.points or not r]
    within = [b for b in brute if 1.0 - b[2] <= BUDGET + 1e-9]
    best = max(b[3] for b in within)
    chosen = frontier.best
    assert chosen.consistency == pytest.approx(best, abs=TOLERANCE, rel=0) and 1.0 - chosen.agreement <= BUDGET + 1e-9
    assert chosen.consistency > frontier.baseline.consistency
    assert frontier.to_json()["plan"] == chosen.plan.to_json()


def test_a_budget_equal_to_a_drop_admits_it(frontier) -> None:
    """The budget is inclusive: at exactly the drop of the most consistent configuration, that one is chosen."""
    top = max(frontier.configurations, key=lambda c: (c.consistency, c.agreement))
    assert top.agreement_drop > 0, "the tiny model's most consistent plan must cost agreement for this test to bite"
    again = search_patch_plans(
        tiny_cnn(),
        DATA,
        settings=SETTINGS,
        filters=("tri3",),
        max_agreement_drop=top.agreement_drop,
        calibration=CALIBRATION,
        recalibrate=len(CALIBRATION),
    )
    assert again.best.consistency == top.consistency
    tighter = search_patch_plans(tiny_cnn(), DATA, settings=SETTINGS, filters=("tri3",), max_agreement_drop=0.0)
    assert tighter.best.agreement == 1.0


def test_greedy_search_is_deterministic_and_consistent(frontier) -> None:
    runs = [
        search_patch_plans(tiny_cnn(), DATA, settings=SETTINGS, filters=("tri3",), max_agreement_drop=BUDGET, strategy="greedy")
        for _ in range(2)
    ]
    a, b = ({**r.to_json(), "seconds": 0} for r in runs)
    assert a == b
    greedy = runs[0]
    exhaustive = {(c.plan, c.recalibrated): c for c in frontier.configurations}
    for c in greedy.configurations:  # the same measurement, whichever walk asked for it
        assert exhaustive[(c.plan, c.recalibrated)] == c
    assert greedy.best.within(BUDGET) and greedy.best.consistency >= greedy.baseline.consistency
    assert len(greedy.configurations) <= 1 + 2 * 3 + 2 * 2 + 2 * 1
    assert greedy.best.consistency == max(c.consistency for c in greedy.configurations if c.within(BUDGET))


def test_cost_counts_the_forwards() -> None:
    cost = search_cost(tiny_cnn(), DATA, settings=SETTINGS, filters=("tri3",), calibration=CALIBRATION, recalibrate=20)
    assert (cost.points, cost.candidates, cost.strategy, cost.configurations) == (3, 2, "exhaustive", 53)
    assert (cost.audit_forwards, cost.agreement_forwards, cost.recalibration_forwards) == (12 * 25, 12, 20)
    assert cost.total_forwards == 53 * (300 + 12) + 26 * 20 + 12


def test_plan_builds_the_model_and_its_spec_rebuilds_it() -> None:
    plan = PatchPlan.of({"3": Treatment("aps"), "4": Treatment("blurpool", "binomial5")})
    result = patch_model(tiny_cnn(), plan)
    assert [s.name for s in result.patched] == ["3", "4"]
    assert result.spec["version"] == 2 and PatchPlan.from_json(result.spec["plan"]) == plan
    rebuilt = apply_patch_spec(tiny_cnn(), result.spec)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(DATA), result.model.eval()(DATA))
        assert torch.equal(result.model(DATA), naive_patch(tiny_cnn(), plan)(DATA))
    assert PatchConfig().to_json() == patch_model(tiny_cnn()).config.to_json()  # the one-config spec is unchanged
    assert patch_model(tiny_cnn()).spec["version"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"points": {}},
        {"version": 2, "points": {}},
        {"version": 1, "points": {}, "extra": 1},
        {"version": 1, "points": {"3": {"method": "nope"}}},
        {"version": 1, "points": {"3": {"method": "aps", "size": 3}}},
        {"version": 1, "points": {"3": {"filter": 3}}},
        {"version": 1, "points": []},
    ],
)
def test_plan_json_is_strict(bad) -> None:
    with pytest.raises(UsageError):
        PatchPlan.from_json(bad)


def test_plan_naming_no_layer_is_refused() -> None:
    with pytest.raises(UsageError, match="no strided layer"):
        patch_model(tiny_cnn(), PatchPlan.of({"0": Treatment()}))


def test_bad_requests_are_refused_before_work() -> None:
    with pytest.raises(UsageError, match="budget"):
        search_patch_plans(tiny_cnn(), DATA, settings=SETTINGS, max_agreement_drop=1.5)
    with pytest.raises(UsageError, match="strategy"):
        search_patch_plans(tiny_cnn(), DATA, settings=SETTINGS, strategy="random")
    with pytest.raises(UsageError, match="treatment"):
        search_patch_plans(tiny_cnn(), DATA, settings=SETTINGS, filters=(), aps=False)


def test_configuration_json() -> None:
    c = Configuration(PatchPlan.of({"3": Treatment()}), True, 0.75, 0.5)
    assert c.to_json() == {
        "plan": {"3": {"method": "blurpool", "filter": "tri3", "pad": "reflect"}},
        "recalibrated": True,
        "agreement": 0.75,
        "agreement_drop": 0.25,
        "consistency": 0.5,
    }


def test_budget_comparison_is_exact_on_shares() -> None:
    """1 - 99/100 is 0.010000000000000009 in floating point: a 1 % budget admits 99 of 100, not 98."""
    plan = PatchPlan.of({"3": Treatment()})
    assert Configuration(plan, False, 99 / 100, 0.5).within(0.01)
    assert not Configuration(plan, False, 98 / 100, 0.5).within(0.01)
    assert Configuration(plan, False, 1.0, 0.5).within(0.0)


def test_stem_is_a_point_only_when_asked() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    assert search_points(model) == ["2"]
    assert search_points(model, stem=True) == ["0", "2"]


def test_search_json_records_the_audit_settings(frontier) -> None:
    """The numbers depend on the shift set and the draws: the JSON says which, as an audit report does. Tensors in
    memory are taken as already preprocessed: no preprocessing to record."""
    report = frontier.to_json()
    assert report["schema_version"] == 1  # an added key: read back by no strict reader, as the audit report's are
    assert list(report) == [
        "schema", "schema_version", "points", "candidates", "max_agreement_drop", "strategy", "images", "consistency",
        "recalibrate", "settings", "seconds", "configurations", "chosen", "plan",
    ]  # fmt: skip
    assert report["settings"] == {
        "shifts": {
            "mode": "circular",
            "kind": "window",
            "image_size": [16, 16],
            "max_shift": MAX_SHIFT,
            "step": 1,
            "count": (2 * MAX_SHIFT + 1) ** 2,
            "padding": "circular (wrap-around)",
        },
        "mode": "exhaustive",
        "pairs": 5,
        "seed": SETTINGS.seed,
        "precision": "fp32",
        "preprocessing": None,
    }


def test_search_json_records_the_preprocessing_and_sampled_shifts(tmp_path) -> None:
    """Image files are preprocessed as the model says: the JSON holds that preprocessing and the sampled shift set, as
    an audit of the same files and settings records them."""
    pixels = np.random.default_rng(4).integers(0, 256, size=(6, 20, 20, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=pixels, labels=np.zeros(6, dtype=np.int64))
    prep = Preprocessing(size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize=18)
    loaded = dataclasses.replace(load_model(tiny_cnn()), preprocessing=prep)
    settings = AuditConfig(max_shift=2, shift_step=2, mode="sampled", pairs=3, seed=5, device="cpu")
    found = search_patch_plans(loaded, tmp_path / "data.npz", settings=settings, filters=("tri3",), aps=False)
    recorded = found.to_json()["settings"]
    assert recorded == {
        "shifts": {
            "mode": "circular",
            "kind": "grid",
            "image_size": [16, 16],
            "max_shift": 2,
            "step": 2,
            "count": 9,
            "padding": "circular (wrap-around)",
        },
        "mode": "sampled",
        "pairs": 3,
        "seed": 5,
        "precision": "fp32",
        "preprocessing": {"size": [16, 16], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "resize": 18, "name": "custom"},
    }
    assert found.consistency_kind == "sampled"
    report = audit(loaded, tmp_path / "data.npz", **dataclasses.asdict(settings)).to_json()
    assert recorded == {
        **{k: report["settings"][k] for k in recorded if k != "preprocessing"},
        "preprocessing": report["data"]["preprocessing"],
    }


def test_plan_file_records_the_re_estimation(frontier) -> None:
    """What --plan-out writes: the chosen plan, and whether (on how many images) its numbers had BatchNorm re-estimated."""
    for recalibrated in (True, False):
        i = next(i for i, c in enumerate(frontier.configurations) if c.recalibrated == recalibrated and c.plan.points)
        chosen = dataclasses.replace(frontier, chosen=i)
        file = chosen.plan_file()
        assert file == PlanFile(chosen.best.plan, len(CALIBRATION) if recalibrated else 0)
        assert file.to_json() == {
            "version": 1,
            "points": chosen.best.plan.to_json()["points"],
            "recalibrated": recalibrated,
            "calibration_images": len(CALIBRATION) if recalibrated else 0,
        }
        assert PlanFile.from_json(file.to_json()) == file
        assert chosen.to_json()["plan"] == chosen.best.plan.to_json()  # the search JSON's plan is as it was
    assert frontier.recalibrate == frontier.to_json()["recalibrate"] == len(CALIBRATION)  # used, not the 200 asked


def test_plan_file_without_the_record_still_reads() -> None:
    old = {"version": 1, "points": {"3": {"method": "aps", "filter": "delta", "pad": "circular"}}}
    assert PlanFile.from_json(old) == PlanFile(PatchPlan.of({"3": Treatment("aps")}), 0)
    assert not PlanFile.from_json(old).recalibrated


@pytest.mark.parametrize(
    "record",
    [
        {"recalibrated": True},
        {"calibration_images": 20},
        {"recalibrated": True, "calibration_images": 0},
        {"recalibrated": False, "calibration_images": 20},
        {"recalibrated": 1, "calibration_images": 20},
        {"recalibrated": True, "calibration_images": True},
        {"recalibrated": True, "calibration_images": 2.5},
        {"recalibrated": False, "calibration_images": -1},
        {"recalibrated": True, "calibration_images": 20, "seed": 0},
    ],
)
def test_plan_file_record_is_strict(record) -> None:
    with pytest.raises(UsageError):
        PlanFile.from_json({"version": 1, "points": {"3": {"method": "aps"}}, **record})
