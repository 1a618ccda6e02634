"""A zip writer for tests that craft hostile archives: every field a reader could disagree on can be set by hand.

By default it writes what torch's writer writes (stored members, a data descriptor after each, UTF-8 names, a zip64
end record and locator); each keyword of :func:`build` bends one thing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass


@dataclass
class Entry:
    name: bytes
    data: bytes
    method: int = 0
    flags: int = 0x0808  # a data descriptor follows the data; the name is UTF-8
    central_name: bytes | None = None  # what the central directory calls it, when not the local name
    offset: int | None = None  # the local header offset the central directory states, when not the real one
    central_extra: bytes = b""
    local_extra: bytes = b""
    declared_size: int | None = None  # the uncompressed size both headers state, when not the real one
    descriptor: bool = True
    raw: bytes | None = None  # the stored bytes as given (e.g. a deflate stream that is not ``data`` compressed)


def member(name: str, data: bytes, **kw: object) -> Entry:
    return Entry(name.encode("utf-8"), data, **kw)  # type: ignore[arg-type]


def build(
    entries: list[Entry],
    *,
    prefix: bytes = b"",
    zip64: bool = True,
    count_delta: int = 0,
    comment: bytes = b"",
    cd_offset_delta: int = 0,
    locator_offset_delta: int = 0,
    trailing: bytes = b"",
    gap: bytes = b"",
    extra_central: bytes = b"",
    eocd_count: int | None = None,
) -> bytes:
    """The archive's bytes. ``prefix`` goes before the first entry without shifting any stored offset (what makes
    Python's zipfile and miniz read different central directories); ``gap`` goes between entries and the central
    directory; ``extra_central`` is appended inside the central directory's bytes (counted in its size)."""
    out = bytearray(prefix)
    central = bytearray()
    for e in entries:
        payload = e.raw if e.raw is not None else zlib.compress(e.data)[2:-4] if e.method == 8 else e.data
        crc = zlib.crc32(e.data)
        size = e.declared_size if e.declared_size is not None else len(e.data)
        offset = len(out) - len(prefix)
        described = bool(e.flags & 0x08)
        local_crc, local_c, local_u = (0, 0, 0) if described else (crc, len(payload), size)
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            e.flags,
            e.method,
            0,
            0x21,
            local_crc,
            local_c,
            local_u,
            len(e.name),
            len(e.local_extra),
        )
        out += e.name + e.local_extra + payload
        if described and e.descriptor:
            out += struct.pack("<4sIII", b"PK\x07\x08", crc, len(payload), size)
        stated = e.offset if e.offset is not None else offset
        name = e.central_name if e.central_name is not None else e.name
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            0x031E,
            20,
            e.flags,
            e.method,
            0,
            0x21,
            crc,
            len(payload),
            size,
            len(name),
            len(e.central_extra),
            0,
            0,
            0,
            0,
            stated,
        )
        central += name + e.central_extra
    out += gap
    central += extra_central
    cd_offset = len(out) - len(prefix) + cd_offset_delta
    count = len(entries) + count_delta if eocd_count is None else eocd_count
    out += central
    if zip64:
        record = len(out) - len(prefix)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, count, count, len(central), cd_offset)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record + locator_offset_delta, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, len(comment))
    out += comment + trailing
    return bytes(out)
