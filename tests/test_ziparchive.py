"""The strict zip reader (shiftaudit/ziparchive.py): every archive torch and Python write reads back as
Python's zipfile reads it, and every construct on which two zip readers can disagree is refused, naming it."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftaudit.ziparchive import ZipArchive, ZipStructureError
from tests.helpers import examples
from tests.zipcraft import build, member

BASE = [("r/a", b"alpha" * 7), ("r/b", b""), ("r/c.json", b'{"x": 1}')]


def entries(**overrides: dict) -> list:
    return [member(name, data, **overrides.get(name, {})) for name, data in BASE]


def assert_reads_like_zipfile(blob: bytes) -> ZipArchive:
    archive = ZipArchive(blob)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert archive.names == zf.namelist()
        for name in archive.names:
            assert archive.read(name, 1 << 30) == zf.read(name)
    return archive


def test_a_torch_style_archive_reads_back_as_python_reads_it():
    archive = assert_reads_like_zipfile(build(entries()))
    assert archive.read("r/a", 100) == b"alpha" * 7
    assert_reads_like_zipfile(build(entries(), zip64=False))
    assert_reads_like_zipfile(build([member("r/d", b"zz" * 500, method=8)]))


def _python_zip(**kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", **kw) as zf:
        for name, data in BASE:
            zf.writestr(name, data)
        with zf.open("r/big", "w", force_zip64=True) as f:
            f.write(b"0123456789" * 100)
    return buf.getvalue()


def test_archives_torch_and_python_write_are_read_whole(tmp_path):
    state = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, state)
    script = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), script)
    for blob in (state.getvalue(), script.getvalue(), _python_zip(), _python_zip(compression=zipfile.ZIP_DEFLATED)):
        assert_reads_like_zipfile(blob)
    archive = ZipArchive(state.getvalue())
    assert {n.split("/", 1)[1] for n in archive.names} >= {"data.pkl", "version", "data/0"}


def _local_record(name: str, data: bytes) -> bytes:
    """One member's local header, data and descriptor, as the first bytes of an archive of it alone."""
    return build([member(name, data)], zip64=False)[: 30 + len(name) + len(data) + 16]


def _hidden_member() -> list:
    """A member whose data holds a whole second member, which the central directory also lists: they overlap."""
    inner = _local_record("r/b", b"evil")
    return [member("r/a", inner), member("r/b", b"evil", offset=30 + 3)]


AMBIGUOUS = {
    # name: (entries, build keywords, words of the refusal)
    "duplicate names": ([member("r/a", b"1"), member("r/a", b"2")], {}, "two members named 'r/a'"),
    "names differing in case": ([member("r/config.json", b"1"), member("r/CONFIG.json", b"2")], {}, "differing only in case"),
    "names equal after unicode normalisation": ([member("r/\u00e9", b"1"), member("r/e\u0301", b"2")], {}, "two members named"),
    "central name differs from the local one": ([member("r/a", b"1", central_name=b"r/z")], {}, "name differs from"),
    "overlapping members": (_hidden_member(), {}, "overlap"),
    "data before the first entry": (entries(), {"prefix": b"JUNK" * 8, "zip64": False}, "before the first entry"),
    "data before the first entry, zip64": (entries(), {"prefix": b"JUNK" * 8}, "points away"),
    "central directory offset off by one": (entries(), {"cd_offset_delta": -1}, "before the first entry"),
    "more central entries than counted": (entries(), {"count_delta": -1}, "more central directory entries"),
    "fewer central entries than counted": (entries(), {"count_delta": 1}, "fewer central directory entries"),
    "zip64 locator pointing elsewhere": (entries(), {"locator_offset_delta": -8}, "points away"),
    "second end record": (entries(), {"extra_central": b"PK\x05\x06" + bytes(18)}, "a second end-of-central-directory"),
    "archive comment": (entries(), {"comment": b"hello"}, "a comment or trailing data"),
    "trailing data": (entries(), {"trailing": b"\0" * 40}, "at the very end of the file"),
    "gap before the central directory": (entries(), {"gap": b"\0" * 4}, "between the last entry and the central"),
    "encrypted member": ([member("r/a", b"1", flags=0x0809)], {}, "encryption or unknown flags"),
    "unknown compression": ([member("r/a", b"1", method=12)], {}, "compression method 12"),
    "deflate declaring more than it holds": (
        [member("r/a", b"x" * 100, method=8, declared_size=10**9)],
        {},
        "does not inflate to its declared size",
    ),
    "deflate holding more than it declares": (
        [member("r/a", b"x" * 10**5, method=8, declared_size=10)],
        {},
        "inflates to more than its declared size",
    ),
    "stored sizes that differ": ([member("r/a", b"abc", declared_size=5)], {}, "stored entry whose two sizes differ"),
    "descriptor missing": ([member("r/a", b"abc", descriptor=False), member("r/b", b"d")], {}, "data descriptor"),
    "control characters in a name": ([member("r/a\x1b[31m", b"1")], {}, "control characters"),
    "bidi override in a name": ([member("r/a\u202eb", b"1")], {}, "control characters"),
    "backslash in a name": ([member("r\\a", b"1")], {}, "backslash"),
    "dot-dot in a name": ([member("r/../a", b"1")], {}, "'..' part"),
    "absolute name": ([member("/r/a", b"1")], {}, "'..' part"),
    "non-UTF-8 name": ([member("r/x", b"1", central_name=b"r/\xff")], {}, "not UTF-8"),
    "non-ASCII name not marked UTF-8": ([member("r/\u00e9", b"1", flags=0x0008)], {}, "not marked as UTF-8"),
    "repeated extra field": ([member("r/a", b"1", central_extra=b"UT\x01\x00\x00UT\x01\x00\x00")], {}, "a repeated extra field"),
    "zip64 field without large sizes": (
        [member("r/a", b"1", central_extra=b"\x01\x00\x08\x00" + bytes(8))],
        {},
        "zip64 field that does not match",
    ),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS), ids=list(AMBIGUOUS))
