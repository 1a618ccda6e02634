"""Hugging Face datasets as --data, end to end: a save_to_disk folder and parquet files written by the test hold the
same images as an ImageFolder tree, and ``shiftaudit eval`` gives the same audit of them (metrics, per-image
predictions, the seeded --limit pick, the skipped-image count)."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch

from shiftaudit.data import load_data
from shiftaudit.data.presets import get_preset
from shiftaudit.errors import DataError, UsageError
from tests.helpers import assert_clean_error, assert_one_error_line, cli, run_measured, write_image_folder

datasets = pytest.importorskip("datasets")

DEMO = "shiftaudit/assets/demo.safetensors"
CLASSES = ["class_0", "class_1", "class_2"]
AUDIT = ("--max-shift", "1", "--limit", "7", "--seed", "3", "--workers", "0")


def _features(label: object = None) -> object:
    return datasets.Features({"img": datasets.Image(), "label": label or datasets.ClassLabel(names=CLASSES)})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same 10 images (one of them corrupt) as an ImageFolder, a saved dataset and a parquet folder, in one order."""
    root = tmp_path_factory.mktemp("hf")
    folder = write_image_folder(root / "folder", classes=3, per_class=3, size=20)
    (folder / "class_1" / "img_9.png").write_bytes(b"not a png at all")  # sorts last in class_1
    files = sorted(folder.glob("*/*.png"))
    rows = {
        "img": [{"bytes": f.read_bytes(), "path": None} for f in files],
        "label": [CLASSES.index(f.parent.name) for f in files],
    }
    ds = datasets.Dataset.from_dict(rows, features=_features())
    datasets.disable_progress_bars()
    ds.save_to_disk(str(root / "saved"))
    ds.to_parquet(str(root / "hub" / "data" / "test-00000-of-00001.parquet"))
    return {"folder": folder, "saved": root / "saved", "parquet": root / "hub", "root": root}


def _without_paths(metrics: dict) -> dict:
    """The metrics with the flip examples' image paths left out (a file path in one store, a row or key in another)."""
    out = json.loads(json.dumps(metrics))
    for example in out.get("flip_examples", {}).get("examples", []):
        example.pop("path", None)
    return out


def _eval(data: Path, out: Path, *extra: str) -> dict:
    res = cli("eval", DEMO, "--data", data, "--json", out, *AUDIT, *extra)
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def _skipped(report: dict) -> int:
    found = [int(m.group(1)) for n in report["notes"] if (m := re.search(r"(\d+) unreadable images? skipped", n))]
    return sum(found)


@pytest.fixture(scope="module")
def folder_report(stores):
    return _eval(stores["folder"], stores["root"] / "folder.json")


@pytest.mark.parametrize("store", ["saved", "parquet"])
def test_hf_dataset_audits_exactly_like_the_same_images_in_a_folder(stores, folder_report, store):
    report = _eval(stores[store], stores["root"] / f"{store}.json")
    assert report["data"]["kind"] == "hf"
    assert _without_paths(report["metrics"]) == _without_paths(folder_report["metrics"])
    mine, theirs = report["per_image"], folder_report["per_image"]
    assert set(mine) == set(theirs)
    for column in theirs:
        if column != "path":
            assert mine[column] == theirs[column], column
    # the same seeded pick of 7 of the 10: folder files and dataset rows name the same images
    files = sorted(p.relative_to(stores["folder"]).as_posix() for p in stores["folder"].glob("*/*.png"))
    assert [files[int(r.split()[1])] for r in mine["path"]] == theirs["path"]
    assert report["data"]["num_images"] == folder_report["data"]["num_images"] == 6  # 7 drawn, 1 unreadable
    assert _skipped(folder_report) == 1  # the corrupt image is in the pick ...
    assert _skipped(report) == 1  # ... and counted the same way


@pytest.mark.parametrize("store", ["saved", "parquet"])
def test_rows_read_the_same_in_a_decoding_worker(stores, store):
    """Workers get the dataset pickled: only paths travel, and each opens the files itself."""
    ds = load_data(stores[store], preprocessing=get_preset("cifar"))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.source._open is None
    for i in (0, 9):
        assert torch.equal(copy[i][0], ds[i][0]) and copy[i][1] == ds[i][1]


