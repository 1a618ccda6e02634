from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.errors import UsageError
from shiftaudit.shifts.modes.circular import ShiftBank, roll_batch
from shiftaudit.shifts.sets import ShiftSet, canonical_offset, cyclic_radius, default_shift_set


def test_canonical_offset_and_radius():
    d = np.arange(-20, 21)
    c = canonical_offset(d, 8)
    assert np.all((c > -4) & (c <= 4))
    assert np.all(np.mod(c - d, 8) == 0)
    assert cyclic_radius(7, 8) == 1 and cyclic_radius(4, 8) == 4 and cyclic_radius(-12, 8) == 4


def test_window_is_deduplicated_modulo_size_and_ordered_by_radius():
    s = ShiftSet.window((32, 32), 16)
    assert len(s) == 32 * 32 and s.kind == "all"
    assert len({(int(a), int(b)) for a, b in zip(s.dh % 32, s.dw % 32)}) == 1024
    assert (s.dh[0], s.dw[0]) == (0, 0)
    assert np.all(np.diff(s.radius) >= 0)
    assert s.radii == list(range(17))
    w = ShiftSet.window((32, 32), 2)
    assert len(w) == 25 and w.kind == "window" and w.radius.max() == 2
    g = ShiftSet.window((224, 224), 16, 4)
    assert len(g) == 81 and g.kind == "grid"
    assert set(np.abs(g.dh).tolist()) == {0, 4, 8, 12, 16}
    assert g.radii == [0, 4, 8, 12, 16]  # only radii a shift of the set has: no r = 1..3 on a step-4 grid


def test_window_larger_than_small_image_wraps_once():
    s = ShiftSet.window((5, 5), 2)
    assert len(s) == 25 and s.kind == "all"


def test_bad_shift_arguments():
    with pytest.raises(UsageError):
        ShiftSet.window((32, 32), -1)
    with pytest.raises(UsageError):
        ShiftSet.window((32, 32), 4, 0)
    with pytest.raises(UsageError):
        ShiftSet.window((32, 32), 2, 3)


def test_default_shift_sets():
    assert len(default_shift_set((32, 32))) == 1024
    big = default_shift_set((224, 224))
    assert len(big) == 81 and big.max_shift == 16 and big.step == 4


def test_roll_batch_equals_torch_roll_for_shared_and_per_image_shifts():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 9)
    s = ShiftSet.window((7, 9), 4)
    dh, dw = torch.as_tensor(s.dh), torch.as_tensor(s.dw)
    out = roll_batch(x, dh, dw)
    for b in range(3):
        for k in range(len(s)):
            assert torch.equal(out[b, k], torch.roll(x[b], (int(dh[k]), int(dw[k])), (-2, -1)))
    per = torch.randint(-20, 20, (3, 4)), torch.randint(-20, 20, (3, 4))
    out2 = roll_batch(x, *per)
    for b in range(3):
        for k in range(4):
            assert torch.equal(out2[b, k], torch.roll(x[b], (int(per[0][b, k]), int(per[1][b, k])), (-2, -1)))


def test_shift_bank_gather_matches_eq4_definition():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    bank = ShiftBank(x)
    out = bank.gather(torch.tensor([1]), torch.tensor([1]), torch.tensor([-2]))[0, 0]
    for h in range(4):
        for w in range(5):  # Eq. 4: Shift(X)[h, w] = X[(h - dh) % H, (w - dw) % W]
            assert out[h, w] == x[1, 0, (h - 1) % 4, (w + 2) % 5]


def test_all_shifts_of_a_small_image_is_every_offset_once():
    s = ShiftSet.all_shifts((4, 6))
    assert len(s) == 24 and s.kind == "all"
    assert sorted(zip(s.dh.tolist(), s.dw.tolist())) == [(h, w) for h in (-1, 0, 1, 2) for w in (-2, -1, 0, 1, 2, 3)]
    assert s.describe() == "all 24 circular shifts of 4x6"


def test_from_offsets_canonicalises_deduplicates_and_adds_the_zero_shift():
    s = ShiftSet.from_offsets((8, 8), [(9, 0), (1, 0), (-7, 0), (0, -3), (3, 3)])
    assert list(zip(s.dh.tolist(), s.dw.tolist())) == [(0, 0), (1, 0), (0, -3), (3, 3)]  # 9, 1, -7 are one shift
    assert s.kind == "custom" and s.max_shift == 3 and s.radius.tolist() == [0, 1, 3, 3]
    crop = ShiftSet.from_offsets((8, 8), [(9, 0), (1, 0)], mode="crop")
    assert list(zip(crop.dh.tolist(), crop.dw.tolist())) == [(0, 0), (1, 0), (9, 0)] and crop.max_shift == 9
    sub = ShiftSet.from_offsets((8, 8), [(0.5, 0), (8.5, 0)], mode="subpixel")
    assert list(zip(sub.dh.tolist(), sub.dw.tolist())) == [(0.0, 0.0), (0.5, 0.0)] and sub.max_shift == 1
    with pytest.raises(UsageError, match="Fractional offsets need shift mode subpixel, not circular"):
        ShiftSet.from_offsets((8, 8), [(0.5, 0)])
    with pytest.raises(UsageError, match="Unknown shift mode 'diagonal'"):
        ShiftSet.from_offsets((8, 8), [(1, 0)], mode="diagonal")


