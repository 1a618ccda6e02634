"""WebDataset tar shards as --data, end to end: shards written by the test hold the same images as an ImageFolder
tree (plus a sample without a label and one with a '..' path), and ``shiftaudit eval`` gives the same audit of them.
Also the brace patterns, the by-shard torchrun split, and what the shard reader refuses."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftaudit.data import load_data
from shiftaudit.data.presets import get_preset
from shiftaudit.data.webdataset_shards import expand_braces
from shiftaudit.engine.distributed import rank_indices
from shiftaudit.errors import DataError, UsageError
from tests.helpers import assert_clean_error, assert_one_error_line, cli, run_measured, write_image_folder

DEMO = "shiftaudit/assets/demo.safetensors"
AUDIT = ("--max-shift", "1", "--limit", "7", "--seed", "3", "--workers", "0")


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """10 images (one corrupt) as an ImageFolder and as 3 shards of 4, 4 and 2 samples, in the same order."""
    root = tmp_path_factory.mktemp("wds")
    folder = write_image_folder(root / "folder", classes=3, per_class=3, size=20)
    (folder / "class_1" / "img_9.png").write_bytes(b"not a png at all")
    files = sorted(folder.glob("*/*.png"))
    samples = [(f"{f.parent.name}/{f.stem}", f.read_bytes(), f.parent.name.encode()) for f in files]
    shards = root / "shards"
    shards.mkdir()
    for s, part in enumerate([samples[:4], samples[4:8], samples[8:]]):
        members = [m for key, img, cls in part for m in ((f"{key}.png", img), (f"{key}.cls", cls))]
        if s == 1:
            members += [("extra/no_label.png", files[0].read_bytes()), ("../outside.png", files[0].read_bytes())]
        write_shard(shards / f"val-{s:03d}.tar", members)
    return {"folder": folder, "shards": shards, "root": root, "files": files}


def _without_paths(metrics: dict) -> dict:
    """The metrics with the flip examples' image paths left out (a file path in one store, a row or key in another)."""
    out = json.loads(json.dumps(metrics))
    for example in out.get("flip_examples", {}).get("examples", []):
        example.pop("path", None)
    return out


def _eval(data: object, out: Path, *extra: str) -> dict:
    res = cli("eval", DEMO, "--data", data, "--json", out, *AUDIT, *extra)
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def _count(report: dict, pattern: str) -> int:
    return sum(int(m.group(1)) for n in report["notes"] if (m := re.search(pattern, n)))


def test_shards_audit_exactly_like_the_same_images_in_a_folder(stores):
    folder = _eval(stores["folder"], stores["root"] / "folder.json")
    pattern = str(stores["shards"] / "val-{000..002}.tar")
    report = _eval(pattern, stores["root"] / "shards.json")
    assert report["data"]["kind"] == "webdataset"
    assert _without_paths(report["metrics"]) == _without_paths(folder["metrics"])
    mine, theirs = report["per_image"], folder["per_image"]
    for column in theirs:
        if column != "path":
            assert mine[column] == theirs[column], column
    assert [p.split(":", 1)[1] + ".png" for p in mine["path"]] == theirs["path"]  # the same seeded pick, by name
    assert mine["path"][0].startswith("val-000.tar:")
    assert report["data"]["num_images"] == folder["data"]["num_images"] == 6  # 7 drawn, 1 unreadable
    assert _count(folder, r"(\d+) unreadable images? skipped") == _count(report, r"(\d+) unreadable images? skipped") == 1
    skipped = [n for n in report["notes"] if "samples skipped" in n]
    assert skipped == [
        "2 samples skipped: val-001.tar:../outside (../outside.png: an absolute or '..' member path (a crafted archive?)), "
        "val-001.tar:extra/no_label (no .cls label)"
    ]
    assert not (stores["root"] / "outside.png").exists()


def test_a_folder_of_shards_is_the_same_shard_set(stores):
    prep = get_preset("cifar")
    by_folder = load_data(stores["shards"], preprocessing=prep)
    by_pattern = load_data(str(stores["shards"] / "val-{000..002}.tar"), preprocessing=prep)
    assert by_folder.kind == by_pattern.kind == "webdataset"
    assert [by_folder.image_path(i) for i in range(len(by_folder))] == [by_pattern.image_path(i) for i in range(10)]
    assert by_folder.classes == ["class_0", "class_1", "class_2"]
    assert by_folder.labels == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert by_folder.source.files == [str(p) for p in sorted(stores["shards"].glob("*.tar"))]  # what --resume checks


