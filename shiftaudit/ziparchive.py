"""Zip archives read the way torch reads them, and refused wherever two zip readers could read them differently.

torch opens ``.pt2``, TorchScript and ``torch.save`` zip files with miniz (``PyTorchFileReader``); a safety check
written with Python's :mod:`zipfile` can see other bytes in the same file. The two disagree on, among others: data
before the first entry (``zipfile`` shifts every offset, miniz does not), a central directory that holds more
entries than its end record counts (``zipfile`` reads them all, miniz stops at the count), a zip64 locator that
points elsewhere than just before it (``zipfile`` ignores the pointer), duplicate names (``zipfile`` keeps the last,
miniz's binary search any of them) and names that differ only in case (miniz looks names up case-insensitively).
So :class:`ZipArchive` parses the structure itself and accepts only an archive whose reading cannot depend on the
reader: one end record at the very end of the file, the central directory right before it, entries that tile the
file from byte 0 without gaps or overlaps, local headers that repeat their central entry, printable ASCII names
unique without regard to case, and deflated sizes checked by inflating. Every declared size is checked against the
data before memory is spent on it. The checks read bytes through ``memoryview`` slices of one buffer (the file's
bytes, or a read-only map of the file: :func:`shiftaudit.files.read_regular`, :func:`~shiftaudit.files.mapped`), and
that same buffer is what the loader is then given.
"""

from __future__ import annotations

import mmap
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

from shiftaudit.files import mapped

EOCD = b"PK\x05\x06"
ZIP64_EOCD = b"PK\x06\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
CENTRAL = b"PK\x01\x02"
LOCAL = b"PK\x03\x04"
DESCRIPTOR = b"PK\x07\x08"

MAX_ENTRIES = 1_000_000  # a TorchScript archive of a very large model has tens of thousands
MAX_INFLATED = 4 * 2**30  # a deflated member larger than this is refused (torch writes members stored)
_ALLOWED_FLAGS = 0x0808 | 0x0006  # data descriptor, UTF-8 names, deflate speed options; never encryption
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, bidi and zero-width marks, unassigned


class ZipStructureError(ValueError):
    """The archive is damaged, or readers could disagree on it; the message says where in a few words."""


@dataclass(frozen=True)
class Member:
    """One file of the archive, as its central directory entry and local header agree it is."""

    name: str
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    method: int  # 0 stored, 8 deflated
    crc: int
    flags: int