def test_anything_two_zip_readers_could_read_differently_is_refused_naming_it(case):
    members, kw, words = AMBIGUOUS[case]
    with pytest.raises(ZipStructureError, match=None) as exc:
        ZipArchive(build(members, **kw))
    assert words in str(exc.value), str(exc.value)


def test_the_crafted_ambiguities_really_mislead_pythons_zipfile():
    """The cases above are real disagreements, not only strictness: Python's zipfile reads these without a word and
    sees something else than miniz would (the other member, the other directory)."""
    dup = build([member("r/a", b"first"), member("r/a", b"second")])
    assert zipfile.ZipFile(io.BytesIO(dup)).read("r/a") == b"second"  # miniz's binary search may take either
    shifted = build(entries(), prefix=b"JUNK" * 8)
    assert zipfile.ZipFile(io.BytesIO(shifted)).read("r/a") == b"alpha" * 7  # zipfile shifts; miniz reads offset 0
    extra = build(entries(), count_delta=-1)
    assert len(zipfile.ZipFile(io.BytesIO(extra)).namelist()) == 3  # miniz stops at the count: 2


def test_a_member_is_read_within_its_limit_and_crc_checked():
    blob = bytearray(build([member("r/a", b"hello world")]))
    archive = ZipArchive(bytes(blob))
    with pytest.raises(ZipStructureError, match="more than the 5 allowed"):
        archive.read("r/a", 5)
    at = blob.index(b"hello")
    blob[at] ^= 1  # the data changes, the CRC does not
    with pytest.raises(ZipStructureError, match="CRC mismatch"):
        ZipArchive(bytes(blob)).read("r/a", 100)


def test_a_deflated_member_is_inflated_in_bounded_steps():
    """A small deflate stream that declares 10 bytes but inflates to 100 MB stops after the first megabyte."""
    bomb = zlib.compress(b"\0" * (100 * 2**20))[2:-4]
    assert len(bomb) < 200_000
    with pytest.raises(ZipStructureError, match="more than its declared size"):
        ZipArchive(build([member("r/a", b"\0" * 10, method=8, raw=bomb)]))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_damage_to_the_structure_is_read_or_refused_in_one_sentence(data):
    """Byte flips, cuts and insertions anywhere in the headers: a ZipStructureError or an archive whose members all
    read back as Python's zipfile reads them, never another exception and never a hang."""
    blob = bytearray(build(entries()))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "field"]))
        at = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[at : at + data.draw(st.integers(1, 8))]
        elif op == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif at + 4 <= len(blob):
            struct.pack_into("<I", blob, at, data.draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, len(blob)])))
    try:
        archive = ZipArchive(bytes(blob))
    except ZipStructureError:
        return
    for name in archive.names:
        with contextlib.suppress(ZipStructureError):
            archive.read(name, 1 << 20)
