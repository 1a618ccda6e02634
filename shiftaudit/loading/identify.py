"""Which architecture a bare state dict belongs to, from its key names and tensor shapes.

Every candidate's state-dict signature (keys, shapes, a hash of its structure) is computed once on the meta
device, with a sentinel class count so the classifier dimension can be recognised, and cached on disk per
library version. Matching is then a set comparison: no model is built on a warm cache. timm (about 1,300
models) is only searched when torchvision has no match, and only among models whose first conv and classifier
names (from timm's pretrained configs) appear in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shiftaudit.errors import ShiftAuditError
from shiftaudit.files import atomic_path
from shiftaudit.loading.architectures import TIMM_PREFIX, build_skeleton, timm_available, timm_names, torchvision_names
from shiftaudit.loading.state_dict import NBT, strip_prefixes

# A candidate is worth naming only when at least this fraction of the keys of checkpoint and candidate together
# (their union) match by name and shape. A checkpoint of a neighbouring depth (resnet34 weights against resnet18:
# 0.56) or with a changed head or block (resnet18 with an extra layer: above 0.9) clears it; unrelated families
# (an EfficientNet against alexnet or vgg: 0 of 263 keys) are far below, and listing them only misleads.
USEFUL_OVERLAP = 0.5
SENTINEL_CLASSES = 1371  # a class count no real layer has, so its dimensions mark the classifier
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$SHIFTAUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/shiftaudit``, else ``~/.cache/shiftaudit``."""
    explicit = os.environ.get("SHIFTAUDIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shiftaudit"


@dataclass
class Signature:
    keys: list[str]
    shapes: list[list[int]]
    struct: str

    def to_json(self) -> dict[str, Any]:
        return {"keys": self.keys, "shapes": self.shapes, "struct": self.struct}

    @classmethod
    def from_json(cls, d: Any) -> Signature | None:
        try:
            keys, shapes, struct = d["keys"], d["shapes"], d["struct"]
            if not (isinstance(keys, list) and isinstance(shapes, list) and len(keys) == len(shapes) and isinstance(struct, str)):
                return None
            return cls([str(k) for k in keys], [[int(v) for v in s] for s in shapes], struct)
        except (KeyError, TypeError, ValueError):
            return None

    def significant(self) -> dict[str, list[int]]:
        return {k: s for k, s in zip(self.keys, self.shapes) if not k.endswith(NBT)}


def signature_of(model: torch.nn.Module) -> Signature:
    sd = model.state_dict()
    struct = hashlib.sha1(repr(model).encode("utf-8")).hexdigest()[:16]
    return Signature(list(sd), [list(t.shape) for t in sd.values()], struct)


class SignatureCache:
    """A JSON file of signatures; a corrupt file is ignored (rebuilt), an unwritable location just not written."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.path = (directory or cache_dir()) / f"signatures-{name}.json"
        self.entries: dict[str, Any] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text("utf-8"))
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("models"), dict):
                self.entries = data["models"]
        except (OSError, ValueError, UnicodeDecodeError):
            pass

    def get(self, name: str) -> Signature | None | str:
        """The signature, ``"error"`` when building it failed before, ``None`` when not cached."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        if isinstance(entry, dict) and entry.get("error"):
            return "error"
        sig = Signature.from_json(entry)
        return sig

    def put(self, name: str, value: Signature | str) -> None:
        self.entries[name] = {"error": value} if isinstance(value, str) else value.to_json()
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"version": CACHE_VERSION, "models": self.entries}, separators=(",", ":")), "utf-8")
            self.dirty = False
        except (OSError, ShiftAuditError):
            pass  # a read-only home is fine: identification just stays cold


_OPEN_CACHES: dict[Path, SignatureCache] = {}


def _open_cache(name: str) -> SignatureCache:
    """One cache object per file and process, so repeated identification does not re-read the JSON."""
    path = cache_dir() / f"signatures-{name}.json"
    cache = _OPEN_CACHES.get(path)
    if cache is None:
        cache = _OPEN_CACHES[path] = SignatureCache(name, path.parent)
    return cache