def test_describe_names_mode_window_and_step():
    assert ShiftSet.window((32, 32), 2).describe() == "25 circular shifts in [-2, 2]^2"
    assert ShiftSet.window((224, 224), 8, 4).describe() == "25 circular shifts in [-8, 8]^2, step 4"
    assert ShiftSet.window((32, 32), 1, mode="crop").describe() == "9 crop shifts in [-1, 1]^2"
    assert ShiftSet.window((32, 32), 1, 0.5, mode="subpixel").describe() == "25 sub-pixel shifts in [-1, 1]^2, step 0.5"


@pytest.mark.parametrize(
    ("size", "margin"), [((224, 224), 16), ((65, 10), 16), ((64, 64), 8), ((32, 32), 4), ((7, 7), 1), ((8, 16), 2)]
)
def test_default_crop_margin(size, margin):
    from shiftaudit.shifts.modes.crop import default_crop_margin

    assert default_crop_margin(size) == margin


# -- mutation-testing survivors (docs/testing.md): exact expectations for from_offsets, all_shifts, crop margins ---------
def test_from_offsets_on_a_non_square_input_wraps_each_axis_by_its_own_size():
    s = ShiftSet.from_offsets((8, 12), [(5, 7), (-3, -5)])  # 5 = -3 mod 8 and 7 = -5 mod 12: one shift
    assert (s.dh.tolist(), s.dw.tolist()) == ([0, -3], [0, -5]) and s.radius.tolist() == [0, 5]


def test_from_offsets_adds_the_zero_shift_once_and_keeps_integer_offsets():
    with_zero = ShiftSet.from_offsets((8, 8), [(0, 0), (2, 3)])
    assert len(with_zero) == 2 and with_zero.zero_index == 0
    without = ShiftSet.from_offsets((8, 8), [(1, 2)])
    assert (without.dh.tolist(), without.dw.tolist()) == ([0, 1], [0, 2])
    assert without.dh.dtype == np.int64 and without.radius.dtype == np.int64 and not without.fractional
    assert without.step == 1 and without.max_shift == 2
    assert without.to_json() == {
        "mode": "circular",
        "kind": "custom",
        "image_size": [8, 8],
        "max_shift": 2,
        "step": 1,
        "count": 2,
        "padding": "circular (wrap-around)",
    }


def test_all_shifts_of_an_odd_size():
    s = ShiftSet.all_shifts((7, 7))
    assert len(s) == 49 and s.max_shift == 3 and s.step == 1 and s.kind == "all"


def test_default_crop_margin_is_a_whole_number_of_pixels():
    from shiftaudit.shifts.modes.crop import default_crop_margin

    margins = [default_crop_margin((n, n)) for n in (16, 40, 64, 65, 224)]
    assert margins == [2, 5, 8, 16, 16] and all(type(m) is int for m in margins)


def test_fractional_canonical_offsets_wrap_into_the_half_open_range():
    got = canonical_offset(np.array([3.5, 4.0, 4.5, 8.0, -0.5, -1e-12, 11.75]), 8)
    assert got.tolist() == [3.5, 4.0, -3.5, 0.0, -0.5, 0.0, 3.75]  # (-4, 4]; a hair below 0 rounds to 0, not 8


@pytest.mark.parametrize(
    "size, max_shift, step, count",
    [
        ((64, 64), 32, 1, 4096),
        ((65, 65), 16, 4, 81),
        ((33, 33), 16, 1, 1089),
    ],
)
def test_default_shift_set_switches_to_the_grid_above_64_px(size, max_shift, step, count):
    s = default_shift_set(size)
    assert (s.max_shift, s.step, len(s)) == (max_shift, step, count) and type(s.step) is int


@pytest.mark.parametrize("max_shift, step", [(4, 1), (6, 1), (8, 2), (20, 4), (40, 4)])
def test_default_step_for_a_given_max_shift_on_large_images(max_shift, step):
    s = default_shift_set((224, 224), max_shift)
    assert s.step == step and type(s.step) is int