def test_strict_refuses_the_skipped_sample_and_names_it(stores):
    res = cli("eval", DEMO, "--data", stores["shards"], "--strict", *AUDIT)
    assert_clean_error(res, "val-001.tar:../outside", "absolute or '..' member path")


def test_class_map_maps_the_label_names(stores, tmp_path):
    prep = get_preset("cifar")
    ds = load_data(stores["shards"], preprocessing=prep, class_map=["x", "class_2", "class_0", "class_1"])
    assert ds.labels == [2, 2, 2, 3, 3, 3, 3, 1, 1, 1]
    assert ds.classes == ["x", "class_2", "class_0", "class_1"]
    with pytest.raises(DataError, match="not in the class map: class_1"):
        load_data(stores["shards"], preprocessing=prep, class_map=["class_0", "class_2"])


def test_integer_labels_unlabelled_shards_and_the_split_by_shard(tmp_path, stores):
    png = stores["files"][0].read_bytes()
    write_shard(tmp_path / "a.tar", [("k0.jpg", png), ("k0.cls", b"4"), ("k1.png", png), ("k1.cls", b" 2\n")])
    write_shard(tmp_path / "b.tar", [("k2.png", png), ("k2.cls", b"0"), ("k2.json", b"{}")])
    write_shard(tmp_path / "c.tar", [("k3.png", png), ("k3.cls", b"1"), ("k4.png", png), ("k4.cls", b"1")])
    prep = get_preset("cifar")
    ds = load_data(str(tmp_path / "{a,b,c}.tar"), preprocessing=prep)
    assert ds.labels == [4, 2, 0, 1, 1] and ds.classes is None
    assert ds.shard_ids().tolist() == [0, 0, 1, 2, 2]
    for world in (1, 2, 3, 4):
        parts = [rank_indices(ds, rank, world) for rank in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(5))  # disjoint, and every image once
        for rank, part in enumerate(parts):
            assert all(s % world == rank for s in ds.shard_ids()[part])  # whole shards: shard s to rank s mod world
    assert rank_indices(ds, 1, 2).tolist() == [2]
    picked = load_data(str(tmp_path / "{a,b,c}.tar"), preprocessing=prep, limit=3, seed=0)
    ids = picked.shard_ids()
    assert sorted(np.concatenate([rank_indices(picked, r, 2) for r in range(2)]).tolist()) == [0, 1, 2]
    assert [picked.image_path(int(i)) for i in rank_indices(picked, 0, 2)] == [
        picked.image_path(i) for i in range(3) if ids[i] % 2 == 0
    ]
    with pytest.raises(UsageError, match="class indices already"):
        load_data(tmp_path / "a.tar", preprocessing=prep, class_map=["x"])
    write_shard(tmp_path / "plain.tar", [("p0.png", png), ("p1.png", png)])
    plain = load_data(tmp_path / "plain.tar", preprocessing=prep)
    assert plain.labels is None and len(plain) == 2


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("train-{000..002}.tar") == ["train-000.tar", "train-001.tar", "train-002.tar"]
    assert expand_braces("s{8..10}.tar") == ["s8.tar", "s9.tar", "s10.tar"]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_braces("one.tar") == ["one.tar"]
    with pytest.raises(DataError, match="runs backwards"):
        expand_braces("x-{5..1}.tar")
    with pytest.raises(DataError, match="Unbalanced braces"):
        expand_braces("x-{000..002.tar")
    with pytest.raises(DataError, match="more than the 100,000 allowed"):
        expand_braces("x-{0..999999}.tar")


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: p.write_bytes(gzip.compress(b"x" * 600)), ("gzip-compressed", "decompress them first")),
        (lambda p: p.write_bytes(b"\0" * 100), ("is not a tar file",)),
        (lambda p: None, ("does not exist",)),
    ],
    ids=["gzip", "not-tar", "missing"],
)
def test_bad_shards_are_one_sentence(tmp_path, make, needles):
    make(tmp_path / "s-001.tar")
    res = cli("eval", DEMO, "--data", str(tmp_path / "s-{001..001}.tar"), *AUDIT)
    assert_clean_error(res, *needles)