def _versions_tag(*mods: str) -> str:
    import importlib

    parts = []
    for m in mods:
        try:
            parts.append(f"{m}-{importlib.import_module(m).__version__}")
        except Exception:
            parts.append(f"{m}-unknown")
    return "_".join(p.replace("+", "-").replace("/", "-") for p in parts)


def _signature(cache: SignatureCache, arch: str) -> Signature | None:
    cached = cache.get(arch)
    if isinstance(cached, Signature):
        return cached
    if cached == "error":
        return None
    try:
        sig = signature_of(build_skeleton(arch, SENTINEL_CLASSES))
    except Exception as exc:  # a builder that needs arguments we cannot guess: remember and move on
        cache.put(arch, f"{type(exc).__name__}: {str(exc)[:100]}")
        return None
    cache.put(arch, sig)
    return sig


@dataclass
class Candidate:
    arch: str
    differences: int  # keys present on one side only, plus shape mismatches
    num_classes: int | None = None
    struct: str = ""
    matched: int = 0  # keys on both sides with the same shape
    union: int = 0  # keys on either side

    @property
    def overlap(self) -> float:
        """Fraction of all keys (checkpoint's and candidate's) that match by name and shape."""
        return self.matched / self.union if self.union else 0.0


def compare(sig: Signature, ck: Mapping[str, list[int]]) -> Candidate:
    """How far a checkpoint's (significant) keys/shapes are from a signature; the class count where they agree."""
    want = sig.significant()
    diff = len(want.keys() ^ ck.keys())
    n: int | None = None
    mismatched = 0
    both = 0
    for key, shape in want.items():
        got = ck.get(key)
        if got is None:
            continue
        both += 1
        if len(got) != len(shape):
            mismatched += 1
            continue
        for a, b in zip(shape, got):
            if a == SENTINEL_CLASSES:
                if n is None:
                    n = b
                elif n != b:
                    mismatched += 1
                    break
            elif a != b:
                mismatched += 1
                break
    return Candidate("", diff + mismatched, n, sig.struct, matched=both - mismatched, union=len(want.keys() | ck.keys()))


@dataclass
class IdentifyResult:
    """``arch`` is the identified architecture or ``None``; ``candidates`` the closest ones, best first."""

    arch: str | None
    num_classes: int | None
    candidates: list[Candidate] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    seconds: float = 0.0
    searched: int = 0
    family: str | None = None  # a checkpoint family recognised by its own marks (antialiased-cnns), not by a search
    family_message: str = ""

    def explain(self, source: str) -> str:
        """One sentence for the user when identification failed."""
        if self.family:
            return f"{source} {self.family_message}"
        if len(self.matches) > 1:
            return (
                f"Cannot tell the architecture of {source} from its weights: it fits {', '.join(self.matches[:5])} "
                f"equally well; pass --arch."
            )
        useful = [c for c in self.candidates if c.overlap >= USEFUL_OVERLAP]
        tip = "" if timm_available() else " (timm is not installed, so only torchvision architectures were tried)"
        if not useful:
            return (
                f"Could not identify the architecture of {source} from its weights{tip}: unknown architecture, no "
                f"known one shares even half of its keys; pass --arch (a torchvision name, timm:NAME or package.module:factory)."
            )
        close = ", ".join(f"{c.arch} ({c.differences} key{'s' if c.differences != 1 else ''} differ)" for c in useful[:3])
        return f"Could not identify the architecture of {source} from its weights{tip}; closest candidates: {close}; pass --arch."


def _timm_prefilter(names: Iterable[str], ck_keys: set[str]) -> list[str]:
    """timm models whose first conv and classifier (as named in their pretrained config) exist in the checkpoint."""
    from timm.models import get_pretrained_cfg

    prefixes: set[str] = set()
    for key in ck_keys:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    out = []
    for name in names:
        try:
            cfg = get_pretrained_cfg(name)
        except Exception:
            cfg = None
        if cfg is None:
            continue
        ok = True
        for attr in ("first_conv", "classifier"):
            value = getattr(cfg, attr, None)
            mods = [value] if isinstance(value, str) else list(value or [])
            if any(m and m not in prefixes for m in mods):
                ok = False
                break
        if ok:
            out.append(name)
    return out