def test_base_geometry_keeps_both_sides_and_refuses_crop_canvases():
    from types import SimpleNamespace

    from shiftaudit.errors import UsageError
    from shiftaudit.shifts.modes import get_shift_mode

    circular = get_shift_mode("circular")
    assert circular.geometry(SimpleNamespace(image_size=(8, 12)), None, None, None) == ((8, 12), 0)
    with pytest.raises(UsageError) as err:
        circular.geometry(SimpleNamespace(image_size=(40, 40), canvas_margin=4), None, None, None)
    assert str(err.value) == "The data was loaded as crop-mode canvases; audit it with shift_mode='crop', not 'circular'."


def test_shift_mode_registry_refuses_a_second_mode_under_a_taken_name_and_forgets_unregistered_ones():
    from shiftaudit.shifts.base import ShiftMode, register_shift_mode, shift_mode_names, unregister_shift_mode

    class Impostor(ShiftMode):
        name = "crop"

    class Extra(ShiftMode):
        name = "extra"

    with pytest.raises(ValueError, match="a shift mode named 'crop' is already registered"):
        register_shift_mode(Impostor())
    assert shift_mode_names() == ("circular", "crop", "subpixel")
    register_shift_mode(Extra())
    assert shift_mode_names() == ("circular", "crop", "subpixel", "extra")
    register_shift_mode(Extra())  # the same class again (a reloaded plug-in): accepted, still once
    assert shift_mode_names() == ("circular", "crop", "subpixel", "extra")
    unregister_shift_mode("extra")
    unregister_shift_mode("never-registered")  # nothing to forget: no error
    assert shift_mode_names() == ("circular", "crop", "subpixel")


def test_the_default_max_shift_is_half_the_image_up_to_64_pixels_then_16():
    from shiftaudit.shifts.base import get_shift_mode

    circular = get_shift_mode("circular")
    got = [circular.default_max_shift(size) for size in ((7, 5), (32, 32), (64, 10), (65, 65), (224, 224))]
    assert got == [3, 16, 32, 16, 16] and all(type(g) is int for g in got)


def test_a_max_shift_beyond_half_the_input_is_refused_with_the_input_size():
    from shiftaudit.shifts.base import get_shift_mode

    circular = get_shift_mode("circular")
    circular.check_max_shift(4, (8, 6))  # half of the longer side: allowed
    with pytest.raises(
        UsageError,
        match=r"^`max_shift` 5 is more than half the 8x6 input: every circular shift is "
        r"already within 4 px; use `max_shift` 4 or less\.$",
    ):
        circular.check_max_shift(5, (8, 6))
    get_shift_mode("crop").check_max_shift(50, (8, 6))  # a crop never wraps: no such limit


def test_fractional_offsets_take_the_float_path_and_stay_exact():
    # in (-n/2, n/2] for an odd size: 3.25 stays, 3.75 wraps (an integer rule, m > n // 2, would wrap both)
    assert canonical_offset(np.array([3.25, 3.75, -1e-12]), 7).tolist() == [3.25, -3.25, 0.0]
    assert canonical_offset(np.array([-1e-12]), 8).tolist() == [0.0]  # rounds up to the size itself: that is 0
    # the radius is rounded back to the offset grid: 1 - 0.9 is not 0.09999999999999998
    assert cyclic_radius(np.array([-0.1, 0.9, 2.5]), 1).tolist() == [0.1, 0.1, 0.5]
    assert canonical_offset(np.array([5, -5, 3]), 8).dtype == np.int64


@pytest.mark.parametrize(
    ("mode", "size", "max_shift", "step"),
    [
        ("circular", (8, 8), 3, 1),
        ("circular", (8, 6), 4, 1),
        ("circular", (32, 32), 16, 4),
        ("circular", (7, 5), 2, 2),
        ("crop", (8, 8), 3, 1),
        ("crop", (32, 32), 16, 4),
        ("subpixel", (8, 8), 1, 0.5),
        ("subpixel", (6, 4), 2, 0.25),
    ],
)
def test_the_count_checked_before_building_a_set_is_the_size_of_the_set(mode, size, max_shift, step):
    from shiftaudit.shifts.base import get_shift_mode

    assert get_shift_mode(mode).count(size[0], size[1], max_shift, step) == len(ShiftSet.window(size, max_shift, step, mode))


def test_window_edges_and_messages():
    assert len(ShiftSet.window((8, 8), 0)) == 1 and len(ShiftSet.window((8, 8), 0, 2)) == 1  # no shift: any step
    with pytest.raises(UsageError, match=r"^`max_shift` must be >= 0, got -1\.$"):
        ShiftSet.window((8, 8), -1)
    with pytest.raises(UsageError, match=r"^`shift_step` must be a finite number, got nan\.$"):
        ShiftSet.window((8, 8), 2, float("nan"))
    assert len(ShiftSet.window((8, 8), 2, 2)) == 9  # a step equal to the max shift: -2, 0, 2
    with pytest.raises(UsageError, match=r"^`shift_step` 2 is larger than `max_shift` 1: only the zero shift would remain\.$"):
        ShiftSet.window((8, 8), 1, 2)
