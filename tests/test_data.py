"""Data loading on real small files written here: folders, CIFAR pickles, tensor files, preprocessing, errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shiftaudit.data import AuditDataset, detect_kind, load_data, make_loader
from shiftaudit.data.cifar import RestrictedUnpickler, restricted_load
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError, UsageError
from tests.helpers import (
    assert_clean_error,
    cli,
    env_eval_args,
    files_eval_args,
    folder_with_corrupt_images,
    nothing_written,
    run_ok,
    small_image_folder,
    write_image_folder,
    write_images,
)

PREP = Preprocessing(size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="test")


def png(path: Path, value: tuple[int, ...] | int = (10, 20, 30), size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, n in classes.items():
        for i in range(n):
            png(root / name / f"{i}.png", (i * 10, 50, 100))
    return root


def all_items(ds: AuditDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(make_loader(ds, batch_size=4, num_workers=0))
    return tuple(torch.cat(parts) for parts in zip(*batches))  # type: ignore[return-value]


# -- folders ------------------------------------------------------------------------------------------------------


def test_image_folder_labels_follow_sorted_folder_names(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"cat": 2, "ant": 3, "dog": 1})
    ds = load_data(root, preprocessing=PREP)
    assert detect_kind(root) == "imagefolder" and ds.kind == "imagefolder"
    assert ds.classes == ["ant", "cat", "dog"] and ds.has_labels
    assert ds.labels == [0, 0, 0, 1, 1, 2]
    assert ds.description == f"ImageFolder {root}: 6 images, 3 classes"
    x, y, idx = all_items(ds)
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == ds.labels and idx.tolist() == list(range(6))
    assert ds.image_size == (8, 8) and ds.channels == 3 and ds.preprocessing == PREP


def test_class_map_remaps_and_unknown_folder_is_an_error(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"n02": 1, "n01": 2})
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"n01": 7, "n02": 3}))
    ds = load_data(root, preprocessing=PREP, class_map=cmap)
    assert ds.labels == [7, 7, 3]
    assert ds.classes is not None and ds.classes[7] == "n01" and ds.classes[3] == "n02"
    # the Keras/ImageNet index file format works too
    keras = {"3": ["n02", "goldfish"], "7": ["n01", "tench"]}
    assert load_data(root, preprocessing=PREP, class_map=keras).labels == [7, 7, 3]
    with pytest.raises(DataError, match="not in the class map: n02"):
        load_data(root, preprocessing=PREP, class_map={"n01": 0})


def test_keras_index_names_the_classes(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"n02": 1, "n01": 2})
    ds = load_data(root, preprocessing=PREP, class_map={"3": ["n02", "goldfish"], "7": ["n01", "tench"]})
    assert ds.classes is not None and ds.classes[7] == "tench" and ds.classes[3] == "goldfish"  # what figures show


def test_builtin_imagenet_class_map_takes_wordnet_ids_and_names(tmp_path: Path) -> None:
    from shiftaudit.data.imagenet import imagenet_classes

    index = imagenet_classes()
    assert len(index) == 1000 and index[0] == ("n01440764", "tench") and index[281] == ("n02123045", "tabby")
    assert index[134][1] != index[517][1]  # the two "crane" synsets keep distinct names
    wnids = image_folder(tmp_path / "a", {"n02123045": 1, "n01530575": 2})
    ds = load_data(wnids, preprocessing=PREP, class_map="imagenet", num_classes=1000)
    assert ds.labels == [10, 10, 281] and ds.classes is not None and ds.classes[281] == "tabby" and len(ds.classes) == 1000
    names = image_folder(tmp_path / "b", {"tabby": 1, "great_white_shark": 1, "brambling": 1})
    assert load_data(names, preprocessing=PREP, class_map="imagenet").labels == [10, 2, 281]
    with pytest.raises(DataError, match="not in the class map: cats"):
        load_data(image_folder(tmp_path / "c", {"cats": 1}), preprocessing=PREP, class_map="imagenet")


def test_imagenet_folders_without_a_class_map_are_refused_for_a_1000_class_model(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"n02123045": 1, "n01530575": 1})
    with pytest.raises(DataError, match=r"WordNet ids \(n01530575, n02123045\).*pass --class-map imagenet\.$"):
        load_data(root, preprocessing=PREP, num_classes=1000)
    names = image_folder(tmp_path / "names", {"tabby": 1, "goldfish": 1})
    with pytest.raises(DataError, match="ImageNet class names"):
        load_data(names, preprocessing=PREP, num_classes=1000)
    assert load_data(root, preprocessing=PREP, num_classes=10).labels == [0, 1]  # not an ImageNet model: no claim
    # folders whose sorted positions already are the ImageNet indices (the first classes) need no map
    first = image_folder(tmp_path / "first", {"n01440764": 1, "n01443537": 1})
    assert load_data(first, preprocessing=PREP, num_classes=1000).labels == [0, 1]


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / "imgs" / f"{i}.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    ds = load_data(tmp_path / "imgs", preprocessing=PREP)
    assert detect_kind(tmp_path / "imgs") == "folder" and ds.kind == "folder"
    assert not ds.has_labels and ds.labels is None and len(ds) == 3
    _, y, _ = all_items(ds)
    assert y.tolist() == [-1, -1, -1]


def test_a_data_kind_registered_from_outside_is_detected_listed_and_loaded(tmp_path):
    """A kind is one DataKind subclass and one registration: auto-detection asks it in its rank, load_data builds
    its dataset (labels checked, --limit applied) as for the built-in kinds, and the kind names list it."""
    from shiftaudit.data import DataKind, data_kind_names, register_data_kind, unregister_data_kind
    from shiftaudit.data.dataset import TensorSource
    from shiftaudit.data.kinds import Loaded

    class Gray(DataKind):
        name = "gray"
        detect_rank = 5  # asked before the built-in kinds
        needs_preprocessing = False

        def recognises(self, path, skipped):
            return path.suffix == ".gray"

        def load(self, path, request):
            n = int(path.read_text())
            images = TensorSource(torch.full((n, 1, 4, 4), 0.5), channels_last=False, raw=False, scale=None)
            return Loaded(images, f"{n} gray images", None, labels=list(range(n)), image_size=(4, 4), channels=1)

    path = tmp_path / "x.gray"
    path.write_text("3")
    register_data_kind(Gray())
    try:
        assert detect_kind(path) == "gray" and data_kind_names()[-1] == "gray"
        ds = load_data(path, limit=2, seed=0)
        assert ds.kind == "gray" and len(ds) == 2 and ds.image_size == (4, 4) and ds.channels == 1
        assert ds.description == "3 gray images (random subset of 2 of 3, seed 0)"
        with pytest.raises(DataError, match="Labels go up to 2 but the model has 2 classes"):
            load_data(path, num_classes=2)
    finally:
        unregister_data_kind("gray")
    assert "gray" not in data_kind_names()


def test_loose_images_next_to_class_folders_are_ignored_with_a_note(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"a": 1, "b": 1})
    png(root / "stray.png")
    ds = load_data(root, preprocessing=PREP)
    assert len(ds) == 2 and any("loose image" in n for n in ds.notes)


def test_grayscale_and_rgba_are_converted_with_a_note(tmp_path: Path) -> None:
    png(tmp_path / "f" / "gray.png", 128, mode="L")
    png(tmp_path / "f" / "rgba.png", (10, 20, 30, 40), mode="RGBA")
    png(tmp_path / "f" / "rgb.png", (10, 20, 30))
    ds = load_data(tmp_path / "f", preprocessing=PREP)
    x, _, _ = all_items(ds)
    assert x.shape == (3, 3, 8, 8)
    assert any("converted 2 images" in n for n in ds.notes), ds.notes
    gray = x[0]  # gray.png sorts first: every channel holds the same value
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    # a one-channel model gets grayscale
    one = Preprocessing(size=(8, 8), mean=(0.5,), std=(0.5,))
    assert load_data(tmp_path / "f", preprocessing=one)[2][0].shape == (1, 8, 8)


def test_corrupt_image_is_skipped_and_counted_or_raises_when_strict(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"a": 2, "b": 2})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = load_data(root, preprocessing=PREP)
    assert len(ds) == 5
    x, y, idx = all_items(ds)
    assert len(idx) == 4 and torch.isfinite(x).all()
    assert any(n.startswith("1 unreadable image skipped: broken.png") for n in ds.notes), ds.notes
    assert torch.isnan(ds[2][0]).all()  # read directly: an all-NaN image the engine leaves out
    strict = load_data(root, preprocessing=PREP, strict=True)
    with pytest.raises(DataError, match="Cannot read image .*broken.png"):
        all_items(strict)
    with pytest.raises(DataError, match="broken.png"):
        strict[2]


def test_loader_with_a_worker_process_reports_back(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"a": 3})
    png(root / "a" / "gray.png", 5, mode="L")
    (root / "a" / "zz.png").write_bytes(b"junk")
    ds = load_data(root, preprocessing=PREP)
    loader = make_loader(ds, batch_size=2, num_workers=1)
    ids = torch.cat([b[2] for b in loader])
    assert len(ids) == 4
    assert any("converted 1 image" in n for n in ds.notes) and any("unreadable" in n for n in ds.notes)


def test_limit_is_a_reproducible_seeded_subset_in_order(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {"a": 6, "b": 6})
    a = load_data(root, preprocessing=PREP, limit=5, seed=1)
    b = load_data(root, preprocessing=PREP, limit=5, seed=1)
    c = load_data(root, preprocessing=PREP, limit=5, seed=2)
    assert len(a) == 5 and a.index.tolist() == b.index.tolist() and a.index.tolist() != c.index.tolist()
    assert a.index.tolist() == sorted(a.index.tolist())
    assert a.labels == [0 if i < 6 else 1 for i in a.index]
    assert "random subset of 5 of 12" in a.description
    assert len(load_data(root, preprocessing=PREP, limit=50)) == 12


# -- preprocessing ----------------------------------------------------------------------------------------------


def test_constant_image_normalises_exactly(tmp_path: Path) -> None:
    png(tmp_path / "f" / "c.png", (200, 100, 0), size=(8, 8))
    x = load_data(tmp_path / "f", preprocessing=PREP)[0][0]
    expect = torch.tensor([(v / 255 - 0.5) / 0.25 for v in (200, 100, 0)]).view(3, 1, 1).expand(3, 8, 8)
    assert torch.allclose(x, expect, atol=1e-6)


def test_resize_then_centre_crop(tmp_path: Path) -> None:
    # a 40x20 (W x H) image: left half black, right half white; resize shorter side to 10 -> 20x10, crop 8x8
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    Image.fromarray(arr).save(tmp_path / "img.png")
    prep = Preprocessing(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resize=10)
    x = load_data(tmp_path / "img.png", preprocessing=prep)[0][0]
    assert x.shape == (3, 8, 8)
    assert x[:, :, :2].max() < 0.05 and x[:, :, -2:].min() > 0.95  # the crop straddles the edge in the middle
    # constant colour survives the resize (antialiased bilinear on uint8)
    png(tmp_path / "c" / "c.png", (77, 77, 77), size=(30, 13))
    y = load_data(tmp_path / "c", preprocessing=prep)[0][0]
    assert torch.allclose(y, torch.full_like(y, 77 / 255), atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("size", [32, 224, 240, 260, 300, 380])
def test_a_size_alone_resizes_by_the_crop_fraction_as_timm_does(size: int) -> None:
    """--size without --resize used to centre-crop the raw image (a 480 px photo became a small central patch). Now
    the shorter side is resized to floor(size / 0.875) first: the same Resize and CenterCrop timm builds."""
    from shiftaudit.data.presets import resolve_preprocessing

    timm_data = pytest.importorskip("timm.data")
    resize, crop = timm_data.create_transform(input_size=(3, size, size), crop_pct=0.875, interpolation="bilinear").transforms[:2]
    prep = resolve_preprocessing(size=size)
    assert (prep.resize, prep.size) == (resize.size, tuple(crop.size))


def test_a_size_alone_sees_the_whole_photo_like_the_model_zoo_transform(tmp_path: Path) -> None:
    """On a 480x360 photo, --size 260 gives what timm's eval transform gives (to a grey level, PIL's resize against
    torchvision's), not the central 260 px of the raw photo."""
    from shiftaudit.data.presets import resolve_preprocessing

    timm_data = pytest.importorskip("timm.data")
    yy, xx = np.mgrid[0:360, 0:480]
    arr = np.stack([xx * 255 // 479, yy * 255 // 359, (xx + yy) * 255 // 838], -1).astype(np.uint8)
    arr[80:280, 140:340] = 255  # a white 200 px square in the middle: 200 px of the crop, or 168 px of it resized
    Image.fromarray(arr).save(tmp_path / "photo.png")
    prep = resolve_preprocessing(size=260)
    ours = load_data(tmp_path / "photo.png", preprocessing=prep)[0][0]
    zoo = timm_data.create_transform(input_size=(3, 260, 260), crop_pct=0.875, interpolation="bilinear")
    with Image.open(tmp_path / "photo.png") as im:
        theirs = zoo(im.convert("RGB"))
    scale = torch.tensor(prep.std).view(3, 1, 1)  # compare in pixel units
    assert ((ours - theirs) * scale).abs().max() < 2.5 / 255
    old_default = Preprocessing(size=(260, 260), mean=prep.mean, std=prep.std, resize=None)  # the raw centre crop
    raw_crop = load_data(tmp_path / "photo.png", preprocessing=old_default)[0][0]
    assert ((raw_crop - theirs) * scale).abs().max() > 0.5  # visibly another image: the square's edges moved


def test_a_base_without_a_resize_keeps_none_and_an_explicit_resize_wins() -> None:
    from shiftaudit.data.presets import PRESETS, resolve_preprocessing

    assert resolve_preprocessing("cifar", size=40).resize is None  # CIFAR images are the input size already
    assert resolve_preprocessing(size=16, default=PRESETS["cifar"]).resize is None
    assert resolve_preprocessing(size=260, resize=260).resize == 260
    recorded = Preprocessing(size=(300, 300), mean=(0.5,) * 3, std=(0.5,) * 3, resize=320)
    assert resolve_preprocessing(size=240, default=recorded).resize == 256  # the checkpoint's own fraction, 300/320
    assert resolve_preprocessing().resize == 256 and resolve_preprocessing(size=224).resize == 256
    with pytest.raises(UsageError) as err:
        resolve_preprocessing(size=4000)
    assert str(err.value) == (
        "--size 4000 is cropped from images resized to 4571 px (crop fraction 224/256), more than "
        "the 4096 px allowed; pass --resize 4000 to crop without the margin."
    )


def test_small_images_are_enlarged_to_the_crop_with_a_note(tmp_path: Path) -> None:
    png(tmp_path / "f" / "small.png", (9, 9, 9), size=(6, 4))
    ds = load_data(tmp_path / "f", preprocessing=PREP)
    x, _, _ = all_items(ds)
    assert x.shape == (1, 3, 8, 8) and torch.isfinite(x).all()
    assert any("smaller than the 8x8 crop" in n for n in ds.notes)


# -- tensors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["uint8", "float"])
@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_tensor_files_in_every_layout(tmp_path: Path, layout: str, dtype: str, fmt: str) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    images = u8 if dtype == "uint8" else u8.astype(np.float32) / 255
    if layout == "nhwc":
        images = images.transpose(0, 2, 3, 1).copy()
    labels = np.array([0, 1, 2, 1, 0])
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, images=images, labels=labels)
    else:
        torch.save({"x": torch.from_numpy(images), "y": torch.from_numpy(labels)}, path)
    ds = load_data(path, preprocessing=PREP)
    assert detect_kind(path) == "tensors" and ds.kind == "tensors" and ds.labels == [0, 1, 2, 1, 0]
    expect = (torch.from_numpy(u8).float() / 255 - 0.5) / 0.25
    got, _, _ = all_items(ds)
    assert torch.allclose(got, expect, atol=1e-5)


def test_pt_tuple_bare_tensor_raw_and_unlabelled(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 6, 6)
    torch.save((x, torch.tensor([1, 0, 1, 0])), tmp_path / "pair.pt")
    torch.save(x, tmp_path / "bare.pth")
    pair = load_data(tmp_path / "pair.pt", preprocessing=PREP, raw=True)
    assert pair.labels == [1, 0, 1, 0] and pair.image_size == (6, 6) and torch.equal(pair[2][0], x[2])
    bare = load_data(tmp_path / "bare.pth", raw=True)
    assert not bare.has_labels and bare[0][1] == -1


def test_npz_without_images_and_wrong_rank_are_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", foo=np.zeros(3), bar=np.zeros(3))
    with pytest.raises(DataError, match="no image array"):
        load_data(tmp_path / "a.npz", preprocessing=PREP)
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 3, 4, 4, 1)))
    with pytest.raises(DataError, match="4-D"):
        load_data(tmp_path / "b.npz", preprocessing=PREP)