def test_a_shard_named_twice_is_refused_before_any_image_is_read(stores, tmp_path):
    """'{000,000}' and a folder holding a shard and a link to it would audit each image twice: the doubled count
    narrows every interval as if the copies were new images. Refused in one sentence naming --data and the shard."""
    shard = stores["shards"] / "val-000.tar"
    res = cli("eval", DEMO, "--data", str(stores["shards"] / "val-{000,001,000}.tar"), *AUDIT)
    assert_clean_error(res, "--data", "val-000.tar twice", "name each shard once")
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "a.tar").symlink_to(shard)
    (folder / "b.tar").symlink_to(shard)
    res = cli("eval", DEMO, "--data", str(folder), *AUDIT)
    assert_clean_error(res, "--data", "a.tar and", "b.tar, which are one file")
    with pytest.raises(DataError, match="twice"):  # the library refuses it the same way
        load_data(str(stores["shards"] / "val-{001,001}.tar"), preprocessing=get_preset("cifar"))
    once = load_data(str(stores["shards"] / "val-{000,001}.tar"), preprocessing=get_preset("cifar"))
    assert len(once) == 8  # two different shards of 4 samples each (one of them skipped, one extra): as before


def _header(name: str, size: int, kind: bytes) -> bytes:
    """One tar header block declaring ``size`` bytes (base-256, as GNU tar writes sizes of 8 GiB and more)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT)[: tarfile.BLOCKSIZE])
    block[124:136] = b"\x80\0\0\0" + size.to_bytes(8, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _hostile_shards(folder: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Shards of a few KB whose extension headers declare what tarfile would read whole into memory, or chain
    into a recursion: each after one good sample, so the shard opens fine."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, "PNG")
    good = write_shard(folder / "good.tar", [("000000.png", png.getvalue()), ("000000.cls", b"0")]).read_bytes()
    good = good[: 4 * tarfile.BLOCKSIZE]  # two members of one header and one data block each, no end-of-archive
    big = 8 << 30
    pad = b"\0" * 2048
    long_name = b"".join(_header("././@LongLink", 100, tarfile.GNUTYPE_LONGNAME) + b"a" * 99 + b"\0" * 413 for _ in range(5000))
    cases = {
        "pax.tar": (
            good + _header("pax", big, tarfile.XHDTYPE) + pad,
            ("is damaged", "a pax header at byte 2,048 declares 8,589,934,592 bytes, but only 2,048 follow it"),
        ),
        "longname.tar": (
            good + _header("././@LongLink", big, tarfile.GNUTYPE_LONGNAME) + pad,
            ("is damaged", "a GNU long-name header at byte 2,048 declares 8,589,934,592 bytes"),
        ),
        "bigpax.tar": (
            good + _header("pax", 2 << 20, tarfile.XHDTYPE) + b"\0" * (2 << 20) + pad,
            ("is too large", "declares 2,097,152 bytes, more than the 1,048,576 allowed"),
        ),
        "chain.tar": (good + long_name + pad, ("is damaged", "more than 64 extension headers in a row")),
    }
    out = []
    for name, (data, needles) in cases.items():
        (folder / name).write_bytes(data)
        out.append((folder / name, needles))
    return out


def test_tar_headers_declaring_more_than_the_shard_holds_are_refused(tmp_path):
    """A pax header or GNU long name is read whole by tarfile (its declared size allocated first); thousands of
    them chained recurse. Each shard is refused in one sentence naming it, exit 2, no report."""
    out = tmp_path / "r.json"
    for shard, needles in _hostile_shards(tmp_path):
        res = cli("eval", DEMO, "--data", shard, *AUDIT, "--json", out)
        assert_clean_error(res, f"Shard {shard}", *needles)
        assert not out.exists()


@pytest.mark.slow
def test_an_8_gib_tar_header_ends_in_seconds_and_little_memory_in_a_real_process(tmp_path):
    """Under a 4 GiB address-space limit, tarfile's read of the declared 8 GiB was a MemoryError ("out of memory")."""
    shard = _hostile_shards(tmp_path)[0][0]
    code, stderr, startups, peak = run_measured("eval", DEMO, "--data", shard, *AUDIT)
    assert code == 2
    assert_one_error_line(stderr, f"Shard {shard} is damaged")
    assert startups < 4 and peak < 1 << 30, (startups, peak)  # time in start-ups of the CLI itself


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_by_shard_gives_the_single_process_json(stores, tmp_path):
    """Two gloo processes, each reading only its own shards (0 and 2, or 1), merge into the one-process report,
    skipped samples and the unreadable image included."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None)
    args = [
        "-m",
        "shiftaudit",
        "eval",
        str(Path(DEMO).resolve()),
        "--data",
        str(stores["shards"]),
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    one = subprocess.run(
        [sys.executable, *args, "--json", "one.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args, "--json", "two.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a == b
    assert a["data"]["num_images"] == 9 and _count(a, r"(\d+) unreadable images? skipped") == 1