def _extra_blocks(extra: bytes, where: str) -> dict[int, bytes]:
    """The extra field's (id -> data) blocks; they must tile the field exactly and no id may repeat."""
    blocks: dict[int, bytes] = {}
    pos = 0
    while pos < len(extra):
        if pos + 4 > len(extra):
            raise ZipStructureError(f"a truncated extra field in {where}")
        kind, length = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + length > len(extra):
            raise ZipStructureError(f"an extra field longer than its header in {where}")
        if kind in blocks:
            raise ZipStructureError(f"a repeated extra field in {where}")
        blocks[kind] = bytes(extra[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return blocks


def _check_name(raw: bytes, flags: int) -> str:
    """The member name as every reader decodes it: UTF-8 when not ASCII (and then flagged as UTF-8, or Python's
    zipfile reads it as cp437), no control, format or separator characters, no backslash, no empty/'.'/'..' part."""
    shown = raw[:80].decode("utf-8", "backslashreplace")
    if raw.isascii():
        name = raw.decode("ascii")
    elif not flags & 0x0800:
        raise ZipStructureError(f"a non-ASCII member name not marked as UTF-8 ({shown!r})")
    else:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ZipStructureError(f"a member name that is not UTF-8 ({shown!r})") from None
    if not name or "\\" in name or any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in name):
        raise ZipStructureError(f"a member name with control characters or a backslash ({shown!r})")
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ZipStructureError(f"a member name with an empty, '.' or '..' part ({shown!r})")
    return name


def _fold(name: str) -> str:
    """Names that any reader could take for one another: miniz ignores ASCII case; file systems and Python readers
    may normalise Unicode."""
    return unicodedata.normalize("NFKC", name).casefold()


class ZipArchive:
    """The members of an unambiguous zip archive held in ``buf`` (bytes, or a read-only map of the file)."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buffer = buf
        self._view = memoryview(buf)
        self.members: dict[str, Member] = {}
        try:
            self._parse()
        except BaseException:
            self.close()  # a map of the file cannot close while a view of it is alive (the traceback keeps this one)
            raise

    def close(self) -> None:
        self._view.release()

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- structure -------------------------------------------------------------------------------------------------
    def _parse(self) -> None:
        view, size = self._view, len(self._view)
        if size < 22:
            raise ZipStructureError("a file too short for a zip archive")
        end = size - 22
        if bytes(view[end : end + 4]) != EOCD:
            raise ZipStructureError("no end-of-central-directory record at the very end of the file (a comment or trailing data)")
        disk, cd_disk, here, total, cd_size, cd_offset, comment = struct.unpack_from("<HHHHIIH", view, end + 4)
        if comment:
            raise ZipStructureError("an archive comment")
        cd_end = end
        locator = end - 20
        if locator >= 0 and bytes(view[locator : locator + 4]) == ZIP64_LOCATOR:
            zdisk, record, disks = struct.unpack_from("<IQI", view, locator + 4)
            if zdisk != 0 or disks != 1:
                raise ZipStructureError("a zip64 locator for a multi-disk archive")
            if record != locator - 56:
                raise ZipStructureError("a zip64 locator that points away from the record just before it")
            if record < 0 or bytes(view[record : record + 4]) != ZIP64_EOCD:
                raise ZipStructureError("a zip64 locator without its end record")
            rec_size, _made, _need, z_disk, z_cd_disk, z_here, z_total, z_cd_size, z_cd_offset = struct.unpack_from(
                "<QHHIIQQQQ", view, record + 4
            )
            if rec_size != 44:
                raise ZipStructureError("a zip64 end record with extensible data")
            if z_disk or z_cd_disk or z_here != z_total:
                raise ZipStructureError("a zip64 end record of a multi-disk archive")
            for small, big, full in (
                (here, z_here, _U16),
                (total, z_total, _U16),
                (cd_size, z_cd_size, _U32),
                (cd_offset, z_cd_offset, _U32),
            ):
                if small != full and small != big:
                    raise ZipStructureError("end records that disagree with each other")
            total, cd_size, cd_offset, cd_end = z_total, z_cd_size, z_cd_offset, record
        else:
            if _U16 in (here, total) or _U32 in (cd_size, cd_offset):
                raise ZipStructureError("zip64 sizes without a zip64 end record")
            if disk or cd_disk or here != total:
                raise ZipStructureError("a multi-disk archive")
        if cd_offset + cd_size != cd_end:
            raise ZipStructureError("data between the central directory and its end record, or before the first entry")
        if self.buffer.find(EOCD, cd_offset, end) != -1 or self.buffer.find(ZIP64_EOCD, cd_offset, cd_end) != -1:
            raise ZipStructureError("a second end-of-central-directory record")
        if total > MAX_ENTRIES:
            raise ZipStructureError(f"{total:,} members, more than the {MAX_ENTRIES:,} allowed")
        entries = self._central(cd_offset, cd_end, total)
        self._tile(entries, cd_offset)

    def _central(self, pos: int, stop: int, total: int) -> list[Member]:
        view = self._view
        entries: list[Member] = []
        folded: set[str] = set()
        while pos < stop:
            if len(entries) >= total:
                raise ZipStructureError("more central directory entries than the end record counts")
            if pos + 46 > stop or bytes(view[pos : pos + 4]) != CENTRAL:
                raise ZipStructureError("a damaged central directory entry")
            (flags, method, crc, csize, usize, nlen, elen, clen, disk, offset) = struct.unpack_from(
                "<4xHH4xIIIHHHH6xI", view, pos + 4
            )
            if pos + 46 + nlen + elen + clen > stop:
                raise ZipStructureError("a central directory entry longer than the directory")
            name = _check_name(bytes(view[pos + 46 : pos + 46 + nlen]), flags)
            where = f"the entry {name!r}"
            if flags & ~_ALLOWED_FLAGS:
                raise ZipStructureError(f"encryption or unknown flags in {where}")
            if method not in (0, 8):
                raise ZipStructureError(f"compression method {method} in {where} (stored or deflated only)")
            if clen:
                raise ZipStructureError(f"a file comment in {where}")
            extra = _extra_blocks(bytes(view[pos + 46 + nlen : pos + 46 + nlen + elen]), where)
            usize, csize, offset, disk = self._zip64(extra.get(0x0001), usize, csize, offset, disk, where)
            if disk:
                raise ZipStructureError(f"{where} on another disk")
            if method == 0 and csize != usize:
                raise ZipStructureError(f"a stored entry whose two sizes differ ({where})")
            key = _fold(name)
            if key in folded:
                raise ZipStructureError(f"two members named {name!r} (or differing only in case)")
            folded.add(key)
            entries.append(Member(name, offset, -1, csize, usize, method, crc, flags))
            pos += 46 + nlen + elen + clen
        if len(entries) != total:
            raise ZipStructureError("fewer central directory entries than the end record counts")
        return entries

    @staticmethod
    def _zip64(block: bytes | None, usize: int, csize: int, offset: int, disk: int, where: str) -> tuple[int, int, int, int]:
        """Sizes, offset and disk with the zip64 extra field applied; the field must hold exactly the values that are
        at their maximum, in the order of the specification (readers differ on anything else)."""
        wanted = [usize == _U32, csize == _U32, offset == _U32, disk == _U16]
        if block is None:
            if any(wanted):
                raise ZipStructureError(f"zip64 sizes without a zip64 field in {where}")
            return usize, csize, offset, disk
        if len(block) != 8 * sum(wanted[:3]) + 4 * wanted[3]:
            raise ZipStructureError(f"a zip64 field that does not match its entry in {where}")
        values, pos = [usize, csize, offset], 0
        for i in range(3):
            if wanted[i]:
                values[i] = int(struct.unpack_from("<Q", block, pos)[0])
                pos += 8
        if wanted[3]:
            disk = int(struct.unpack_from("<I", block, pos)[0])
        return values[0], values[1], values[2], disk

    def _tile(self, entries: list[Member], cd_offset: int) -> None:
        """Local headers agree with the central directory and the members fill the file before it, in order."""
        view = self._view
        cursor = 0
        for entry in sorted(entries, key=lambda e: e.header_offset):
            where = f"the entry {entry.name!r}"
            at = entry.header_offset
            if at != cursor:
                raise ZipStructureError(
                    "bytes before the first entry" if cursor == 0 else f"entries that overlap or leave gaps ({where})"
                )
            if at + 30 > cd_offset or bytes(view[at : at + 4]) != LOCAL:
                raise ZipStructureError(f"a missing or damaged local header for {where}")
            flags, method, crc, csize, usize, nlen, elen = struct.unpack_from("<2xHH4xIIIHH", view, at + 4)
            if bytes(view[at + 30 : at + 30 + nlen]) != entry.name.encode("utf-8"):
                raise ZipStructureError(f"a local header whose name differs from the central directory's ({where})")
            if method != entry.method or flags != entry.flags:
                raise ZipStructureError(f"a local header that disagrees with the central directory ({where})")
            local_extra = _extra_blocks(bytes(view[at + 30 + nlen : at + 30 + nlen + elen]), where)
            described = bool(flags & 0x08)
            if not described:
                z = local_extra.get(0x0001)
                if z is not None and len(z) >= 16 and usize == _U32 and csize == _U32:
                    usize, csize = struct.unpack_from("<QQ", z, 0)
                if (crc, csize, usize) != (entry.crc, entry.compressed_size, entry.size):
                    raise ZipStructureError(f"a local header whose sizes differ from the central directory's ({where})")
            start = at + 30 + nlen + elen
            stop = start + entry.compressed_size
            if stop > cd_offset:
                raise ZipStructureError(f"{where} runs past the end of the data")
            if described:
                stop += self._descriptor(stop, entry, cd_offset, where)
            self.members[entry.name] = Member(
                entry.name, at, start, entry.compressed_size, entry.size, entry.method, entry.crc, entry.flags
            )
            cursor = stop
        if cursor != cd_offset:
            raise ZipStructureError("data between the last entry and the central directory")
        for member in self.members.values():
            if member.method == 8:
                self._inflate(member, keep=False)

    def _descriptor(self, at: int, entry: Member, limit: int, where: str) -> int:
        """The length of the data descriptor after a member's data; its values must be the central directory's, and
        its length (32- or 64-bit sizes) unambiguous."""
        view = self._view
        if bytes(view[at : at + 4]) != DESCRIPTOR:
            raise ZipStructureError(f"a data descriptor without its signature ({where})")
        want = (entry.crc, entry.compressed_size, entry.size)
        fits = [n for n, fmt in ((16, "<III"), (24, "<IQQ")) if at + n <= limit and struct.unpack_from(fmt, view, at + 4) == want]
        if len(fits) == 2:  # both read alike (empty sizes): the one the next header follows
            fits = [n for n in fits if at + n == limit or bytes(view[at + n : at + n + 4]) == LOCAL]
        if len(fits) != 1:
            raise ZipStructureError(f"a data descriptor that differs from the central directory ({where})")
        return fits[0]

    # -- reading ---------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str, max_bytes: int) -> bytes:
        """A member's bytes, CRC-checked; refused above ``max_bytes`` before anything is read."""
        member = self.members[name]
        if member.size > max_bytes:
            raise ZipStructureError(f"{name} is {member.size:,} bytes, more than the {max_bytes:,} allowed")
        if member.method == 8:
            return self._inflate(member, keep=True)
        data = bytes(self._view[member.data_offset : member.data_offset + member.size])
        if zlib.crc32(data) != member.crc:
            raise ZipStructureError(f"a CRC mismatch in {name}")
        return data

    def _bytes(self, member: Member) -> bytes:
        """A member's stored bytes, copied: no view of a mapped file may outlive a failed check (the map could then
        not close)."""
        return bytes(self._view[member.data_offset : member.data_offset + member.compressed_size])

    def head(self, name: str, n: int) -> bytes:
        """The first ``n`` bytes of a member (inflating no more than that), unchecked: for reading a header."""
        member = self.members[name]
        if member.method == 0:
            return bytes(self._view[member.data_offset : member.data_offset + min(n, member.size)])
        return zlib.decompressobj(-15).decompress(self._bytes(member), n)

    def _inflate(self, member: Member, *, keep: bool) -> bytes:
        """Inflate in bounded steps: the output may never exceed the declared size, and must reach it exactly."""
        if member.size > MAX_INFLATED:
            raise ZipStructureError(f"{member.name} declares {member.size:,} bytes when inflated, more than allowed")
        inflater = zlib.decompressobj(-15)
        out: list[bytes] = []
        produced, crc, step = 0, 0, 1 << 20
        pending = self._bytes(member)
        while True:
            chunk = inflater.decompress(pending, step)
            pending = inflater.unconsumed_tail
            produced += len(chunk)
            if produced > member.size:
                raise ZipStructureError(f"{member.name} inflates to more than its declared size")
            crc = zlib.crc32(chunk, crc)
            if keep:
                out.append(chunk)
            if inflater.eof or (not chunk and not pending):
                break
        if not inflater.eof or inflater.unused_data or produced != member.size or crc != member.crc:
            raise ZipStructureError(f"{member.name} does not inflate to its declared size and CRC")
        return b"".join(out)


def check_zip_file(path: Path) -> None:
    """Raise ValueError (a few words) when the file starts like a zip archive that readers could read differently."""
    with mapped(path) as buf:
        if bytes(buf[:4]) != LOCAL:
            return
        try:
            ZipArchive(buf).close()
        except ZipStructureError as exc:
            raise ValueError(f"it is a damaged or ambiguous zip archive ({exc})") from None