def test_strict_names_the_undecodable_row(stores):
    res = cli("eval", DEMO, "--data", stores["saved"], "--strict", "--json", stores["root"] / "strict.json", *AUDIT)
    assert_clean_error(res, "row 6", "not an image PIL can decode")


def test_classlabel_names_are_class_names_and_a_class_map_maps_them(stores):
    prep = get_preset("cifar")
    plain = load_data(stores["saved"], preprocessing=prep)
    assert plain.classes == CLASSES and plain.labels == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    mapped = load_data(stores["saved"], preprocessing=prep, class_map={"class_0": 7, "class_1": 2, "class_2": 0})
    assert mapped.labels == [7, 7, 7, 2, 2, 2, 2, 0, 0, 0]
    assert mapped.classes == ["class_2", "1", "class_1", "3", "4", "5", "6", "class_0"]
    with pytest.raises(DataError, match=r"1 of the classes of .* are not in the class map: class_2"):
        load_data(stores["saved"], preprocessing=prep, class_map={"class_0": 0, "class_1": 1})


def test_a_missing_class_in_the_class_map_is_one_sentence(stores, tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"class_0": 0, "class_1": 1}))
    res = cli("eval", DEMO, "--data", stores["parquet"], "--class-map", mapping, *AUDIT)
    assert_clean_error(res, "class_2", "not in the class map")


def test_named_columns_and_unlabelled_rows(stores, tmp_path):
    files = sorted(stores["folder"].glob("class_0/*.png"))
    rows = {
        "thumb": [{"bytes": b"x", "path": None}] * 3,
        "photo": [{"bytes": f.read_bytes(), "path": None} for f in files],
        "y": [2, None, 1],
    }
    features = datasets.Features({"thumb": datasets.Image(), "photo": datasets.Image(), "y": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "two"))
    prep = get_preset("cifar")
    ds = load_data(tmp_path / "two", preprocessing=prep, image_column="photo", label_column="y")
    assert ds.labels == [2, 1] and ds.classes is None and ds.image_path(1) == "row 2"
    assert any("1 row skipped: row 1 (no label in column 'y')" in n for n in ds.notes)
    assert float(ds[0][0].abs().sum()) > 0  # the photo, not the broken thumbnail
    unlabelled = load_data(tmp_path / "two", preprocessing=prep, image_column="photo")
    assert unlabelled.labels is None and not unlabelled.has_labels
    with pytest.raises(DataError, match=r"Cannot use row row 1: no label in column 'y'"):
        load_data(tmp_path / "two", preprocessing=prep, image_column="photo", label_column="y", strict=True)
    res = cli("eval", DEMO, "--data", tmp_path / "two", "--image-column", "picture", *AUDIT)
    assert_clean_error(res, "no column 'picture'", "--image-column", "photo (Image)")


def test_column_flags_need_a_hugging_face_dataset(stores):
    res = cli("eval", DEMO, "--data", stores["folder"], "--label-column", "label", *AUDIT)
    assert_clean_error(res, "--label-column", "imagefolder")


def test_a_dataset_dict_asks_for_one_split(stores, tmp_path):
    whole = datasets.load_from_disk(str(stores["saved"]))
    datasets.DatasetDict({"test": whole, "train": whole}).save_to_disk(str(tmp_path / "dict"))
    res = cli("eval", DEMO, "--data", tmp_path / "dict", *AUDIT)
    assert_clean_error(res, "holds the splits test, train", str(tmp_path / "dict" / "test"))


