"""The report pictures: right pixel size, real content, skipped cleanly when their metric is absent."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from shiftaudit.cli import app
from shiftaudit.engine.runner import audit
from shiftaudit.metrics import FlipExamples
from shiftaudit.report import figures
from shiftaudit.report.outputs import write_report_dir
from shiftaudit.report.terminal import PADDING
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import (
    POSITIONAL,
    assert_real_png,
    positional_model,
    runner,
    synthetic_result,
    write_images,
)


def test_each_picture_has_its_size_and_content(tmp_path):
    r = synthetic_result()
    cases = [
        (figures.plot_adversarial_curve(r, tmp_path / "a.png"), figures.ADVERSARIAL_SIZE),
        (figures.plot_variation_distribution(r, tmp_path / "v.png"), figures.VARIATION_SIZE),
        (figures.plot_accuracy_map(r, tmp_path / "m.png"), figures.ACCURACY_MAP_SIZE),
        (figures.plot_flip_examples(r, tmp_path / "f.png"), figures.flip_examples_size(2, with_images=False)),
    ]
    for path, size in cases:
        assert path is not None
        assert_real_png(path, figures.figure_pixels(size))
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_several_runs_share_one_axis(tmp_path):
    runs = [("baseline", synthetic_result()), ("patched", synthetic_result(shift=-0.05)), ("other", synthetic_result(shift=0.1))]
    path = figures.plot_adversarial_curve(runs, tmp_path / "a.png")
    assert path is not None
    assert_real_png(path, figures.figure_pixels(figures.ADVERSARIAL_SIZE))
    assert_real_png(figures.plot_variation_distribution(runs, tmp_path / "v.png"))  # type: ignore[arg-type]


def test_pictures_skip_cleanly_without_their_metric(tmp_path):
    sampled = synthetic_result()
    for key in ("variation", "adversarial", "accuracy_map", "flip_examples"):
        del sampled.metrics[key]
    sampled.per_image.pop("variation")
    assert figures.plot_adversarial_curve(sampled, tmp_path / "a.png") is None
    assert figures.plot_variation_distribution(sampled, tmp_path / "v.png") is None
    assert figures.plot_accuracy_map(sampled, tmp_path / "m.png") is None
    assert figures.plot_flip_examples(sampled, tmp_path / "f.png") is None
    written = write_report_dir(sampled, tmp_path / "out")
    assert sorted(p.name for p in written) == ["report.html", "report.json"]
    assert not list(tmp_path.glob("*.png"))


class _Images:
    """Just enough of a dataset to draw the flip examples: indexable (image, label), class names, no preprocessing."""

    classes = ["ring", "bar", "dot"]
    preprocessing = None

    def __getitem__(self, i: int):
        g = torch.linspace(0, 1, 8)
        return torch.stack([g[:, None] * g[None, :] * (c + 1) / 3 for c in range(3)]) + 0.1 * i, i % 3


def test_flip_examples_draw_the_images_when_the_data_is_given(tmp_path):
    r = synthetic_result()
    path = figures.plot_flip_examples(r, tmp_path / "f.png", dataset=_Images())
    assert path is not None
    assert_real_png(path, figures.figure_pixels(figures.flip_examples_size(2, with_images=True)))


def test_flip_metric_keeps_the_earliest_failures_and_stays_bounded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()  # position-dependent: shifts flip it
    spread = torch.linspace(0.2, 3.0, 24).view(-1, 1, 1, 1)
    images = torch.randn(24, 3, 1, 1) + spread * torch.randn(24, 3, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)  # every image right at zero shift: any failure is a flip
    labels[7] = (labels[7] + 1) % 3  # one image wrong as given: never an example
    r = audit(model, (images, labels), max_shift=2, device="cpu", batch_size=100)  # 4 images per batch: truncated across updates
    flips = r.metrics["flip_examples"]
    first = r.per_image["first_failure_radius"]
    failing = sorted((f, i) for i, f in enumerate(first) if f is not None and f > 0)
    assert failing, "the tiny model should flip some image"
    got = [(ex["first_failure_radius"], ex["image_id"]) for ex in flips["examples"]]
    assert got == failing[:4]
    for ex in flips["examples"]:
        grid = np.array(ex["p_correct"], dtype=float)
        assert grid.shape == (5, 5) and np.all((grid >= 0) & (grid <= 1))
        assert grid[2, 2] > 1 / 3  # zero shift at the centre, where the top class (of 3) is the right one
        assert max(abs(ex["flip_shift"][0]), abs(ex["flip_shift"][1])) == ex["first_failure_radius"]


def test_flip_metric_merges_and_bounds_state():
    ss = ShiftSet.window((40, 40), 20)  # 1600 shifts: more than the stored window
    a, b = FlipExamples(ss, limit=2), FlipExamples(ss, limit=2)
    assert len(a.stored) <= 1089
    a.load_state_dict(
        {
            "ids": np.array([5, 1]),
            "label": np.array([0, 0]),
            "radius": np.array([2, 3]),
            "flip_shift": np.array([1, 2]),
            "flip_pred": np.array([1, 1]),
            "p_correct": np.zeros((2, len(a.stored)), np.float32),
        }
    )
    b.load_state_dict(
        {
            "ids": np.array([9]),
            "label": np.array([0]),
            "radius": np.array([1]),
            "flip_shift": np.array([3]),
            "flip_pred": np.array([1]),
            "p_correct": np.zeros((1, len(b.stored)), np.float32),
        }
    )
    a.merge(copy.deepcopy(b))
    assert list(a.ids) == [9, 5] and a.p_correct.shape[0] == 2


def test_report_dir_writes_every_picture_and_the_page(tmp_path):
    written = {p.name for p in write_report_dir(synthetic_result(), tmp_path)}
    assert written == {"report.json", "report.html", "adversarial.png", "variation.png", "accuracy_map.png", "flips.png"}


def test_real_sampled_runs_give_a_page_without_pictures_and_unlabelled_runs_the_label_free_ones(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    images = torch.randn(6, 3, 8, 8)
    sampled = audit(model, (images, torch.zeros(6, dtype=torch.long)), max_shift=2, mode="sampled", device="cpu")
    unlabelled = audit(model, images, max_shift=2, device="cpu")
    for i, r in enumerate((sampled, unlabelled)):
        written = write_report_dir(r, tmp_path / str(i))
        # issue 14: without labels, the pictures that need none (flip examples against the zero-shift prediction)
        pictures = ["consistency.png", "flips.png"] if r is unlabelled else []
        assert sorted(p.name for p in written) == [*pictures, "report.html", "report.json"]
        assert "Consistency" in (tmp_path / str(i) / "report.html").read_text(encoding="utf-8")


class _Canvases:
    """Crop-mode data: 12x12 canvases around the 8x8 inputs (margin 2), with a labelled position gradient."""

    classes = ["ant", "bee", "cat"]
    preprocessing = None

    def __getitem__(self, i: int):
        g = torch.arange(12.0)
        return torch.stack([g[:, None] * 12 + g[None, :]] * 3) / 143.0, i % 3


def test_crop_and_subpixel_flip_examples_show_their_own_shift_and_never_say_circular(tmp_path):
    from shiftaudit.report.html import render_html

    for mode, word in (("crop", "crop shift"), ("subpixel", "sub-pixel shift")):
        r = synthetic_result()
        r.settings["shift_mode"] = r.settings["shifts"]["mode"] = mode
        r.settings["shifts"]["padding"] = PADDING[mode]
        shift = [1, -2] if mode == "crop" else [0, 0.5]
        flips = r.metrics["flip_examples"]
        r.metrics["flip_examples"] = replace(flips, examples=[replace(ex, flip_shift=shift) for ex in flips.examples])
        pic = figures.plot_flip_examples(r, tmp_path / mode / "flips.png", dataset=_Canvases() if mode == "crop" else _Images())
        assert pic is not None
        page = render_html(r, [pic])
        assert "circular" not in page.lower() and f"a small {word}" in page
    crop = synthetic_result()
    crop.settings["shift_mode"] = "crop"
    canvas = _Canvases()[0][0].permute(1, 2, 0).numpy()
    plain, shifted = figures._as_shown(canvas, 1, -2, crop)
    assert np.array_equal(plain, canvas[2:10, 2:10]) and np.array_equal(shifted, canvas[1:9, 4:12])  # offset (R-dh, R-dw)


def test_adversarial_curve_marks_only_the_evaluated_radii(tmp_path, monkeypatch):
    """A step-4 grid has no radius 1-3: ticks at the evaluated radii, a dotted guide between them (not a solid line
    that reads as measured values); a full window keeps the solid line."""
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault(str(path), fig.axes[0]) and path)
    grid = synthetic_result()
    adv = grid.metrics["adversarial"]
    grid.metrics["adversarial"] = replace(
        adv, radius=[0, 4, 8], accuracy=adv.accuracy[:3], ci_low=adv.ci_low[:3], ci_high=adv.ci_high[:3]
    )
    figures.plot_adversarial_curve(grid, tmp_path / "grid.png")
    figures.plot_adversarial_curve(synthetic_result(), tmp_path / "window.png")
    ax = drawn[str(tmp_path / "grid.png")]
    assert list(ax.get_xticks()) == [0, 4, 8] and list(ax.lines[0].get_xdata()) == [0, 4, 8]
    assert ax.lines[0].get_linestyle() == ":" and drawn[str(tmp_path / "window.png")].lines[0].get_linestyle() == "-"


def test_every_picture_says_shiftaudit_drew_it_and_nothing_else_passes_for_one(tmp_path):
    """What a reused report folder may remove (issue 24): only a PNG whose Software text is shiftaudit's."""
    import os

    from PIL import Image, PngImagePlugin

    from shiftaudit.report.heatmaps import plot_layer_heatmaps
    from shiftaudit.report.outputs import drawn_by_shiftaudit

    pictures = [p for p in write_report_dir(synthetic_result(), tmp_path / "r") if p.suffix == ".png"]
    layer = {"name": "conv", "resolution": [4, 4], "equivariance": {"map": [[0.1] * 3] * 3}, "reference_distance": 0.5}
    pictures.append(plot_layer_heatmaps({"dh": [-1, 0, 1], "dw": [-1, 0, 1], "layers": [layer]}, tmp_path / "layers.png"))
    assert len(pictures) == 5 and all(drawn_by_shiftaudit(p) for p in pictures)
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "shiftaudit 0.9 (not quite)")
    Image.new("RGB", (4, 4)).save(tmp_path / "other.png", pnginfo=info)
    (tmp_path / "cut.png").write_bytes(pictures[0].read_bytes()[:40])
    (tmp_path / "text.png").write_text("Software\0shiftaudit")
    os.symlink(pictures[0], tmp_path / "link.png")
    os.mkfifo(tmp_path / "fifo.png")  # read without blocking, or the test would hang
    for name in ("plain.png", "other.png", "cut.png", "text.png", "link.png", "fifo.png", "missing.png"):
        assert not drawn_by_shiftaudit(tmp_path / name), name