def test_in_memory_uint8_nhwc_is_preprocessed_and_float_raw_is_kept(tmp_path: Path) -> None:
    u8 = torch.full((3, 8, 8, 3), 51, dtype=torch.uint8)
    ds = load_data((u8, torch.tensor([0, 1, 2])), preprocessing=PREP)
    assert ds.kind == "memory" and ds.labels == [0, 1, 2]
    assert torch.allclose(ds[0][0], torch.full((3, 8, 8), (0.2 - 0.5) / 0.25), atol=1e-6)
    f = torch.randn(2, 3, 5, 5)
    raw = load_data(f, preprocessing=PREP, raw=True)
    assert raw.image_size == (5, 5) and torch.equal(raw[1][0], f[1])


def test_torch_dataset_in_memory(tmp_path: Path) -> None:
    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return torch.full((3, 4, 4), float(i)), i

    ds = load_data(Pairs(), raw=True)
    x, y, _ = all_items(ds)
    assert ds.has_labels and y.tolist() == [0, 1, 2] and x[2].eq(2).all()


# -- errors -----------------------------------------------------------------------------------------------------


def test_label_range_is_checked_against_the_model(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "val", {f"c{i}": 1 for i in range(10)})
    with pytest.raises(DataError, match=r"^Labels go up to 9 but the model has 5 classes; pass --class-map"):
        load_data(root, preprocessing=PREP, num_classes=5)
    assert len(load_data(root, preprocessing=PREP, num_classes=10)) == 10


