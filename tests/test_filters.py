from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shiftaudit.antialias.filters import (
    FilterInfo,
    canonical_filter_name,
    filter_2d,
    filter_names,
    get_filter,
    get_filter_info,
    list_filters,
)
from shiftaudit.errors import UsageError

TABLE1_ORDER = [
    "delta",
    "rect2",
    "rect3",
    "rect4",
    "rect5",
    "rect6",
    "rect7",
    "tri3",
    "tri5",
    "tri7",
    "binomial2",
    "binomial3",
    "binomial4",
    "binomial5",
    "binomial6",
    "binomial7",
    "window3",
    "window6",
    "window7",
    "lsq3",
    "lsq7",
]


def test_every_table1_filter_in_order():
    assert filter_names() == TABLE1_ORDER
    assert [f.name for f in list_filters()] == TABLE1_ORDER
    assert all(isinstance(f, FilterInfo) and f.taps == len(f.weights) == len(f.normalized) for f in list_filters())


@pytest.mark.parametrize(
    "name, printed",
    [
        ("delta", (1,)),
        ("rect2", (1, 1)),
        ("rect7", (1,) * 7),
        ("tri3", (1, 2, 1)),
        ("tri7", (1, 2, 3, 4, 3, 2, 1)),
        ("binomial4", (1, 3, 3, 1)),
        ("binomial5", (1, 4, 6, 4, 1)),
        ("binomial7", (1, 6, 15, 20, 15, 6, 1)),
        ("window3", (1, 1.57, 1)),
        ("window6", (-1, 1.67, 5, 5, 1.67, -1)),
        ("window7", (-1, 0, 3, 4.71, 3, 0, -1)),
        ("lsq3", (1, 1.63, 1)),
        ("lsq7", (-1, 0, 3.80, 6.13, 3.80, 0, -1)),
    ],
)
def test_table1_weights_exact(name, printed):
    info = get_filter_info(name)
    assert info.weights == tuple(float(w) for w in printed)
    total = math.fsum(printed)
    assert info.normalized == pytest.approx([w / total for w in printed], abs=1e-15)
    assert info.source.startswith("Table 1")


def test_normalised_values_spelled_out():
    assert get_filter("binomial5", dtype=torch.float64).tolist() == [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16]
    assert get_filter("tri3", dtype=torch.float64).tolist() == [0.25, 0.5, 0.25]
    assert get_filter("rect2", dtype=torch.float64).tolist() == [0.5, 0.5]
    assert get_filter("delta").tolist() == [1.0]


def test_binomial_and_triangle_are_repeated_box_filters():
    """App. E.1: binomial-k is [1, 1] convolved with itself k-1 times; triangle-(2n-1) is rect-n convolved with itself."""
    for k in range(2, 8):
        b = np.array([1.0])
        for _ in range(k - 1):
            b = np.convolve(b, [1.0, 1.0])
        assert get_filter_info(f"binomial{k}").weights == tuple(b)
    for n, tri in ((2, "tri3"), (3, "tri5"), (4, "tri7")):
        assert get_filter_info(tri).weights == tuple(np.convolve(np.ones(n), np.ones(n)))


@pytest.mark.parametrize("info", list_filters(), ids=lambda f: f.name)
def test_sum_one_symmetric_and_real(info):
    assert math.fsum(info.normalized) == pytest.approx(1.0, abs=1e-12)
    assert info.normalized == tuple(reversed(info.normalized))
    f = get_filter(info.name)
    assert f.dtype == torch.float32 and f.shape == (info.taps,)
    assert float(f.sum()) == pytest.approx(1.0, abs=1e-6)


def test_nyquist_gain():
    for f in list_filters():
        if f.family == "binomial" or f.taps % 2 == 0:  # binomials and every even symmetric filter null pi
            assert f.nyquist_gain == pytest.approx(0.0, abs=1e-12), f.name
    assert get_filter_info("delta").nyquist_gain == 1.0
    assert get_filter_info("rect3").nyquist_gain == pytest.approx(1 / 3)
    assert get_filter_info("tri5").nyquist_gain == pytest.approx(1 / 9)
    assert get_filter_info("window7").nyquist_gain == pytest.approx(0.71 / 8.71)
    assert get_filter_info("lsq3").nyquist_gain == pytest.approx(0.37 / 3.63)
    # every filter attenuates the highest frequency (the point of Table 1)
    assert all(f.nyquist_gain < 0.35 for f in list_filters() if f.name != "delta")


@pytest.mark.parametrize("name", TABLE1_ORDER)
def test_2d_is_outer_product(name):
    f = get_filter(name, dtype=torch.float64)
    k2 = filter_2d(name, dtype=torch.float64)
    assert k2.shape == (f.numel(), f.numel())
    assert torch.allclose(k2, torch.outer(f, f), atol=1e-15)
    assert float(k2.sum()) == pytest.approx(1.0, abs=1e-12)
    assert filter_2d(name).dtype == torch.float32 and filter_2d(name, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("binomial-5", "binomial5"),
        ("bin5", "binomial5"),
        ("Bin-5", "binomial5"),
        ("BINOMIAL_5", "binomial5"),
        ("pascal4", "binomial4"),
        ("triangle3", "tri3"),
        ("Tri-7", "tri7"),
        ("rect-2", "rect2"),
        ("box2", "rect2"),
        ("rectangle 4", "rect4"),
        ("lsq-7", "lsq7"),
        ("least-squares-3", "lsq3"),
        ("window-3", "window3"),
        ("win6", "window6"),
        ("none", "delta"),
        ("1", "delta"),
        ("Delta", "delta"),
        ("binomial1", "delta"),
    ],
)
def test_aliases(alias, canonical):
    assert canonical_filter_name(alias) == canonical
    assert get_filter_info(alias).name == canonical


@pytest.mark.parametrize(
    "bad, suggestion", [("bnomial5", "binomial5"), ("rect8", "rect"), ("triangel3", "tri3"), ("lsq5", "lsq")]
)
def test_unknown_name_suggests_close_ones(bad, suggestion):
    with pytest.raises(UsageError) as e:
        get_filter(bad)
    msg = str(e.value)
    assert bad in msg and suggestion in msg
    assert msg.count(".") <= 1 or msg.endswith("?")  # one sentence


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UsageError, match="delta, rect2"):
        canonical_filter_name("gaussian")
    with pytest.raises(UsageError):
        canonical_filter_name(None)  # type: ignore[arg-type]  # not silently "none" -> delta


def test_cli_lists_every_filter():
    from shiftaudit.cli import app

    res = CliRunner().invoke(app, ["filters"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in TABLE1_ORDER:
        assert name in res.output
