"""Class maps (shiftaudit/data/classes.py): values and Keras-style keys are whole class indices within the classes,
or one sentence; through the CLI, and never opening a FIFO."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shiftaudit.data import read_class_map
from shiftaudit.errors import DataError
from tests.helpers import (
    assert_clean_error,
    cli,
    env_eval_args,
    hypothesis_settings,
    nothing_written,
)

MANY = hypothesis_settings(60)  # each example is a function call

JSON_SCALARS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)


@MANY
@given(values=st.lists(JSON_SCALARS, min_size=1, max_size=4), num_classes=st.one_of(st.none(), st.integers(1, 10)))
def test_class_map_values_are_whole_indices_within_the_classes_or_one_sentence(values, num_classes):
    """Accepted exactly when every value is a JSON integer in range; anything else (true, 0.9, 1.0, 1e20, NaN, a
    string, a huge integer) is one sentence, never truncated, allocated or an internal error."""
    obj = {f"class_{i}": v for i, v in enumerate(values)}
    if all(type(v) is int and 0 <= v < (num_classes or 1_000_000) for v in values):
        assert read_class_map(obj, num_classes)[0] == obj
    else:
        with pytest.raises(DataError) as exc:
            read_class_map(obj, num_classes)
        assert "\n" not in str(exc.value) and len(str(exc.value)) < 300


@MANY
@given(
    keys=st.lists(st.one_of(st.integers(-5, 10**25).map(str), st.text(max_size=6)), min_size=1, max_size=4, unique=True),
    num_classes=st.integers(1, 10),
)
def test_keras_class_index_keys_are_whole_indices_within_the_classes_or_one_sentence(keys, num_classes):
    obj = {k: [f"wnid{i}", f"name{i}"] for i, k in enumerate(keys)}
    if all(k.isascii() and k.isdigit() and int(k) < num_classes for k in keys):
        assert read_class_map(obj, num_classes)[0] == {f"wnid{i}": int(k) for i, k in enumerate(keys)}
    else:
        with pytest.raises(DataError):
            read_class_map(obj, num_classes)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"class_0": 0, "class_1": 1e20, "class_2": 2}', "1e+20, not a whole class index"),
        ('{"class_0": 0, "class_1": 0.9, "class_2": 2}', "0.9, not a whole class index"),
        ('{"class_0": 0, "class_1": true, "class_2": 2}', "true, not a whole class index"),
        ('{"class_0": 0, "class_1": 1e400, "class_2": 2}', "too large for a double"),
        ('{"class_0": 0, "class_1": 100000000000000, "class_2": 2}', "outside 0..2 (the model's 3 classes)"),
        ('{"0": ["class_0"], "1": ["class_1"], "99999999999999999999": ["class_2"]}', "not a whole class index"),
        ('{"class_0": NaN}', "NaN, which is not a JSON number"),
    ],
)
def test_class_map_values_through_the_cli(tiny_env, tmp_path, text, needle):
    cmap = tmp_path / "map.json"
    cmap.write_text(text)
    res = cli(*env_eval_args(tiny_env, "--class-map", cmap, "--json", tmp_path / "r.json"))
    assert_clean_error(res, needle)
    assert nothing_written(tmp_path / "r.json")


@pytest.mark.timeout(60)
def test_class_map_fifo_is_refused_without_blocking(tiny_env, tmp_path):
    fifo = tmp_path / "map.json"
    os.mkfifo(fifo)
    assert_clean_error(cli(*env_eval_args(tiny_env, "--class-map", fifo)), "not a regular file")


def test_a_digit_string_is_an_index_only_as_a_key_of_the_imagenet_style_map():
    """Found by the property test above: {"folder": "0"} was taken as index 0; only {"0": ["wnid", "name"]} keys are."""
    assert read_class_map({"0": ["n01440764", "tench"]}, None)[0] == {"n01440764": 0}
    with pytest.raises(DataError, match=r"Class map entry 'cat' is \"0\", not a whole class index"):
        read_class_map({"cat": "0"}, None)
