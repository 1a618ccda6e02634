"""Shift modes: circular (Eq. 4), crop (the published ImageNet protocol) and sub-pixel (Fourier phase shifts)."""

from __future__ import annotations

import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.data import load_data
from shiftaudit.data.presets import Preprocessing
from shiftaudit.engine.runner import audit
from shiftaudit.errors import UsageError
from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve
from shiftaudit.report.terminal import audit_table, describe_run
from shiftaudit.result import AuditResult
from shiftaudit.shifts.modes import (
    CropBank,
    FourierBank,
    fourier_shift,
    published_crop_shifts,
)
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import tiny_cnn

runner = CliRunner()


def coordinate_canvas(h: int, w: int, channels: int = 2) -> torch.Tensor:
    """A canvas whose pixel (i, j) holds 1000 i + j (plus 0.5 c in channel c): every crop says where it came from."""
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.stack([1000 * i + j + 0.5 * c for c in range(channels)])


# -- crop mode ------------------------------------------------------------------------------------------------------


def test_crop_offsets_by_hand_published_imagenet_geometry():
    """Resize 256 / crop 224 with R = 16: shift (dh, dw) is canvas[:, R-dh : R-dh+224, R-dw : R-dw+224]."""
    size, r = 224, 16
    canvas = coordinate_canvas(size + 2 * r, size + 2 * r)
    bank = CropBank(canvas[None], (size, size))
    for dh, dw in [(0, 0), (16, 16), (-16, -16), (-15, 16), (3, -7), (1, 0)]:
        got = bank.gather(torch.tensor([0]), torch.tensor([dh]), torch.tensor([dw]))[0]
        want = canvas[:, r - dh : r - dh + size, r - dw : r - dw + size]
        assert torch.equal(got, want)
        assert got[0, 0, 0].item() == 1000 * (r - dh) + (r - dw)  # top-left pixel = the crop offset
    zero = bank.gather(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))[0]
    down = bank.gather(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))[0]
    assert torch.equal(down[:, 1:], zero[:, :-1])  # positive dh moves content down, like torch.roll ...
    assert not torch.equal(down[:, 0], zero[:, -1])  # ... but new content enters at the border: nothing wraps


def test_published_consistency_offsets_are_0_to_31():
    """Zhang's validate_shift draws crops at np.random.randint(32) of a Resize(256)+CenterCrop(256) canvas."""
    s = published_crop_shifts()
    assert s.mode == "crop" and len(s) == 32 * 32 and (s.dh[0], s.dw[0]) == (0, 0)
    offsets = {(16 - int(a), 16 - int(b)) for a, b in zip(s.dh, s.dw)}
    assert offsets == set(product(range(32), range(32)))
    # the symmetric window of --max-shift 16 covers offsets 0..32 (the 33 positions of the published diagonal test)
    w = ShiftSet.window((224, 224), 16, 1, mode="crop")
    assert {16 - int(a) for a in w.dh} == set(range(33)) and len(w) == 33 * 33


def test_crop_sets_do_not_wrap():
    s = ShiftSet.window((8, 8), 4, 1, mode="crop")
    assert len(s) == 81 and s.radius.max() == 4  # +4 and -4 are different crops (circularly they are one shift)
    assert ShiftSet.window((8, 8), 4).__len__() == 64


class Recorder(nn.Module):
    """Records every input batch and classifies by a fixed linear read-out."""

    def __init__(self, channels: int, h: int, w: int, classes: int = 3) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.head = nn.Linear(channels * h * w, classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.head(x.flatten(1) * 1e-4)


def test_engine_feeds_the_model_exactly_the_canvas_crops():
    r, size = 3, 6
    canvases = torch.stack([coordinate_canvas(size + 2 * r, size + 2 * r, 3) + 100000 * k for k in range(2)])
    model = Recorder(3, size, size)
    shifts = ShiftSet.window((size, size), r, 1, mode="crop")
    res = audit(
        model, (canvases, torch.tensor([0, 1])), shifts=shifts, shift_mode="crop", device="cpu", mode="exhaustive", batch_size=17
    )
    seen = torch.cat(model.seen).view(2, len(shifts), 3, size, size)  # exhaustive: image-major, slot s = shift s
    for k in range(2):
        for s in range(len(shifts)):
            dh, dw = int(shifts.dh[s]), int(shifts.dw[s])
            assert torch.equal(seen[k, s], canvases[k, :, r - dh : r - dh + size, r - dw : r - dw + size])
    assert res.settings["shift_mode"] == "crop" and res.settings["shifts"]["mode"] == "crop"
    assert res.data["image_size"] == [size, size]


def test_canvas_loading_centre_crop_is_the_circular_input(tmp_path):
    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        Image.fromarray(rng.integers(0, 255, (30, 34, 3), dtype=np.uint8)).save(tmp_path / f"c{c}" / "a.png")
    prep = Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=24)
    plain = load_data(tmp_path, preprocessing=prep)
    canv = load_data(tmp_path, preprocessing=prep, canvas_margin=4)
    assert canv.image_size == (24, 24) and canv.canvas_margin == 4 and plain.canvas_margin is None
    x0, _ = plain[0]
    c0, _ = canv[0]
    assert torch.allclose(c0[:, 4:20, 4:20], x0, atol=1e-6)  # zero shift = centre crop = the usual input
    assert any("canvases" in n for n in canv.notes)


