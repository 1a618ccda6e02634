"""Issue 14, part 2: label-free distillation, downstream-only BatchNorm recalibration, the agreement warning.

Library tests run on the packaged trained demo CNN (a "pretrained-style" model: trained, BatchNorm, max-pooling) and
on tiny nets built here; the CLI tests run `shiftaudit patch` end to end on files written to tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shiftaudit.antialias import (
    PatchConfig,
    distill,
    downstream_batchnorms,
    patch_model,
    recalibrate_batchnorm,
)
from shiftaudit.data import load_data
from tests.helpers import assert_clean_error, cli

DEMO = "shiftaudit/assets/demo.safetensors"


def demo_model():
    from shiftaudit.loading import load_model
    from shiftaudit.models.demo import demo_checkpoint_path

    return load_model(demo_checkpoint_path())


def demo_images(n: int, seed: int, preprocessing):
    from shiftaudit.cli.demo_cmd import demo_dataset

    return demo_dataset(n, preprocessing, seed=seed)


def write_demo_pngs(folder, n: int, seed: int) -> None:
    """A flat folder of unlabelled PNGs: the demo's synthetic images."""
    from shiftaudit.data.synthetic import make_synthetic

    folder.mkdir(parents=True, exist_ok=True)
    images, _labels, _names = make_synthetic(n, seed=seed)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"u{i:04d}.png")


def write_demo_npz(path, n: int, seed: int) -> None:
    from shiftaudit.data.synthetic import make_synthetic

    images, labels, _names = make_synthetic(n, seed=seed)
    np.savez(path, images=images, labels=labels)


@pytest.fixture(scope="module")
def demo():
    base = demo_model()
    unlabelled = demo_images(96, 1, base.preprocessing)
    return base, unlabelled


def patched_demo(base, filt="binomial5"):
    return patch_model(base.model, PatchConfig(filter=filt, pad="circular")).model


# -- distillation (library) ----------------------------------------------------------------------------------------


def test_distillation_recovers_agreement_with_the_original(demo):
    base, unlabelled = demo
    student = patched_demo(base, "binomial7")
    d = distill(base.model, student, unlabelled, steps=20, seed=0, batch_size=16)
    assert d.steps == 20 and d.stopped_by == "steps"
    assert d.train_images + d.heldout_images == 96 and d.heldout_images == 19
    # measured with seed 0: 15.8 % -> 73.7 % of the held-out images agree, as given and shifted
    assert d.agreement_after >= d.agreement_before + 0.3
    assert d.shifted_agreement_after >= d.shifted_agreement_before + 0.3
    assert d.loss_last < d.loss_first
    assert not student.training


def test_distillation_respects_the_step_and_time_budgets(demo):
    base, unlabelled = demo
    calls = []

    class Counter:
        def start(self, total, description):
            calls.append(("start", total))

        def advance(self, n):
            calls.append(("advance", n))

        def stop(self):
            calls.append(("stop",))

    d = distill(base.model, patched_demo(base), unlabelled, steps=3, seed=0, batch_size=8, progress=Counter())
    assert d.steps == 3 and calls[0] == ("start", 3) and calls.count(("advance", 1)) == 3 and calls[-1] == ("stop",)
    d = distill(base.model, patched_demo(base), unlabelled, steps=10_000, seconds=0.5, seed=0, batch_size=8)
    assert d.stopped_by == "seconds" and d.steps < 10_000 and d.seconds < 0.5 + d.seconds / max(1, d.steps)  # not a step late


def test_distillation_is_deterministic_with_the_seed(demo):
    base, unlabelled = demo
    runs = []
    for seed in (3, 3, 4):
        student = patched_demo(base)
        distill(base.model, student, unlabelled, steps=3, seed=seed, batch_size=8)
        runs.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_distillation_leaves_the_teacher_alone(demo):
    base, unlabelled = demo
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    distill(base.model, patched_demo(base), unlabelled, steps=3, seed=0, batch_size=8)
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_distillation_refuses_no_budget_and_too_few_images(demo):
    from shiftaudit.errors import UsageError

    base, unlabelled = demo
    with pytest.raises(UsageError, match="budget"):
        distill(base.model, patched_demo(base), unlabelled, steps=None, seconds=None)
    one = load_data(torch.rand(1, 3, 32, 32), raw=True)
    with pytest.raises(UsageError, match="at least 2"):
        distill(base.model, patched_demo(base), one, steps=1)


