"""Adding a metric is one class and one registration, from outside the package: it then runs in default audits and
shows in the JSON report, the terminal table, the HTML rows and compare, with no other change."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import shiftaudit
from shiftaudit.metrics import Metric, MetricContext, Reading, ShiftBatch, metric_classes, register_metric, unregister_metric
from shiftaudit.metrics.entries import Entry
from shiftaudit.report.rows import audit_rows, compare_rows
from shiftaudit.shifts.base import ShiftMode, register_shift_mode, unregister_shift_mode
from tests.helpers import synthetic_result, tiny_cnn


@dataclass(frozen=True, eq=False)
class Drop(Entry):
    value: float | None
    n: int


class WorstConfidenceDrop(Metric):
    """Toy metric: per image, the largest fall of the top-1 probability from the zero shift over all shifts."""

    name = "worst_confidence_drop"
    entry_type = Drop
    needs_labels = False
    needs_all_shifts = True
    display_order = 75

    def __init__(self) -> None:
        self.add_state("sum_drop", np.zeros(1, dtype=np.float64), "sum")
        self.add_state("sum_n", np.zeros(1, dtype=np.int64), "sum")

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.exhaustive else None

    @classmethod
    def readings(cls, entry: Drop, settings: dict) -> list[Reading]:
        return [Reading("Worst drop of top-1 probability", entry.value, percent=False, digits=4)]

    def update(self, batch: ShiftBatch) -> None:
        zero = batch.at(batch.p_top, batch.zero_slot).astype(np.float64)
        self.sum_drop = self.sum_drop + (zero[:, None] - batch.p_top.astype(np.float64)).max(axis=1).sum()
        self.sum_n = self.sum_n + len(batch)

    def compute(self) -> Drop:
        return Drop(float(self.sum_drop[0] / self.sum_n[0]), int(self.sum_n[0]))


@pytest.fixture
def toy_metric():
    register_metric(WorstConfidenceDrop)
    yield WorstConfidenceDrop
    unregister_metric(WorstConfidenceDrop.name)
    assert WorstConfidenceDrop not in metric_classes()


def _audit(**kw):
    torch.manual_seed(0)
    model = tiny_cnn(size=8).eval()
    images = torch.randn(6, 3, 8, 8)
    labels = torch.randint(0, 5, (6,))
    return model, images, shiftaudit.audit(model, (images, labels), max_shift=2, device="cpu", polyphase=False, **kw)


def test_a_metric_registered_from_outside_runs_by_default_and_reaches_every_report(toy_metric):
    model, images, result = _audit()
    entry = result.metrics["worst_confidence_drop"]
    with torch.no_grad():  # naive: every shift of the set, one torch.roll at a time
        shifts = shiftaudit.ShiftSet.window((8, 8), 2)
        p = torch.stack(
            [
                model(torch.roll(images, (int(a), int(b)), (-2, -1))).softmax(1).max(1).values
                for a, b in zip(shifts.dh, shifts.dw)
            ],
            1,
        ).double()
    want = (p[:, 0:1] - p).max(1).values.mean().item()
    assert entry == {"value": pytest.approx(want, abs=1e-6), "n": 6}
    assert list(result.metrics)[-1] == "worst_confidence_drop"  # registered last: reported last
    rows = {label: (value, ci) for label, value, ci in audit_rows(result)}
    assert rows["Worst drop of top-1 probability"] == (f"{entry['value']:.4f}", "")
    labels = [r[0] for r in audit_rows(result)]  # display_order 75: after the mean abs. change (70), before curves (80)
    assert labels.index("Mean abs. change of top-1 probability") < labels.index("Worst drop of top-1 probability")
    assert labels.index("Worst drop of top-1 probability") < labels.index("Adversarial accuracy, max shift 1 px")
    row = next(r for r in compare_rows([("a", result), ("b", result)]) if r.metric == "Worst drop of top-1 probability")
    assert row.values == [entry["value"], entry["value"]] and row.delta(1) == 0.0
    back = shiftaudit.AuditResult.from_json(json.loads(json.dumps(result.to_json())))  # what compare reads
    assert type(back.metrics["worst_confidence_drop"]) is Drop and back.metrics["worst_confidence_drop"] == entry


def test_without_the_registration_the_report_is_unchanged(toy_metric):
    unregister_metric(WorstConfidenceDrop.name)
    _, _, result = _audit()
    assert "worst_confidence_drop" not in result.metrics
    register_metric(WorstConfidenceDrop)


def test_declared_states_merge_by_their_reduction_and_reset():
    a, b = WorstConfidenceDrop(), WorstConfidenceDrop()
    a.sum_drop, a.sum_n = np.array([0.5]), np.array([2])
    b.sum_drop, b.sum_n = np.array([0.25]), np.array([3])
    a.merge(b)
    assert a.state_dict() == {"sum_drop": pytest.approx(np.array([0.75])), "sum_n": np.array([5])}
    a.reset()
    assert float(a.sum_drop[0]) == 0.0 and int(a.sum_n[0]) == 0


def test_a_taken_name_is_refused():
    class Impostor(WorstConfidenceDrop):
        name = "variation"

    with pytest.raises(ValueError, match="already registered"):
        register_metric(Impostor)


@pytest.mark.parametrize("attrs", [{}, {"name": ""}, {"name": 5}], ids=["no name", "empty", "not a string"])
def test_a_metric_without_a_usable_name_is_refused(attrs):
    nameless = type("Nameless", (Metric,), {"update": lambda self, batch: None, "compute": lambda self: {}, **attrs})
    with pytest.raises(TypeError, match=r"^Nameless needs a class attribute `name` to be registered$"):
        register_metric(nameless)
    assert nameless not in metric_classes()


def test_a_metric_that_declares_no_state_has_nothing_to_reduce_save_or_reset():
    class Constant(Metric):
        name = "constant"

        def update(self, batch: ShiftBatch) -> None: ...

        def compute(self) -> dict:
            return {"value": 1.0}

    m = Constant()
    assert m.reductions() == {} and m.state_dict() == {}
    m.reset()
    m.merge(Constant())
    assert m.compute() == {"value": 1.0}


def test_per_image_metrics_merge_by_concatenation_and_reset():
    from shiftaudit.metrics import Variation

    a, b = Variation(), Variation()
    a._append(np.array([2]), np.array([0.1]))
    b._append(np.array([0, 1]), np.array([0.3, 0.2]))
    a.merge(b)
    ids, values = a.sorted_values()
    assert ids.tolist() == [0, 1, 2] and values.tolist() == [0.3, 0.2, 0.1]
    a.reset()
    assert a.ids.size == 0 and a.values.size == 0


# -- shift modes ------------------------------------------------------------------------------------------------------
class ReflectShifts(ShiftMode):
    """Toy mode: the image moves by (dh, dw) and the border it uncovers is filled by reflection (nothing wraps)."""

    name = "reflect"
    noun = "reflect-padded shifts"
    padding = "reflection of the image at its border"
    wraps = False

    def bank(self, images: torch.Tensor, shifts) -> ReflectBank:
        return ReflectBank(images, int(shifts.radius.max()))


class ReflectBank:
    def __init__(self, images: torch.Tensor, reach: int) -> None:
        self.reach, self.size = reach, images.shape[-2:]
        padded = torch.nn.functional.pad(images, (reach,) * 4, mode="reflect")
        self.windows = padded.unfold(2, self.size[0], 1).unfold(3, self.size[1], 1)

    def gather(self, image_index, dh, dw):
        return self.windows[image_index, :, self.reach - dh.long(), self.reach - dw.long()].contiguous()


@pytest.fixture
def toy_mode():
    register_shift_mode(ReflectShifts())
    yield
    unregister_shift_mode("reflect")


def test_a_shift_mode_registered_from_outside_audits_like_a_builtin(toy_mode):
    torch.manual_seed(0)
    model = tiny_cnn(size=8).eval()
    images, labels = torch.randn(5, 3, 8, 8), torch.randint(0, 5, (5,))
    result = shiftaudit.audit(model, (images, labels), shift_mode="reflect", max_shift=2, device="cpu")
    shifts = shiftaudit.ShiftSet.window((8, 8), 2, mode="reflect")
    assert len(shifts) == 25 and shifts.radius.max() == 2 and not shifts.wraps
    preds = []
    with torch.no_grad():  # naive: pad by reflection, crop the shifted window, one shift at a time
        padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
        for a, b in zip(shifts.dh, shifts.dw):
            preds.append(model(padded[:, :, 2 - a : 10 - a, 2 - b : 10 - b]).argmax(1))
    preds = torch.stack(preds, 1)
    share = torch.stack([(preds == c).double().mean(1) for c in range(5)], 1)
    assert result.metrics["consistency"]["exact"]["value"] == pytest.approx((share**2).sum(1).mean().item(), abs=1e-12)
    adv1 = (preds[:, shifts.radius <= 1] == labels[:, None]).all(1).double().mean().item()
    curve = result.metrics["adversarial"]
    assert curve["accuracy"][curve["radius"].index(1)] == pytest.approx(adv1)
    assert result.settings["shifts"]["mode"] == "reflect"
    assert result.settings["shifts"]["padding"] == "reflection of the image at its border"
    assert result.settings["engine"] == "dense"  # polyphase and early exit need torch.roll shifts
    from shiftaudit.report.terminal import describe_shifts

    assert describe_shifts(result).startswith("25 reflect-padded shifts within +/-2 px")


def test_an_unknown_shift_mode_names_the_registered_ones():
    from shiftaudit.errors import UsageError

    with pytest.raises(UsageError, match="Unknown `shift_mode` 'mirror'; use circular, crop, subpixel"):
        shiftaudit.audit(tiny_cnn(size=8), (torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), shift_mode="mirror")


def test_metrics_are_found_and_built_by_name():
    from shiftaudit.metrics import AdversarialCurve, create_metric, get_metric

    assert get_metric("adversarial") is AdversarialCurve
    from shiftaudit.shifts.sets import ShiftSet

    shifts = ShiftSet.window((8, 8), 2)
    built = create_metric("adversarial", shifts)
    assert type(built) is AdversarialCurve and list(built.radii) == list(shifts.radii)
    with pytest.raises(KeyError) as err:
        get_metric("no-such-metric")
    message = err.value.args[0]
    assert message.startswith("no metric named 'no-such-metric'; registered: ")
    assert message.split(": ", 1)[1].split(", ") == [cls.name for cls in shiftaudit.metrics.registry._METRICS.values()]


def test_reset_states_never_share_memory_with_their_defaults():
    """An in-place update (np.add.at, +=) after reset must not write into the declared default: a second reset would
    start from the first run's counts."""
    from shiftaudit.metrics import AccuracyMap, ShiftBatch
    from shiftaudit.shifts.sets import ShiftSet

    shifts = ShiftSet.window((8, 8), 1)
    m = AccuracyMap(shifts)
    s = len(shifts)
    batch = ShiftBatch(
        image_ids=np.arange(2),
        labels=np.zeros(2, dtype=np.int64),
        preds=np.zeros((2, s), dtype=np.int64),
        p_label=None,
        p_top=np.ones((2, s), dtype=np.float32),
        shift_index=np.tile(np.arange(s), (2, 1)),
        zero_slot=np.zeros(2, dtype=np.int64),
        random_slot=np.zeros(2, dtype=np.int64),
        pair_slots=np.zeros((2, 1, 2), dtype=np.int64),
        exhaustive=True,
        num_shifts=s,
        num_classes=2,
    )
    for _ in range(2):
        m.reset()
        m.update(batch)
        assert m.sum_correct.tolist() == [2] * s and m.sum_images.tolist() == [2]
    m.reset()
    assert m.sum_correct.tolist() == [0] * s and m.sum_images.tolist() == [0]