# -- sub-pixel mode -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(8, 10), (7, 9), (12, 12)])
def test_subpixel_integer_shift_is_the_circular_roll(h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w)
    for dh, dw in [(1, 0), (0, -1), (3, -2), (h // 2, w // 2), (-5, 7)]:
        got = fourier_shift(x, float(dh), float(dw))
        assert torch.allclose(got, torch.roll(x, (dh, dw), (-2, -1)), atol=1e-5)
    bank = FourierBank(x)
    got = bank.gather(
        torch.tensor([1, 0]), torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64)
    )
    assert torch.allclose(got[0], torch.roll(x[1], (2, 1), (-2, -1)), atol=1e-5)
    assert torch.allclose(got[1], torch.roll(x[0], (-1, 4), (-2, -1)), atol=1e-5)


def test_subpixel_half_pixel_shift_of_a_band_limited_signal_is_exact():
    h, w = 16, 12

    def f(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:  # frequencies below Nyquist: exactly band-limited
        return (
            torch.cos(2 * math.pi * 2 * i / h + 0.3)
            + torch.sin(2 * math.pi * 3 * j / w)
            + 0.5 * torch.cos(2 * math.pi * (i / h + 2 * j / w) - 1.0)
        )

    i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    x = f(i, j)[None, None].float()
    for dh, dw in [(0.5, 0.0), (0.0, -0.5), (0.5, -0.25), (1.75, 0.5)]:
        got = fourier_shift(x, dh, dw)[0, 0].double()
        assert torch.allclose(got, f(i - dh, j - dw), atol=1e-5)


def test_subpixel_shift_sets_hold_fractional_offsets():
    s = ShiftSet.window((8, 8), 1, 0.5, mode="subpixel")
    assert len(s) == 25 and s.fractional and s.radius.dtype == np.float64
    assert s.radii == [0, 0.5, 1] and (s.dh[0], s.dw[0]) == (0.0, 0.0)
    q = ShiftSet.window((8, 8), 1, 0.25, mode="subpixel")
    assert len(q) == 81 and set(np.abs(q.dh).tolist()) == {0, 0.25, 0.5, 0.75, 1.0}
    j = s.to_json()
    assert j["mode"] == "subpixel" and j["step"] == 0.5 and "Fourier" in j["padding"]
    with pytest.raises(UsageError):
        ShiftSet.window((8, 8), 2, 0.5)  # fractional steps need subpixel mode
    with pytest.raises(UsageError):
        audit(tiny_cnn(), torch.randn(2, 3, 8, 8), shift_mode="warp", device="cpu")


# -- every metric in every mode ---------------------------------------------------------------------------------


def _data(n: int = 6, side: int = 12, margin: int = 0):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, spatial_head=True, size=side).eval()
    x = torch.randn(n, 3, side + 2 * margin, side + 2 * margin)
    with torch.no_grad():
        y = model(x[:, :, margin : margin + side, margin : margin + side]).argmax(1)
    y[::3] = (y[::3] + 1) % 4
    return model, x, y


@pytest.mark.parametrize(
    "shift_mode,kwargs,margin",
    [
        ("circular", dict(max_shift=2), 0),
        ("crop", dict(max_shift=2), 2),
        ("subpixel", dict(max_shift=1, shift_step=0.5), 0),
    ],
)
def test_metrics_end_to_end_in_each_mode(shift_mode, kwargs, margin):
    model, x, y = _data(margin=margin)
    res = audit(model, (x, y), shift_mode=shift_mode, device="cpu", mode="exhaustive", **kwargs)
    m = res.metrics
    for key in ("accuracy", "consistency", "variation", "adversarial", "accuracy_map", "flip_rate", "mac", "flip_examples"):
        assert key in m, key
    assert res.settings["shift_mode"] == shift_mode and res.settings["shifts"]["mode"] == shift_mode
    assert res.settings["engine"] == "dense" or shift_mode == "circular"
    assert res.data["image_size"] == [12, 12]
    adv = m["adversarial"]
    assert adv["accuracy"][0] == pytest.approx(m["accuracy"]["none"]["value"])
    assert all(a >= b for a, b in zip(adv["accuracy"], adv["accuracy"][1:]))
    if shift_mode == "subpixel":
        assert adv["radius"] == [0, 0.5, 1] and 0.5 in m["accuracy_map"]["dh"] and len(m["accuracy_map"]["dh"]) == 5
    else:
        assert adv["radius"] == [0, 1, 2] and m["accuracy_map"]["dh"] == [-2, -1, 0, 1, 2]
    # 1-px neighbour pairs inside the 5x5 window (no wrap at 12 px): 2 x 5 x 4; sub-pixel offsets -1..1 step 0.5:
    # three 1-px pairs per row and column, 2 x 5 x 3
    assert m["flip_rate"]["pairs_per_image"] == (30 if shift_mode == "subpixel" else 40)
    assert 0.0 <= m["flip_rate"]["mean"] <= 1.0
    text = json.dumps(res.to_json(), allow_nan=False)  # clean JSON: no NaN, no numpy types
    back = AuditResult.from_json(json.loads(text))
    assert back.settings["shift_mode"] == shift_mode
    title = describe_run(back)
    noun, padding = {
        "circular": ("circular shifts", "wrap-around"),
        "crop": ("crop shifts", "new content enters"),
        "subpixel": ("sub-pixel shifts", "Fourier"),
    }[shift_mode]
    assert noun in title and padding in title  # every report names its shift mode and its padding
    audit_table(back, title=title)  # renders with fractional radii too
    assert set(back.adversarial_curve) == set(adv["radius"])


def test_crop_and_subpixel_audits_change_with_the_mode():
    """A circular-padded net is exactly invariant to circular shifts only: crop shifts bring new content in."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    x = torch.randn(8, 3, 16, 16)
    circ = audit(model, x, max_shift=2, device="cpu", mode="exhaustive", polyphase=False)
    crop = audit(model, x, max_shift=2, shift_mode="crop", device="cpu", mode="exhaustive")
    assert circ.metrics["consistency"]["exact"]["value"] == pytest.approx(1.0)
    assert crop.data["image_size"] == [12, 12]
    assert any("taken as canvases" in n for n in crop.notes)
    assert crop.metrics["mac"]["mean"] > 0


def test_polyphase_and_early_exit_only_in_circular_mode():
    model, x, y = _data(side=8)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    ).eval()
    every = ShiftSet.window((8, 8), 4)
    circ = audit(model, (x, y), shifts=every, device="cpu", polyphase=True, early_exit=False)
    assert circ.settings["engine"] == "polyphase"  # the control: this model and set do use it in circular mode
    sub = audit(model, (x, y), shift_mode="subpixel", max_shift=4, shift_step=1, device="cpu", polyphase=True)
    assert sub.settings["engine"] == "dense" and any("circular shifts only" in n for n in sub.notes)
    ee_metrics = lambda s: [AdversarialCurve(s), AccuracyAtZeroShift()]  # noqa: E731
    small = ShiftSet.window((8, 8), 2)
    assert audit(model, (x, y), shifts=small, device="cpu", metrics=ee_metrics(small)).settings["engine"] == "early-exit"
    model2, xc, yc = _data(side=8, margin=2)
    crop_set = ShiftSet.window((8, 8), 2, 1, mode="crop")
    r = audit(model2, (xc, yc), shifts=crop_set, shift_mode="crop", device="cpu", early_exit=True, metrics=ee_metrics(crop_set))
    assert r.settings["engine"] == "dense" and r.timing["forward_rows"] == len(xc) * len(crop_set)
    with pytest.raises(UsageError):
        audit(model, (x, y), shift_mode="crop", max_shift=2, device="cpu", layers="auto")


# -- CLI ------------------------------------------------------------------------------------------------------------


def _image_folder(root: Path, side: int = 30) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (side, side + 4, 3), dtype=np.uint8)).save(d / f"img_{i}.png")
    return root


@pytest.mark.slow
def test_cli_eval_crop_mode_and_compare_refuses_mixed_modes(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)

    torch.save(resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    ckpt = tmp_path / "r18.pt"
    data = _image_folder(tmp_path / "val")
    common = [
        "eval",
        str(ckpt),
        "--arch",
        "resnet18",
        "--data",
        str(data),
        "--size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-shift",
        "4",
    ]
    crop_json, circ_json = tmp_path / "crop.json", tmp_path / "circ.json"
    res = runner.invoke(app, common + ["--shift-mode", "crop", "--json", str(crop_json)])
    assert res.exit_code == 0, res.output
    title = " ".join(res.output.split())  # the table title (wrapped by rich)
    assert "crop shifts" in title and "new content enters at the border" in title
    rep = json.loads(crop_json.read_text())
    assert rep["settings"]["shift_mode"] == "crop" and rep["settings"]["shifts"]["count"] == 81
    assert rep["data"]["image_size"] == [16, 16] and rep["data"]["preprocessing"]["size"] == [24, 24]
    assert rep["settings"]["engine"] == "dense"
    res = runner.invoke(app, common + ["--json", str(circ_json), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(circ_json), str(crop_json)])
    assert res.exit_code == 2 and "shift mode" in res.output
    res = runner.invoke(app, common + ["--shift-mode", "subpixel", "--shift-step", "0.5", "--max-shift", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, common + ["--shift-step", "0.5"])
    assert res.exit_code == 2 and "subpixel" in res.output