# -- recalibration (library) ---------------------------------------------------------------------------------------


def two_stage_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_recalibration_touches_only_the_batchnorms_after_the_blur():
    torch.manual_seed(0)
    net = two_stage_net()
    patched = patch_model(net, PatchConfig(filter="tri3")).model
    assert downstream_batchnorms(patched, torch.rand(1, 3, 16, 16)) == ["5"]
    upstream = {k: v.clone() for k, v in patched[1].state_dict().items()}
    down_before = patched[5].running_mean.clone()
    data = load_data(torch.rand(40, 3, 16, 16) * 3 + 1, raw=True)
    rec = recalibrate_batchnorm(patched, data, num_images=40, batch_size=8)
    assert rec.layers == ["5"] and rec.images == 40
    for k, v in patched[1].state_dict().items():
        assert torch.equal(v, upstream[k]), k  # upstream: exactly as trained
    assert not torch.allclose(patched[5].running_mean, down_before)


def test_calibration_order_is_shuffled_with_the_seed():
    torch.manual_seed(0)
    net = two_stage_net()
    # class-sorted data: the first 20 images are dark, the last 20 bright
    images = torch.cat([torch.zeros(20, 3, 16, 16), torch.ones(20, 3, 16, 16) * 4]) + torch.rand(40, 3, 16, 16)
    data = load_data(images, raw=True)
    means = {}
    for seed in (0, 0, 1):
        patched = patch_model(net, PatchConfig(filter="tri3")).model
        recalibrate_batchnorm(patched, data, num_images=20, batch_size=10, seed=seed)
        means.setdefault(seed, []).append(patched[5].running_mean.clone())
    torch.testing.assert_close(means[0][0], means[0][1], rtol=0, atol=0)
    assert not torch.allclose(means[0][0], means[1][0])
    # the first 20 in order would be all dark: the shuffled statistics are not those
    first = patch_model(net, PatchConfig(filter="tri3")).model
    recalibrate_batchnorm(first, load_data(images[:20], raw=True), num_images=20, batch_size=10, seed=0, layers="all")
    assert not torch.allclose(means[0][0], first[5].running_mean, atol=1e-3)


# -- CLI end to end ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_demo_pngs(root / "unlabelled", 96, seed=1)
    write_demo_pngs(root / "few", 24, seed=2)
    write_demo_npz(root / "test.npz", 64, seed=90210)
    write_demo_npz(root / "small.npz", 16, seed=90210)  # for the runs whose point is not the numbers: a quarter of the work
    return root


