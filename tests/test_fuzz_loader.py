"""Bounded, seeded fuzzing of the checkpoint loader: damaged files must only ever give the clean error.

A user points ``shiftaudit`` at files they did not make; whatever the bytes, :func:`shiftaudit.loading.load_model`
must either load a model or raise :class:`~shiftaudit.errors.ShiftAuditError` (one sentence, exit code 2 in the
CLI). Any other exception type is a leak that would show up as "internal error". About 200 cases: random bytes,
and byte flips, truncations, insertions and header edits of real ``torch.save`` zip, safetensors and TorchScript
files, at seeded offsets so a failure reproduces.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections import Counter

import pytest
import torch

from shiftaudit.errors import ShiftAuditError
from shiftaudit.loading import LoadedModel, load_model, save_model
from shiftaudit.models.demo import DEMO_ARCH, demo_cnn
from tests.helpers import signature_cache_dir

SEED = 20240611
PER_FORMAT = 56  # mutations per real checkpoint (3 formats) plus the random-byte cases: about 200 in all
RANDOM_CASES = 32
TIME_BUDGET_S = 60.0


@pytest.fixture(autouse=True)
def _signature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Identification (tried when no --arch fits) uses a cache per test run, never the user's ~/.cache."""
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(signature_cache_dir(tmp_path_factory)))


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The three real checkpoint formats of one small model, as bytes."""
    root = tmp_path_factory.mktemp("fuzz-originals")
    torch.manual_seed(0)
    model = demo_cnn(num_classes=3).eval()
    torch.save(model.state_dict(), root / "demo.pt")
    save_model(model, root / "demo.safetensors", arch=DEMO_ARCH, num_classes=3, class_names=["a", "b", "c"])
    save_model(model, root / "demo.ts", format="torchscript", arch=DEMO_ARCH, num_classes=3)
    return {name: (root / f"demo.{name}").read_bytes() for name in ("pt", "safetensors", "ts")}


def _mutations(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """``n`` seeded damaged copies of ``data``: byte flips, truncations, insertions, zeroed and swapped spans."""
    out: list[tuple[str, bytes]] = []
    size = len(data)
    # offsets worth hitting: the first bytes (magic, header length), the safetensors/zip headers, the end (zip
    # central directory), and random places in between
    hot = [0, 1, 4, 7, 8, 9, 16, 30, 64, 100, size // 4, size // 2, size - 22, size - 40, size - 1]
    kinds = ("flip", "flip3", "truncate", "insert", "zero", "dup")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pos = hot[i % len(hot)] if i < 2 * len(hot) else rng.randrange(size)
        pos = max(0, min(size - 1, pos))
        b = bytearray(data)
        if kind == "flip":
            b[pos] ^= 1 << rng.randrange(8)
        elif kind == "flip3":
            for p in (pos, rng.randrange(size), rng.randrange(size)):
                b[p] = rng.randrange(256)
        elif kind == "truncate":
            b = b[: rng.randrange(max(1, size))] if i >= len(hot) else b[:pos]
        elif kind == "insert":
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif kind == "zero":
            end = min(size, pos + rng.randrange(1, 64))
            b[pos:end] = bytes(end - pos)
        else:  # duplicate a span elsewhere (keeps magic numbers, scrambles structure)
            src = rng.randrange(size)
            span = data[src : src + rng.randrange(4, 128)]
            b[pos : pos + len(span)] = span
        out.append((f"{kind}@{pos}", bytes(b)))
    return out


def _safetensors_header_cases(data: bytes) -> list[tuple[str, bytes]]:
    """Well-formed framing around hostile headers: the metadata must be read as data and checked."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]

    def frame(h: object, payload: bytes = body) -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + payload

    meta = dict(header.get("__metadata__", {}))
    cases: list[tuple[str, bytes]] = []
    for key, value in [
        ("shiftaudit.arch", "os:system"),
        ("shiftaudit.arch", "subprocess:getoutput"),
        ("shiftaudit.arch", ""),
        ("shiftaudit.num_classes", "-3"),
        ("shiftaudit.num_classes", "1e309"),
        ("shiftaudit.arch_kwargs", '{"__class__": "os.system"}'),
        ("shiftaudit.arch_kwargs", "[" * 5000 + "]" * 5000),
        ("shiftaudit.preprocessing", '{"size": [-1, 0]}'),
        ("shiftaudit.preprocessing", "null"),
        ("shiftaudit.class_names", '{"a": 1}'),
        ("shiftaudit.patch", '"string"'),
        ("shiftaudit.patch", '{"filter": 5}'),
        ("shiftaudit.patch", '{"filter": "no-such-filter"}'),
        ("shiftaudit.patch", '{"only": 3, "skip": {"a": 1}}'),
        ("shiftaudit.patch", '{"version": "x"}'),
        ("shiftaudit.patch", '{"pad": null, "stem": "yes", "patched": 7}'),
        ("shiftaudit.patch", '{"patched": ["no.such.layer"]}'),
        ("shiftaudit.arch_kwargs", '{"num_classes": "many"}'),
        ("shiftaudit.arch_kwargs", '{"widths": [1e308]}'),
        ("shiftaudit.preprocessing", '{"size": [32, 32], "mean": ["a"], "std": [0, 0, 0]}'),
        ("shiftaudit.format", "99"),
    ]:
        cases.append((f"meta {key}={value[:20]}", frame({**header, "__metadata__": {**meta, key: value}})))
    first = next(k for k in header if k != "__metadata__")
    t = dict(header[first])
    cases.append(("dtype bogus", frame({**header, first: {**t, "dtype": "Q99"}})))
    cases.append(("shape huge", frame({**header, first: {**t, "shape": [2**40, 2**40]}})))
    cases.append(("offsets reversed", frame({**header, first: {**t, "data_offsets": list(reversed(t["data_offsets"]))}})))
    cases.append(("metadata non-string", frame({**header, "__metadata__": {"shiftaudit.num_classes": 3}})))
    cases.append(("header is a list", frame([1, 2, 3])))
    return cases


