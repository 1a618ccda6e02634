"""End to end: the real CLI on real files (a saved torchvision resnet18 and a small ImageFolder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from shiftaudit.cli import app
from tests.helpers import (
    POSITIONAL,
    TINY_FILES_MODULE,
    files_eval_args,
    positional_model,
    run_ok,
    write_images,
)
from tests.helpers import write_image_folder as write_small_folder

runner = CliRunner()


def write_image_folder(root: Path, classes: int = 3, per_class: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    ckpt = root / "resnet18.pt"
    torch.save(model.state_dict(), ckpt)
    data = write_image_folder(root / "val")
    return ckpt, data


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_writes_table_and_json_and_gate_passes(resnet_files, tmp_path):
    ckpt, data = resnet_files
    report = tmp_path / "r.json"
    res = run(
        "eval",
        ckpt,
        "--arch",
        "resnet18",
        "--data",
        data,
        "--size",
        "32",
        "--max-shift",
        "2",
        "--json",
        report,
        "--min-consistency",
        "0.0",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert res.exit_code == 0, res.output
    assert "Consistency" in res.stdout and "Adversarial accuracy" in res.stdout
    rep = json.loads(report.read_text())
    assert rep["schema"] == "shiftaudit/audit-report" and rep["schema_version"] == 1
    assert rep["data"]["num_images"] == 9 and rep["settings"]["shifts"]["count"] == 25
    assert rep["gate"]["passed"] is True
    assert rep["model"]["arch"] == "resnet18"


def test_eval_gate_fails_with_exit_1_and_a_reason(resnet_files, tmp_path):
    ckpt, data = resnet_files
    res = run(
        "eval",
        ckpt,
        "--data",
        data,
        "--size",
        "32",
        "--max-shift",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--min-consistency",
        "1.0",
        "--min-accuracy",
        "1.0",
        "--min-adv-accuracy",
        "2=1.0",
        "--quiet",
    )
    # identified without --arch; random weights cannot be perfectly accurate on 3 random classes
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.stderr and "--min-accuracy 1" in res.stderr
    assert "gate: FAILED" in res.stderr


def test_eval_same_seed_same_json(resnet_files, tmp_path):
    ckpt, data = resnet_files
    outs = []
    for i in range(2):
        p = tmp_path / f"r{i}.json"
        res = run(
            "eval",
            ckpt,
            "--arch",
            "resnet18",
            "--data",
            data,
            "--size",
            "32",
            "--max-shift",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
            p,
            "--quiet",
            "--seed",
            "3",
        )
        assert res.exit_code == 0, res.output
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-consistency", "1.5"], "between 0 and 1"),
        (["--min-adv-accuracy", "9=0.5"], "only reaches 2"),
        (
            ["--shift-step", "2", "--min-adv-accuracy", "1=0.5"],
            "radius 1, which the shift set does not evaluate (its radii are 0, 2)",
        ),
        (["--mode", "sampled", "--max-variation", "0.1"], "every shift evaluated"),
        (["--precision", "fp16"], "needs a CUDA device"),
        (["--max-shift", "40"], "more than half"),
    ],
)
def test_eval_usage_errors_exit_2_with_one_line(resnet_files, extra, message):
    ckpt, data = resnet_files
    res = run(
        "eval",
        ckpt,
        "--arch",
        "resnet18",
        "--data",
        data,
        "--size",
        "32",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-shift",
        "2",
        *extra,
    )
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1


def test_eval_without_data_is_a_usage_error(resnet_files):
    ckpt, _ = resnet_files
    res = run("eval", ckpt)
    assert res.exit_code == 2 and "needs --data" in res.stderr


def test_inspect_resnet18_lists_every_downsampling_point(resnet_files, tmp_path):
    ckpt, _ = resnet_files
    res = run("inspect", ckpt, "--json", "-")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    insp = rep["inspection"]
    assert insp["total_stride"] == 32
    strided = {p["name"]: p for p in insp["points"] if p["role"] != "global"}
    assert set(strided) == {
        "conv1",
        "maxpool",
        "layer2.0.conv1",
        "layer2.0.downsample.0",
        "layer3.0.conv1",
        "layer3.0.downsample.0",
        "layer4.0.conv1",
        "layer4.0.downsample.0",
    }
    assert all(p["stride"] == [2, 2] for p in strided.values())
    assert strided["conv1"]["role"] == "stem" and strided["layer2.0.downsample.0"]["role"] == "shortcut"
    assert rep["model"]["arch"] == "resnet18" and rep["model"]["arch_source"].startswith("identified")
    assert rep["model"]["num_classes"] == 3
    table = run("inspect", ckpt)
    assert table.exit_code == 0 and "total stride 32" in table.stdout and "layer4.0.downsample.0" in table.stdout


MARKED = "sa_cli_eval_models"


@pytest.fixture(scope="module")
def marked_files(tmp_path_factory):
    """The test models on sys.path (their Slow model appends a line to $SA_MARK at every forward pass), a tiny
    checkpoint and a 16 px ImageFolder."""
    from tests.helpers import write_models_module

    root = tmp_path_factory.mktemp("marked")
    write_models_module(root / "pkgs", MARKED)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "pkgs"))
        mod = __import__(MARKED)
        torch.manual_seed(0)
        torch.save(mod.slow(3).state_dict(), root / "tiny.pt")
        yield root / "tiny.pt", write_small_folder(root / "val", size=16), root


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--max-shift", "0", "--min-consistency", "0.9"], "--min-consistency 0.9 would pass on nothing"),
        (["--max-shift", "0", "--max-variation", "0.05"], "--max-variation 0.05 would pass on nothing"),
        (["--max-variation", "inf"], "--max-variation takes a finite number"),
        (["--max-variation", "nan"], "--max-variation takes a finite number"),
        (["--min-consistency", "nan"], "--min-consistency takes a fraction"),
        (["--min-accuracy", "inf"], "--min-accuracy takes a fraction"),
        (["--min-adv-accuracy", "1=."], "--min-adv-accuracy takes RADIUS=FRACTION"),
    ],
)
def test_gates_that_pass_on_nothing_or_on_no_number_are_refused_before_any_forward_pass(marked_files, monkeypatch, extra, flag):
    ckpt, data, root = marked_files
    mark = root / f"forward-{abs(hash(tuple(extra)))}.txt"
    monkeypatch.setenv("SA_MARK", str(mark))
    res = run(
        "eval",
        ckpt,
        "--arch",
        f"{MARKED}:slow",
        "--data",
        data,
        "--size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-shift",
        "1",
        "--exact",
        *extra,
    )
    from tests.helpers import assert_clean_error

    assert_clean_error(res, flag)
    assert not mark.exists(), "the model ran before the refusal"


def test_max_shift_zero_reports_accuracy_and_says_why_nothing_else(marked_files, tmp_path, monkeypatch):
    """--max-shift 0 used to print a consistency of 100 % with an interval, and then advise --shift-step 1 although
    the step was 1. Now: accuracy and the r = 0 adversarial accuracy (gateable), one note, the numbers equal the JSON."""
    ckpt, data, root = marked_files
    monkeypatch.delenv("SA_MARK", raising=False)
    report = tmp_path / "r.json"
    res = run(
        "eval",
        ckpt,
        "--arch",
        f"{MARKED}:slow",
        "--data",
        data,
        "--size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-shift",
        "0",
        "--json",
        report,
        "--min-accuracy",
        "0",
        "--min-adv-accuracy",
        "0=0",
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert sorted(rep["metrics"]) == ["accuracy", "adversarial"]
    shown = {line.split("│")[0].strip(): line.split("│")[1].strip() for line in res.stdout.splitlines() if "│" in line}
    assert list(shown) == ["Accuracy, no shift", "Adversarial accuracy, max shift 0 px"]
    assert shown["Accuracy, no shift"] == f"{100 * rep['metrics']['accuracy']['none']['value']:.1f} %"
    assert shown["Adversarial accuracy, max shift 0 px"] == f"{100 * rep['metrics']['adversarial']['accuracy'][0]:.1f} %"
    assert "Consistency" not in res.stdout and "--shift-step 1" not in res.output
    assert "note: only the zero shift was evaluated (max shift 0)" in res.stdout
    assert rep["gate"]["passed"] is True


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """3 classes of 64x48 images (larger than the 24 px input) and a tiny checkpoint."""
    from tests.helpers import tiny_cnn

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for c in range(3):
        (root / "val" / f"class_{c}").mkdir(parents=True)
        for i in range(2):
            coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((64, 48), Image.BICUBIC).save(root / "val" / f"class_{c}" / f"p{i}.png")
    torch.manual_seed(0)
    torch.save(tiny_cnn(3).state_dict(), root / "tiny.pt")
    return root / "tiny.pt", root / "val"


def _tiny_eval(photos, *extra):
    ckpt, data = photos
    return run(
        "eval",
        ckpt,
        "--arch",
        "tests.helpers:tiny_cnn",
        "--data",
        data,
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    )


def test_size_alone_resizes_by_the_crop_fraction_and_the_header_plan_and_json_say_so(photos, tmp_path):
    """--size 24 on 64x48 photos: resized to floor(24 / 0.875) = 27, centre crop 24 (not the raw central 24 px); the
    table header and the --dry-run plan show the preprocessing, each number equal to the JSON's."""
    res = _tiny_eval(photos, "--size", "24", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    prep = rep["data"]["preprocessing"]
    assert prep == {"size": [24, 24], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 27, "name": "custom"}
    words = f"resize {prep['resize']}, centre crop {prep['size'][0]}x{prep['size'][1]}, ImageNet mean/std"
    header = " ".join(res.stdout.split("Metric")[0].split())
    assert f"on {rep['data']['description']} ({words});" in header
    same = _tiny_eval(photos, "--size", "24", "--resize", "27", "--json", tmp_path / "same.json")
    assert same.exit_code == 0, same.output
    assert json.loads((tmp_path / "same.json").read_text())["metrics"] == rep["metrics"]  # the resize is what ran
    plan = _tiny_eval(photos, "--size", "24", "--dry-run", "--json", tmp_path / "plan.json")
    assert plan.exit_code == 0, plan.output
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["preprocessing"] == prep
    row = next(line for line in plan.stdout.splitlines() if line.startswith("preprocessing"))
    assert row.split("│")[1].strip() == words


def test_mean_and_std_nobody_gave_are_said_to_be_assumed(photos, tmp_path):
    note = (
        "ImageNet mean/std assumed: the checkpoint records no normalisation and neither --preset nor --mean/--std "
        "was given; pass the model's own (docs/loading.md, finding a model's preprocessing)"
    )
    res = _tiny_eval(photos, "--size", "24", "--json", tmp_path / "a.json")
    assert res.exit_code == 0 and note in json.loads((tmp_path / "a.json").read_text())["notes"]
    assert f"note: {note}" in " ".join(res.stdout.split())
    plan = _tiny_eval(photos, "--size", "24", "--dry-run")
    assert f"note: {note}" in " ".join(plan.stdout.split())
    for given in (["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"], ["--preset", "imagenet"]):
        res = _tiny_eval(photos, "--size", "24", *given, "--json", tmp_path / "b.json")
        assert res.exit_code == 0, res.output
        assert not [n for n in json.loads((tmp_path / "b.json").read_text())["notes"] if "assumed" in n]


def test_a_radius_the_table_leaves_out_is_named_under_it(photos, tmp_path):
    """A step-4 grid to 16 px measures r = 4, 8, 12, 16; the table shows 4, 8 and 16 and says 12 is in the JSON."""
    res = _tiny_eval(photos, "--size", "40", "--max-shift", "16", "--shift-step", "4", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    adv = json.loads((tmp_path / "r.json").read_text())["metrics"]["adversarial"]
    assert adv["radius"] == [0, 4, 8, 12, 16]
    out = " ".join(res.stdout.split())
    assert "max shift 12 px" not in out and "max shift 16 px" in out
    assert "Adversarial accuracy at 12 px: in the JSON report (metrics.adversarial), not shown." in out


def test_inspect_at_an_odd_size_says_the_sizes_round_and_takes_resize(resnet_files):
    """At 260 px resnet18 goes 260 -> 130 -> 65 -> 33 -> 17 -> 9: the stride is 32 (not 260 / 9 = 29), every layer
    is listed, and the sizes round. --resize is taken as by eval and patch, and shown with the audit input."""
    ckpt, _ = resnet_files
    rep = json.loads(run("inspect", ckpt, "--size", "260", "--json", "-").stdout)
    assert rep["inspection"]["total_stride"] == 32 and rep["inspection"]["final_size"] == [9, 9]
    res = run("inspect", ckpt, "--size", "260", "--resize", "300")
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "where no layer shows it" not in out and "(total stride 32)" in out
    assert (
        "note: 260x260 is not a multiple of the total stride, so the downsampling layers round their output sizes "
        "(260 / 32 = 8.125 -> 9)"
    ) in out
    assert "Audit input │ resize 300, centre crop 260x260, ImageNet mean/std" in out
    even = " ".join(run("inspect", ckpt, "--size", "256").stdout.split())
    assert "(total stride 32)" in even and "round their output sizes" not in even
    assert "Audit input │ resize 292, centre crop 256x256" in even  # --size alone: 256 / 0.875


def test_library_errors_name_parameters_and_the_command_line_names_flags():
    """The library says `max_shift`; the CLI rewrites it through one table, whose flags are eval's own options."""
    import typer.main

    from shiftaudit.cli.flags import FLAGS, as_flags
    from shiftaudit.errors import UsageError
    from shiftaudit.shifts.sets import ShiftSet

    command = typer.main.get_command(app)
    options = {o for p in command.commands["eval"].params for o in p.opts}
    assert set(FLAGS.values()) <= options
    with pytest.raises(UsageError) as refused:
        ShiftSet.window((8, 8), 1, 2)
    assert str(refused.value) == "`shift_step` 2 is larger than `max_shift` 1: only the zero shift would remain."
    assert as_flags(str(refused.value)) == "--shift-step 2 is larger than --max-shift 1: only the zero shift would remain."
    assert as_flags("try `shiftaudit demo`, `unknown`") == "try `shiftaudit demo`, `unknown`"


def test_nan_logits_are_counted_and_left_out_never_averaged(tiny_files, tmp_path):
    root = tmp_path / "nan"
    write_images(root / "class_0", 2, lo=230, hi=255, prefix="bright")  # NaN at every shift
    write_images(root / "class_1", 2, lo=0, hi=40, seed=1)
    write_images(root / "class_2", 2, lo=0, hi=40, seed=2)
    out = run_ok(files_eval_args(tiny_files, arch=f"{TINY_FILES_MODULE}:nan_on_bright", data=root), tmp_path / "r.json")
    rep = out["report"]
    assert rep["data"]["nonfinite_images"] == 2 and rep["data"]["num_images"] == 6
    assert any("2 of 6 images gave NaN or infinite outputs" in n for n in rep["notes"])
    assert len(rep["per_image"]["image_id"]) == 4  # the metrics saw only the finite images
    cons = rep["metrics"]["consistency"]["exact"]["value"]
    assert cons == cons  # a number, not NaN
    assert "NaN or infinite" in out["res"].stdout


def test_json_and_flip_examples_carry_image_paths(tmp_path):
    data = write_small_folder(tmp_path / "photos", classes=3, per_class=4, size=16)
    model = positional_model(tmp_path / "m.pt")
    res = runner.invoke(app, ["eval", str(model), "--data", str(data), *POSITIONAL, "--json", str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    paths = rep["per_image"]["path"]
    assert len(paths) == len(rep["per_image"]["image_id"]) == 12
    assert sorted(paths) == sorted(f"class_{c}/img_{i}.png" for c in range(3) for i in range(4))
    assert all((data / p).is_file() for p in paths)
    examples = rep["metrics"]["flip_examples"]["examples"]
    assert examples, "the positional net must flip some correctly classified image"
    by_id = dict(zip(rep["per_image"]["image_id"], paths))
    assert all(ex["path"] == by_id[ex["image_id"]] for ex in examples)
    assert "reference" not in rep["metrics"]["flip_examples"]  # labelled: unchanged keys