def test_patch_distill_from_an_unlabelled_folder(files, tmp_path):
    out, rep = tmp_path / "aa.safetensors", tmp_path / "patch.json"
    res = cli(
        "patch",
        DEMO,
        "--filter",
        "binomial7",
        "--pad",
        "circular",
        "--distill",
        files / "unlabelled",
        "--distill-steps",
        "12",
        "--distill-seconds",
        "3600",
        "--data",
        files / "test.npz",
        "-o",
        out,
        "--json",
        rep,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(rep.read_text())
    d = report["distill"]
    assert d["steps"] == 12 and d["heldout_images"] == 19 and d["agreement_after"] >= d["agreement_before"] + 0.2
    assert "distilled 12 steps" in res.stdout
    assert report["agreement"]["zero_shift_top1"] > d["agreement_before"]
    from shiftaudit.loading import load_model

    reloaded = load_model(out)
    assert reloaded.patch_spec["filter"] == "binomial7"


def test_low_agreement_warns_and_suggests_distill(files):
    res = cli(
        "patch", DEMO, "--filter", "binomial7", "--pad", "circular", "--data", files / "test.npz", "--min-agreement", "0.99"
    )
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "agrees with the original" in warn[0] and "--distill" in warn[0]
    res = cli("patch", DEMO, "--filter", "binomial7", "--pad", "circular", "--data", files / "test.npz", "--min-agreement", "0")
    assert "warning:" not in res.stderr


def test_recalibration_needs_separate_data_and_warns_on_few_images(files, tmp_path):
    res = cli("patch", DEMO, "--recalibrate", "64", "--data", files / "test.npz")
    assert_clean_error(res, "--calibration-data")
    rep = tmp_path / "r.json"
    res = cli(
        "patch",
        DEMO,
        "--filter",
        "tri3",
        "--recalibrate",
        "64",
        "--calibration-data",
        files / "few",
        "--data",
        files / "small.npz",
        "--eval",
        "--max-shift",
        "2",
        "--json",
        rep,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    assert any(ln.startswith("warning:") and "only 24 images" in ln for ln in res.stderr.splitlines())
    report = json.loads(rep.read_text())
    assert report["recalibration"]["images"] == 24 and report["recalibration"]["layers"]
    assert "1" not in report["recalibration"]["layers"] and "4" not in report["recalibration"]["layers"]  # before any blur
    assert "baseline_recalibrated" in report and res.stdout == ""  # --quiet: the control is in the JSON, no table


# -- patch --eval --out, compare of patch reports ------------------------------------------------------------------


def test_patch_eval_out_writes_before_and_after_side_by_side_and_compare_reads_the_report(files, tmp_path):
    from tests.helpers import assert_real_png

    out, rep = tmp_path / "report", tmp_path / "patch.json"
    res = cli(
        "patch",
        DEMO,
        "--filter",
        "tri3",
        "--pad",
        "circular",
        "--data",
        files / "small.npz",
        "--eval",
        "--max-shift",
        "1",
        "--out",
        out,
        "--json",
        rep,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    for sub in ("before", "after"):
        assert (out / sub / "report.html").is_file() and json.loads((out / sub / "report.json").read_text())[
            "schema"
        ] == "shiftaudit/audit-report"
        assert_real_png(out / sub / "accuracy_map.png")
    page = (out / "report.html").read_text()
    assert "Baseline" in page and "Patched (tri3)" in page and page.count("data:image/png;base64,") >= 4
    assert not (out / "baseline_recalibrated").exists()

    pics = tmp_path / "cmp"
    cmp = cli("compare", rep, "--out", pics, "--json", tmp_path / "cmp.json")
    assert cmp.exit_code == 0, cmp.output
    assert "patch (baseline)" in cmp.stdout and "patch (patched)" in cmp.stdout
    assert_real_png(pics / "accuracy_map.png")
    runs = json.loads((tmp_path / "cmp.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["patch (baseline)", "patch (patched)"]


def test_patch_out_needs_eval(files, tmp_path):
    res = cli("patch", DEMO, "--out", tmp_path / "r")
    assert_clean_error(res, "--eval")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_distilled_demo_keeps_accuracy_and_gains_consistency():
    """The packaged trained demo CNN, binomial5 post hoc: distillation brings accuracy back to within 3 pt of the
    original and keeps the consistency above it (docs/patching.md: 96.9 -> 45.3 -> 95.7 %, 98.52 -> 100 %)."""
    import dataclasses

    from shiftaudit.engine.runner import audit

    base = demo_model()
    test = demo_images(128, 90210, base.preprocessing)
    student = patched_demo(base, "binomial5")
    distill(base.model, student, demo_images(512, 1, base.preprocessing), steps=120, seed=0)
    before = audit(base, test, device="cpu", max_shift=4)
    after = audit(dataclasses.replace(base, model=student), test, device="cpu", max_shift=4)
    assert after.accuracy >= before.accuracy - 0.03
    assert after.consistency_exact > before.consistency_exact