def _random_cases(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Random bytes, some behind the magic numbers each format sniffer looks for."""
    prefixes = [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04\x95", struct.pack("<Q", 40) + b"{"]
    out = []
    for i in range(n):
        prefix = prefixes[i % len(prefixes)]
        body = bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64, 700))))
        out.append((f"random {prefix[:4]!r}+{len(body)}", prefix + body))
    return out


def _all_cases(originals: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    rng = random.Random(SEED)
    cases: list[tuple[str, str, bytes]] = []
    for fmt, data in originals.items():
        cases += [(fmt, name, blob) for name, blob in _mutations(data, rng, PER_FORMAT)]
    cases += [("safetensors", name, blob) for name, blob in _safetensors_header_cases(originals["safetensors"])]
    cases += [("bin", name, blob) for name, blob in _random_cases(rng, RANDOM_CASES)]
    return cases


def test_loader_only_ever_raises_the_clean_error(originals, tmp_path):
    cases = _all_cases(originals)
    assert len(cases) >= 200
    outcomes: Counter[str] = Counter()
    leaks: list[str] = []
    t0 = time.perf_counter()
    for i, (fmt, name, blob) in enumerate(cases):
        path = tmp_path / f"case{i}.{fmt}"
        path.write_bytes(blob)
        # the state-dict formats need an architecture; the TorchScript archive and random bytes are tried bare
        arch = DEMO_ARCH if fmt == "pt" else None
        try:
            loaded = load_model(path, arch=arch)
        except ShiftAuditError as exc:
            text = str(exc)
            if "\n" in text or "Traceback" in text:
                leaks.append(f"{fmt} {name}: multi-line message {text[:200]!r}")
            outcomes[type(exc).__name__] += 1
        except BaseException as exc:  # this is exactly what the fuzzer hunts for
            leaks.append(f"{fmt} {name}: {type(exc).__name__}: {str(exc)[:200]}")
        else:
            assert isinstance(loaded, LoadedModel)
            outcomes["loaded"] += 1
        path.unlink()
    elapsed = time.perf_counter() - t0
    print(f"\nfuzz: {len(cases)} cases in {elapsed:.1f} s: {dict(outcomes)}")
    assert not leaks, "loader leaked non-ShiftAuditError exceptions:\n" + "\n".join(leaks)
    assert elapsed < TIME_BUDGET_S
    assert outcomes["loaded"] >= 1 and sum(outcomes.values()) - outcomes["loaded"] >= 100  # both sides exercised


def test_unmutated_originals_load(originals, tmp_path):
    """The fuzz seeds themselves are valid, so every failure above is due to the mutation."""
    for fmt, data in originals.items():
        path = tmp_path / f"ok.{fmt}"
        path.write_bytes(data)
        loaded = load_model(path, arch=DEMO_ARCH if fmt == "pt" else None)
        assert loaded.num_classes == 3