def test_without_the_extra_one_sentence_says_what_to_install(stores, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'shiftaudit\[hf\]'"):
        load_data(stores["saved"], preprocessing=get_preset("cifar"))


# -- declared sizes: a footer or an arrow header that claims more than the file holds -----------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _i64_field(value: int) -> bytes:
    """A thrift compact-protocol i64 field one id after the previous one (header 0x16), as parquet footers write
    ``num_rows``, ``num_values`` and the column chunk sizes."""
    return b"\x16" + _varint((value << 1) ^ (value >> 63))


def _patch_footer(src: Path, dest: Path, old: int, new: int, count: int | None = None) -> Path:
    """``src`` with the footer's i64 fields equal to ``old`` set to ``new`` (the first ``count`` of them)."""
    import struct

    data = src.read_bytes()
    n = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - n : -8]
    assert footer.count(_i64_field(old)) >= (count or 1)
    footer = footer.replace(_i64_field(old), _i64_field(new), count if count is not None else -1)
    dest.write_bytes(data[: -8 - n] + footer + struct.pack("<I", len(footer)) + b"PAR1")
    return dest


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, stores):
    """Parquet files of a few KB whose footers lie, each made from a real 300-row file."""
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("hostile")
    png = (stores["folder"] / "class_0" / "img_0.png").read_bytes()
    rows = {"img": [{"bytes": png, "path": None}] * 300, "label": [0] * 300}
    real = root / "real.parquet"
    datasets.Dataset.from_dict(rows, features=_features()).to_parquet(str(real))
    chunk = pq.ParquetFile(real).metadata.row_group(0).column(0)
    assert chunk.path_in_schema == "img.bytes"  # the first column chunk; its uncompressed size comes before the rest
    return {
        "rows": (
            _patch_footer(real, root / "rows.parquet", 300, 3_000_000_000),
            ("is too large", "it declares 3,000,000,000 rows, more than the 10,000,000 allowed in one file"),
        ),
        "count": (
            _patch_footer(real, root / "count.parquet", 300, 301, count=1),
            ("is damaged", "its row groups hold 300 rows, its footer says 301"),
        ),
        "unpacked": (
            _patch_footer(real, root / "unpacked.parquet", chunk.total_uncompressed_size, 8 << 30, count=1),
            ("is too large", "row group 0 of column 'img.bytes' is 8.0 GiB uncompressed"),
        ),
        "past_end": (
            _patch_footer(real, root / "past_end.parquet", chunk.total_compressed_size, 1 << 30),
            ("is damaged", "row group 0 declares 1,073,741,824 bytes of column 'img.bytes'", "past the end"),
        ),
    }


@pytest.mark.parametrize("case", ["rows", "count", "unpacked", "past_end"])
def test_parquet_footers_are_checked_against_the_file_before_any_row_is_read(hostile, case, tmp_path):
    path, needles = hostile[case]
    out = tmp_path / "r.json"
    res = cli("eval", DEMO, "--data", path, *AUDIT, "--json", out)
    assert_clean_error(res, f"Parquet file {path}", *needles)
    assert not out.exists()


def _saved_with_length(stores, dest: Path, rows: int) -> Path:
    """The saved dataset with every arrow length of 10 (the record batch and its columns) set to ``rows``: its
    memory-mapped buffers stay 10 rows long."""
    import shutil

    shutil.copytree(stores["saved"], dest)
    arrow = next(dest.glob("*.arrow"))
    data = arrow.read_bytes()
    ten = (10).to_bytes(8, "little")
    assert data.count(ten) >= 3
    arrow.write_bytes(data.replace(ten, rows.to_bytes(8, "little")))
    return dest


def test_a_saved_dataset_declaring_billions_of_rows_is_refused(stores, tmp_path):
    saved = _saved_with_length(stores, tmp_path / "saved", 3_000_000_000)
    assert_clean_error(
        cli("eval", DEMO, "--data", saved, *AUDIT), f"The saved dataset {saved} is too large", "3,000,000,000 rows"
    )


@pytest.mark.slow
def test_a_saved_dataset_longer_than_its_buffers_is_refused_not_read_past_its_end(stores, tmp_path):
    """Read past the end of its memory map, it was a bus error (exit -7, no message): a real process, so that a
    regression cannot kill the test run."""
    saved = _saved_with_length(stores, tmp_path / "saved", 1000)
    code, stderr, startups, peak = run_measured("eval", DEMO, "--data", saved, *AUDIT)
    assert code == 2, stderr
    assert_one_error_line(stderr, f"The saved dataset {saved} is damaged", "too small")
    assert startups < 4 and peak < 1 << 30, (startups, peak)  # time in start-ups of the CLI itself


def test_a_parquet_folder_holding_a_file_and_a_link_to_it_is_refused(stores, tmp_path):
    """Each row would be audited twice, and the twice-counted rows would narrow every interval as if they were new."""
    import shutil

    hub = tmp_path / "hub"
    shutil.copytree(stores["parquet"], hub)
    real = next(hub.rglob("*.parquet"))
    (real.parent / "zz-copy.parquet").symlink_to(real.name)
    assert_clean_error(
        cli("eval", DEMO, "--data", hub, *AUDIT), f"--data {hub} holds", real.name, "zz-copy.parquet", "one parquet file"
    )