def test_names_are_drawn_as_written_never_parsed_as_tex_or_sent_raw(tmp_path, monkeypatch):
    """Class, file and run names are the user's: a ``$`` is a dollar sign (``cat$x^{$`` was TeX to parse and failed
    the whole report) and a control character is shown as its escape, as in every other output."""
    nasty = "cat$x^{$\x1b"
    shown: list[str] = []
    save = figures._save

    def collect(fig, path):
        shown.extend(t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", collect)
    r = synthetic_result()
    flips = r.metrics["flip_examples"]
    r.metrics["flip_examples"] = replace(flips, examples=[replace(ex, path=f"/data/{nasty}.png") for ex in flips.examples])
    images = _Images()
    images.classes = [nasty, "bar", "dot"]
    runs = [(nasty, r), ("patched", synthetic_result(shift=-0.05))]
    assert figures.plot_flip_examples(r, tmp_path / "f.png", dataset=images) is not None
    assert figures.plot_adversarial_curve(runs, tmp_path / "a.png") is not None
    text = "\n".join(shown)
    assert "cat$x^{$\\x1b.png" in text and "cat$x^{$\\x1b" in text.replace(".png", ""), text
    assert "\x1b" not in text
    assert_real_png(tmp_path / "f.png")
    assert_real_png(tmp_path / "a.png")


def test_unlabelled_run_gets_flip_examples_and_a_consistency_histogram(tmp_path):
    write_images(tmp_path / "photos", 6, size=16)
    model = positional_model(tmp_path / "m.pt")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(model), "--data", str(tmp_path / "photos"), *POSITIONAL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["labelled"] is False and "accuracy" not in rep["metrics"]
    flips = rep["metrics"]["flip_examples"]
    assert flips["reference"] == "zero-shift prediction" and flips["examples"]
    zero = (flips["dh"].index(0), flips["dw"].index(0))
    for ex in flips["examples"]:
        assert ex["path"].startswith("img_") and ex["p_correct"][zero[0]][zero[1]] == 1.0  # agrees with itself unshifted
        fh, fw = ex["flip_shift"]
        assert ex["p_correct"][flips["dh"].index(fh)][flips["dw"].index(fw)] == 0.0 and ex["flip_prediction"] != ex["label"]
    assert_real_png(out / "flips.png")
    assert_real_png(out / "consistency.png")
    assert "same prediction" in (out / "report.html").read_text()