def test_missing_path_empty_folder_and_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope", preprocessing=PREP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No images found in .*empty; looked for \.jpg \.jpeg \.png"):
        load_data(tmp_path / "empty", preprocessing=PREP)
    png(tmp_path / "f" / "a.png")
    with pytest.raises(DataError, match="Unknown data kind"):
        load_data(tmp_path / "f", preprocessing=PREP, kind="videos")
    with pytest.raises(DataError, match="no sub-folders with images"):
        load_data(tmp_path / "f", preprocessing=PREP, kind="imagefolder")
    with pytest.raises(UsageError, match="--raw applies to tensor files"):
        load_data(tmp_path / "f", preprocessing=PREP, raw=True)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="Cannot tell what kind"):
        load_data(tmp_path / "x.csv", preprocessing=PREP)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------------


def fake_cifar(root: Path, n: int = 6) -> tuple[Path, np.ndarray]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": [i % 3 for i in range(n)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird"], b"num_vis": 3072}, f, protocol=2)
    return d, data


def test_fake_cifar_is_read_with_the_restricted_unpickler(tmp_path: Path) -> None:
    d, data = fake_cifar(tmp_path)
    assert detect_kind(tmp_path) == "cifar10" and detect_kind(d) == "cifar10"
    prep = Preprocessing(size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))
    for src in (tmp_path, d):
        ds = load_data(src, preprocessing=prep)
        assert ds.kind == "cifar10" and len(ds) == 6 and ds.labels == [0, 1, 2, 0, 1, 2]
        assert ds.classes == ["airplane", "automobile", "bird"]
        assert any("md5" in n for n in ds.notes)
        expect = torch.from_numpy(data[4].reshape(3, 32, 32)).float() / 255
        assert torch.allclose(ds[4][0], expect)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    payload = pickle.dumps({b"data": _Evil(), b"labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        restricted_load(payload)
    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler.find_class(RestrictedUnpickler.__new__(RestrictedUnpickler), "builtins", "eval")
    d, _ = fake_cifar(tmp_path)
    (d / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="Refused to read"):
        load_data(tmp_path, preprocessing=PREP)


def test_numpy_arrays_round_trip_through_the_restricted_unpickler() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = restricted_load(pickle.dumps({b"data": arr, "k": [1, "x", b"y"]}, protocol=protocol))
        assert np.array_equal(out[b"data"], arr) and out["k"] == [1, "x", b"y"]


# -- image headers that declare more pixels than the file holds ----------------------------------------------------------


def _claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 image in ``path``'s format (by its extension) whose header then declares width x height."""
    import io
    import struct
    import zlib

    fmt = {".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".jpg": "JPEG", ".tif": "TIFF", ".webp": "WEBP"}[path.suffix]
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buf, fmt)
    data = bytearray(buf.getvalue())
    if fmt == "PNG":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt == "GIF":
        at = data.index(b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00")  # the image descriptor of a 1x1 frame
        data[6:10] = data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", width, height)
    elif fmt == "JPEG":
        at = data.index(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    elif fmt == "TIFF":
        ifd = struct.unpack("<I", data[4:8])[0]
        for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
            entry = ifd + 2 + 12 * k
            tag = struct.unpack("<H", data[entry : entry + 2])[0]
            if tag in (256, 257):
                data[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    else:
        at = data.index(b"\x9d\x01\x2a")  # a VP8 key frame's start code, then 14-bit width and height
        data[at + 3 : at + 7] = struct.pack("<HH", width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            assert im.size == (width, height)  # PIL reads the lie from the header
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    return path


@pytest.mark.parametrize("ext", [".png", ".gif", ".bmp", ".jpg", ".tif", ".webp"])
def test_an_image_header_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path, ext: str) -> None:
    """9000 x 9000 is under PIL's own guard (which only warns from 89 Mpixel) and over shiftaudit's 64 Mpixel; 16383 x
    16383 (WebP's largest) and 60000 x 60000 are over PIL's, whose refusal is said in the same words. Skipped and
    counted like any unreadable image; with --strict, exit 2 and one sentence naming the file."""
    from tests.helpers import assert_clean_error, cli

    side = 16383 if ext == ".webp" else 60000
    for w, h, words in [
        (9000, 9000, "its header declares 9000x9000 pixels, more than the 67,108,864 allowed"),
        (side, side, f"image size ({side * side} pixels) exceeds limit"),
    ]:
        root = tmp_path / f"{w}"
        png(root / "fine.png")
        bomb = _claiming(root / f"bomb{ext}", w, h)
        data, name = root, str(bomb)
        if ext == ".gif":  # folders follow torchvision's extensions, without GIF; tar shards take it
            import tarfile

            data = tmp_path / f"{w}.tar"
            with tarfile.open(data, "w") as tar:
                tar.add(bomb, "000000.gif")
            name = f"{data.name}:000000"
        res = cli(
            "eval",
            "shiftaudit/assets/demo.safetensors",
            "--data",
            data,
            "--size",
            8,
            "--max-shift",
            1,
            "--workers",
            0,
            "--strict",
        )
        assert_clean_error(res, f"Cannot read image {name}: it is too large", words)


@pytest.mark.slow
def test_a_decompression_bomb_ends_in_seconds_and_little_memory_in_a_real_process(tmp_path: Path) -> None:
    """A valid 9000 x 9000 16-bit PNG of zeros (160 KB): decoded, it was 162 MB of pixels read as float64 twice."""
    import struct
    import zlib

    from tests.helpers import assert_one_error_line, run_measured

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pack = zlib.compressobj(9)
    row = b"\0" * (1 + 9000 * 2)
    idat = b"".join(pack.compress(row) for _ in range(9000)) + pack.flush()
    bomb = tmp_path / "data" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    assert bomb.stat().st_size < 1 << 20
    code, stderr, startups, peak = run_measured(
        "eval",
        "shiftaudit/assets/demo.safetensors",
        "--data",
        bomb.parent,
        "--size",
        8,
        "--max-shift",
        1,
        "--workers",
        0,
        "--strict",
    )
    assert code == 2
    assert_one_error_line(stderr, f"Cannot read image {bomb}: it is too large")
    assert startups < 4 and peak < 1 << 30, (startups, peak)  # time in start-ups of the CLI itself


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_and_non_image_files_are_skipped_with_a_count(tiny_files, tmp_path, workers):
    data = folder_with_corrupt_images(tmp_path)
    args = [a if a != "0" else workers for a in files_eval_args(tiny_files, data=data)]  # decoded here, or in a worker process
    out = run_ok(args, tmp_path / "r.json")
    notes = out["report"]["notes"]
    assert any("1 unreadable image skipped: broken.png" in n for n in notes), notes
    assert out["report"]["data"]["num_images"] == 6  # the 6 good ones; notes.txt is not an image at all
    assert "1 unreadable image skipped" in out["res"].stdout


def test_symlink_loop_in_the_data_folder_is_walked_once(tiny_files, tmp_path):
    root = write_image_folder(tmp_path / "loopy")
    (root / "class_0" / "again").symlink_to(root, target_is_directory=True)
    out = run_ok(files_eval_args(tiny_files, data=root), tmp_path / "r.json")
    assert out["report"]["data"]["num_images"] == 6


def test_grayscale_and_rgba_images_are_converted_and_said(tiny_files, tmp_path):
    root = tmp_path / "modes"
    write_images(root / "class_0", 2, mode="L")
    write_images(root / "class_1", 2, mode="RGBA")
    write_images(root / "class_2", 2, mode="RGB")
    out = run_ok(files_eval_args(tiny_files, data=root), tmp_path / "r.json")
    assert any("converted 4 images with another colour mode to RGB" in n for n in out["report"]["notes"])


def test_images_smaller_than_the_crop_are_enlarged_and_said(tiny_files, tmp_path):
    # --preset cifar: a crop without a resize (a --size alone resizes to 16 / 0.875 = 18 px first, enlarging them)
    out = run_ok(files_eval_args(tiny_files, "--preset", "cifar", data=small_image_folder(tmp_path)), tmp_path / "r.json")
    assert any("6 images smaller than the 16x16 crop enlarged" in n for n in out["report"]["notes"])


def _save(path: Path, images: Any) -> Path:
    if path.suffix == ".npz":
        np.savez(path, images=images)
    else:
        torch.save({"images": images}, path)
    return path


TENSOR_FILES = [
    ("strings", "s.npz", lambda: np.array([["a", "b"]] * 4), "not strings"),
    ("dates", "d.npz", lambda: np.zeros((4, 3, 8, 8), dtype="datetime64[s]"), "not dates"),
    ("0x0 images", "z.npz", lambda: np.zeros((4, 3, 0, 0), np.uint8), "hold no pixels"),
    ("sparse", "sp.pt", lambda: torch.zeros(4, 3, 8, 8).to_sparse(), "not a sparse coo one"),
    ("float8", "f8.pt", lambda: torch.zeros(4, 3, 8, 8).to(torch.float8_e4m3fn), "float8_e4m3fn"),
    ("meta", "m.pt", lambda: torch.empty(4, 3, 8, 8, device="meta"), "meta tensor"),
    ("complex", "c.npz", lambda: np.zeros((4, 3, 8, 8), np.complex64), "not complex"),
    ("5-D", "five.npz", lambda: np.zeros((2, 2, 3, 8, 8), np.uint8), "must be 4-D"),
    ("list of strings", "ls.pt", lambda: ["a", "b"], "not strings"),
]


@pytest.mark.parametrize("name, file, make, needle", TENSOR_FILES, ids=[t[0] for t in TENSOR_FILES])
def test_tensor_files_that_cannot_be_images_are_one_sentence(tiny_env, tmp_path, name, file, make, needle):
    path = tmp_path / file
    if name == "list of strings":
        torch.save(make(), path)
    else:
        _save(path, make())
    res = cli(*env_eval_args(tiny_env, "--json", tmp_path / "r.json", data=path))
    assert_clean_error(res, needle)
    assert nothing_written(tmp_path / "r.json")


def test_uint16_and_uint32_tensors_are_read_as_integers(tiny_env, tmp_path):
    for dtype in (np.uint16, np.uint32):
        path = tmp_path / f"{np.dtype(dtype).name}.npz"
        np.savez(path, images=np.random.default_rng(0).integers(0, 60000, (3, 3, 16, 16)).astype(dtype), labels=np.arange(3))
        res = cli(*env_eval_args(tiny_env, "--quiet", "--json", tmp_path / "r.json", data=path))
        assert res.exit_code == 0, res.output


def _run_report(args: list[Any], out: Path) -> dict[str, Any]:
    res = cli(*args, "--json", out, "--quiet")
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_unreadable_subfolder_is_counted_and_fatal_with_strict(tiny_env, tmp_path, monkeypatch):
    """An unreadable sub-folder (os.scandir raises EACCES, as it does for a non-root user on a chmod 000 folder)."""
    data = write_image_folder(tmp_path / "val")
    write_images(data / "class_1" / "locked", 2, seed=5)
    real_scandir = os.scandir

    def scandir(path: Any = "."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rep = _run_report(env_eval_args(tiny_env, data=data), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 6
    assert any("1 unreadable entry skipped: class_1/locked (unreadable folder: permission denied)" in n for n in rep["notes"]), (
        rep["notes"]
    )
    res = cli(*env_eval_args(tiny_env, "--strict", data=data))
    assert_clean_error(res, "Cannot read", "locked", "permission denied", "--strict")


def test_links_to_devices_loops_and_nowhere_are_counted_and_fatal_with_strict(tiny_env, tmp_path):
    data = write_image_folder(tmp_path / "val")
    (data / "class_0" / "dev.png").symlink_to("/dev/zero")
    (data / "class_1" / "a.png").symlink_to(data / "class_1" / "b.png")
    (data / "class_1" / "b.png").symlink_to(data / "class_1" / "a.png")
    (data / "class_2" / "gone.png").symlink_to(tmp_path / "missing.png")
    (data / "class_2" / "up").symlink_to(data, target_is_directory=True)
    rep = _run_report(env_eval_args(tiny_env, data=data), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 6
    note = next(n for n in rep["notes"] if "unreadable entries skipped" in n)
    for needle in (
        "5 unreadable entries",
        "dev.png (a device",
        "a.png (a symbolic link loop)",
        "gone.png (a broken symbolic link)",
        "up (a link back to a folder above it",
    ):
        assert needle in note, note
    assert_clean_error(cli(*env_eval_args(tiny_env, "--strict", data=data)), "Cannot read", "--strict")


def test_device_named_like_an_image_in_a_flat_folder_is_counted(tiny_env, tmp_path):
    folder = tmp_path / "flat"
    write_images(folder, 2)
    (folder / "zero.png").symlink_to("/dev/zero")
    ds = load_data(folder, preprocessing=Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert len(ds) == 2 and any("zero.png (a device, not an image file)" in n for n in ds.notes)


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


def test_float_tiffs_are_scaled_by_their_range_not_clipped_black(tmp_path):
    from shiftaudit.data.preprocess import decode_image, finish

    rng = np.random.default_rng(0)
    unit = rng.random((16, 16))
    ref = tmp_path / "ref.png"
    Image.fromarray(np.round(unit * 255).astype(np.uint8), mode="L").save(ref)
    want, _ = finish(decode_image(ref, 3)[0], None)
    for name, values in (("unit.tif", unit), ("bytes.tif", unit * 255)):
        got, _ = finish(decode_image(_float_tiff(tmp_path / name, values), 3)[0], None)
        assert got.shape == (3, 16, 16) and got.mean() > 0.3  # not black
        assert torch.allclose(got, want, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="neither 0-1 nor 0-255"):
        decode_image(_float_tiff(tmp_path / "wild.tif", unit * 1000 - 5), 3)


def test_nan_pixels_are_the_datas_problem_naming_the_image(tiny_env, tmp_path):
    folder = tmp_path / "tiffs" / "class_0"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        values = rng.random((16, 16))
        if i == 1:
            values[3, 4] = np.nan
        _float_tiff(folder / f"t{i}.tif", values)
    rep = _run_report(env_eval_args(tiny_env, data=folder.parent), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 2 and rep["data"]["nonfinite_images"] == 0  # not blamed on the model
    assert any(
        "1 image with NaN or infinite pixel values skipped (a problem in the data, not the model): t1.tif" in n
        for n in rep["notes"]
    ), rep["notes"]
    res = cli(*env_eval_args(tiny_env, "--strict", data=folder.parent))
    assert_clean_error(res, "t1.tif", "NaN or infinite pixel values", "--strict")


def test_nan_pixels_in_every_tensor_image_is_a_data_error_not_a_model_error(tiny_env, tmp_path):
    images = np.random.default_rng(0).random((4, 3, 16, 16)).astype(np.float32)
    images[:, 0, 0, 0] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, images=images, labels=np.arange(4) % 3)
    line = assert_clean_error(
        cli(*env_eval_args(tiny_env, "--json", tmp_path / "r.json", data=path)),
        "None of the 4 images could be used",
        "mage 0 has NaN or infinite pixel values",
    )
    assert "model gave" not in line