def _search(names: list[str], cache: SignatureCache, ck: dict[str, list[int]], label: Any = lambda n: n) -> list[Candidate]:
    found = []
    try:
        for i, name in enumerate(names):
            sig = _signature(cache, label(name))
            if sig is None:
                continue
            c = compare(sig, ck)
            c.arch = label(name)
            found.append(c)
            if cache.dirty and i % 50 == 49:
                cache.save()  # keep progress if interrupted
    finally:
        cache.save()
    return found


def identify_architecture(state_dict: Mapping[str, torch.Tensor], *, include_timm: bool = True) -> IdentifyResult:
    """Find the architecture whose keys and shapes match ``state_dict`` exactly (any class count).

    Exactly one match, or several with the same structure (aliases), identifies it; otherwise ``arch`` is None
    and ``candidates``/``matches`` say what came closest.
    """
    start = time.perf_counter()
    tensors = strip_prefixes({k: t for k, t in state_dict.items() if isinstance(t, torch.Tensor)}, [])
    ck = {k: list(t.shape) for k, t in tensors.items() if not k.endswith(NBT)}
    family = recognise_antialiased_cnns(ck)
    if family is not None:
        return IdentifyResult(None, None, family="antialiased-cnns", family_message=family, seconds=time.perf_counter() - start)
    results: list[Candidate] = []
    searched = 0

    tv_cache = _open_cache(_versions_tag("torch", "torchvision"))
    tv = _search(list(torchvision_names()), tv_cache, ck)
    searched += len(tv)
    results += tv
    result = _decide(tv)
    if result is None and include_timm and timm_available():
        timm_cache = _open_cache(_versions_tag("torch", "timm"))
        names = _timm_prefilter(timm_names(), set(ck))
        found = _search(names, timm_cache, ck, label=lambda n: n if n.startswith(TIMM_PREFIX) else TIMM_PREFIX + n)
        searched += len(found)
        results += found
        result = _decide(found)
    if result is None:
        exact = [c for c in results if c.differences == 0]
        ranked = sorted(results, key=lambda c: (c.differences, c.arch))
        result = IdentifyResult(None, None, ranked[:5], [c.arch for c in exact])
    result.seconds = time.perf_counter() - start
    result.searched = searched
    return result


def recognise_antialiased_cnns(ck: Mapping[str, list[int]]) -> str | None:
    """antialiased-cnns (Zhang's reference code) keeps each BlurPool's filter as a persistent ``filt`` buffer of shape
    (C, 1, k, k), in Sequentials that shift the torchvision names (``maxpool.1.filt``, ``layer2.0.conv2.1.weight``).
    Such a checkpoint is not a torchvision model with extra keys: say what it is and how to load it."""
    filts = [k for k, shape in ck.items() if (k == "filt" or k.endswith(".filt")) and len(shape) == 4 and shape[1] == 1]
    if not filts:
        return None
    sizes = sorted({ck[k][-1] for k in filts})
    size = str(sizes[0]) if len(sizes) == 1 else "/".join(map(str, sizes))
    kw = f" --arch-kwargs '{{\"filter_size\": {sizes[0]}}}'" if len(sizes) == 1 else ""
    return (
        f"is an antialiased-cnns checkpoint ({len(filts)} BlurPool filter buffers of size {size}, such as {filts[0]}), "
        f"not a torchvision model: load it with the antialiased-cnns definition, e.g. `pip install antialiased-cnns` and "
        f"--arch antialiased_cnns:<model>{kw}, or your own copy of the code via --arch package.module:factory."
    )


def _decide(found: list[Candidate]) -> IdentifyResult | None:
    exact = sorted((c for c in found if c.differences == 0), key=lambda c: (len(c.arch), c.arch))
    if not exact:
        return None
    if len({c.struct for c in exact}) == 1:  # one architecture, possibly under several names
        return IdentifyResult(exact[0].arch, exact[0].num_classes, exact, [c.arch for c in exact])
    return IdentifyResult(None, None, exact, [c.arch for c in exact])