def test_create_metric_passes_keyword_arguments_and_unregistering_an_unknown_name_is_a_no_op():
    from shiftaudit.metrics import create_metric, metric_classes
    from shiftaudit.shifts.sets import ShiftSet

    shifts = ShiftSet.window((8, 8), 1)
    assert create_metric("adversarial", shift_set=shifts).radii == shifts.radii
    before = metric_classes()
    unregister_metric("no-such-metric")
    assert metric_classes() == before


def test_each_reading_comes_once_registered_or_not_and_absent_metrics_are_skipped(toy_metric):
    result = synthetic_result()
    del result.metrics["consistency"]  # a registered metric with a two-part key, absent from this report
    result.metrics["worst_confidence_drop"] = Drop(0.25, 40)  # registered: read by its own readings only
    result.metrics["my_score"] = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}  # a caller's own: read by its name
    result.metrics["summary_only"] = {"mean": 1.0}  # no value: nothing to read
    result.metrics["a_list"] = [1, 2]
    assert audit_rows(result) == [
        ("Accuracy, no shift", "90.0 %", "[85.0, 94.0]"),
        ("Accuracy, random shift", "80.0 %", "[74.0, 85.0]"),
        ("Variation of P(correct), mean / median", "0.0447 / 0.0103", "[0.0100, 0.0500]"),
        ("Worst drop of top-1 probability", "0.2500", ""),
        ("Adversarial accuracy, max shift 1 px", "85.0 %", "[80.0, 89.0]"),
        ("Adversarial accuracy, max shift 2 px", "80.0 %", "[75.0, 84.0]"),
        ("Adversarial accuracy, max shift 3 px", "75.0 %", "[70.0, 79.0]"),
        ("Accuracy over shifts, worst / best", "84.0 % / 90.0 %", ""),
        ("my score", "0.5000", "[0.4000, 0.6000]"),
    ]


def test_a_metric_without_its_own_readings_is_read_by_its_name():
    plain = type("Plain", (Metric,), {"name": "my_score", "update": lambda self, batch: None, "compute": lambda self: {}})
    (reading,) = plain.readings({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}, {})
    assert (reading.label, reading.value, reading.ci_low, reading.ci_high) == ("my score", 0.5, 0.25, 0.75)
