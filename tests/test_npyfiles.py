"""NumPy files (shiftaudit/npyfiles.py): an array header is never trusted for more bytes than follow it, an .npz
is a zip every reader reads alike; the data files and the --resume state both go through it."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
import torch

from shiftaudit.npyfiles import check_numpy_file, load_numpy
from tests import zipcraft
from tests.helpers import assert_clean_error, cli, nothing_written


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _lying_npy(shape: tuple[int, ...], data: bytes = b"\0" * 64) -> bytes:
    """An .npy header declaring ``shape`` of float32 over ``data``."""
    real = _npy(np.zeros(16, dtype=np.float32))
    header_end = real.index(b"\n") + 1
    header = real[10:header_end].decode("latin1").replace("(16,)", repr(shape)).rstrip("\n").rstrip()
    header = header.ljust(header_end - 10 - 1) + "\n"
    if len(header) != header_end - 10:
        header = header.ljust(((len(header) + 10 + 63) // 64) * 64 - 10 - 1) + "\n"
    return real[:8] + len(header).to_bytes(2, "little") + header.encode("latin1") + data


def test_real_files_load_as_numpy_loads_them(tmp_path):
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(2))
    np.savez_compressed(tmp_path / "c.npz", images=images, labels=np.arange(2))
    assert np.array_equal(load_numpy(tmp_path / "a.npy"), images)
    for name in ("b.npz", "c.npz"):
        loaded = load_numpy(tmp_path / name)
        assert loaded.keys() == {"images", "labels"} and np.array_equal(loaded["images"], images)


LYING = {
    "npy declaring a terabyte": (lambda: _lying_npy((2**38,)), "declaring 1,099,511,627,776 bytes of data where 64"),
    "npz member declaring a terabyte": (
        lambda: zipcraft.build([zipcraft.member("images.npy", _lying_npy((2**38,)), flags=0)], zip64=False),
        "its array images.npy holds an array header declaring",
    ),
    "npz compressed member declaring a terabyte": (
        lambda: zipcraft.build([zipcraft.member("images.npy", _lying_npy((2**38,)), method=8, flags=0)], zip64=False),
        "declaring 1,099,511,627,776 bytes",
    ),
    "npz with two arrays of one name": (
        lambda: zipcraft.build(
            [zipcraft.member("images.npy", _npy(np.zeros(4))), zipcraft.member("images.npy", _npy(np.ones(4)))]
        ),
        "two members named",
    ),
    "npz with bytes before the first member": (
        lambda: zipcraft.build([zipcraft.member("images.npy", _npy(np.zeros(4)))], prefix=b"x" * 64, zip64=False),
        "before the first entry",
    ),
    "npy of Python objects": (lambda: _npy(np.array([None, 1], dtype=object)), "Python objects"),
}


@pytest.mark.parametrize("case", list(LYING), ids=list(LYING))
def test_a_header_declaring_more_than_the_file_holds_is_refused_unread(tmp_path, case):
    make, words = LYING[case]
    path = tmp_path / ("x.npy" if "npy " in case and "npz" not in case else "x.npz")
    path.write_bytes(make())
    with pytest.raises(ValueError, match=None) as exc:
        check_numpy_file(path)
    assert words in str(exc.value), str(exc.value)


def test_a_lying_data_file_through_the_cli(tmp_path):
    from shiftaudit.loading import save_model
    from shiftaudit.models.demo import DEMO_ARCH, demo_cnn

    model = tmp_path / "demo.safetensors"
    save_model(demo_cnn(num_classes=4).eval(), model, arch=DEMO_ARCH, num_classes=4)
    data = tmp_path / "bomb.npz"
    data.write_bytes(zipcraft.build([zipcraft.member("images.npy", _lying_npy((2**38,)), flags=0)], zip64=False))
    report = tmp_path / "r.json"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = cli("eval", model, "--data", data, "--size", "16", "--json", report)
    assert_clean_error(res, f"Cannot read {data}", "declaring 1,099,511,627,776 bytes")
    assert nothing_written(report)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: nothing near the declared size


def test_a_lying_resume_state_is_refused_as_not_a_state(tmp_path):
    from shiftaudit.engine.resume import ResumeState

    state = tmp_path / "state.npz"
    state.write_bytes(zipcraft.build([zipcraft.member("__meta__.npy", _lying_npy((2**38,)), flags=0)], zip64=False))
    from shiftaudit.errors import UsageError

    with pytest.raises(UsageError, match="not a shiftaudit audit state"):
        ResumeState(state, {}).load_into([])


def test_a_zip_tensor_file_torch_could_read_differently_is_refused(tmp_path):
    real = io.BytesIO()
    torch.save({"images": torch.zeros(2, 3, 4, 4)}, real)
    from shiftaudit.ziparchive import ZipArchive

    archive = ZipArchive(real.getvalue())
    members = [zipcraft.member(n, archive.read(n, 1 << 20)) for n in archive.names]
    path = tmp_path / "t.pt"
    path.write_bytes(zipcraft.build(members + [zipcraft.member(archive.names[0], b"again")]))
    from shiftaudit.data.tensors import _read_tensor_file
    from shiftaudit.errors import DataError

    with pytest.raises(DataError, match="two members named"):
        _read_tensor_file(path)
