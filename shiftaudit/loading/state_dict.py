"""From whatever a training script saved to a clean ``{name: tensor}`` dict, and into a model by name.

Training code wraps weights in many ways (``{"state_dict": ...}``, EMA copies, ``module.`` from DataParallel,
``_orig_mod.`` from ``torch.compile``); we undo the common ones and say so in notes. Loading is strict, and a
mismatch is reported by key name and shape rather than torch's multi-line traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from shiftaudit.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema_model", "ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
NBT = "num_batches_tracked"

StateDict = dict[str, torch.Tensor]


def extract_state_dict(obj: Any, source: str, notes: list[str], _depth: int = 0) -> StateDict | nn.Module:
    """The weights inside a loaded checkpoint object: a flat tensor dict, or a whole module (pickles only)."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(f"Checkpoint {source} holds a single tensor, not a model's weights.")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"Checkpoint {source} holds a {type(obj).__name__}, not a state dict or model.")
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    if _depth < 3 and tensors * 2 <= len(obj):  # mostly non-tensors: a training checkpoint wrapping the weights
        ema = [k for k in EMA_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))]
        for key in (*WRAPPER_KEYS, *ema):
            inner = obj.get(key)
            if not isinstance(inner, (Mapping, nn.Module)):
                continue
            try:
                result = extract_state_dict(inner, source, notes, _depth + 1)
            except CheckpointError:
                continue
            if key in EMA_KEYS:
                notes.append(f"weights taken from the checkpoint's EMA entry {key!r}")
            else:
                also = f" (the EMA copy {ema[0]!r} is not used)" if ema else ""
                notes.append(f"weights taken from the checkpoint's {key!r} entry{also}")
            return result
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise CheckpointError(f"Checkpoint {source} contains no tensors (top-level keys: {keys or 'none'}).")
    dropped = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        more = ", …" if len(dropped) > 3 else ""
        entries = "entry" if len(dropped) == 1 else "entries"
        notes.append(f"ignored {len(dropped)} non-tensor {entries} ({', '.join(dropped[:3])}{more})")
    return sd


def strip_prefixes(sd: StateDict, notes: list[str]) -> StateDict:
    """Remove ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) when every key carries them."""
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                notes.append(f"stripped the {prefix!r} prefix from every key")
                changed = True
    return sd


_CLASSIFIER_EXACT = (
    "fc.weight",
    "classifier.weight",
    "head.weight",
    "head.fc.weight",
    "heads.head.weight",
    "last_linear.weight",
    "logits.weight",
    "classif.weight",
    "head.linear.weight",
    "head.l.weight",
)
_CLASSIFIER_SEQ = re.compile(r"^(classifier|head|fc)\.(\d+)\.weight$")
_CLASSIFIER_LOOSE = re.compile(r"(^|\.)(fc|classifier|head|logits|last_linear)(\.\d+)?\.weight$")


def classifier_key(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The key of the final classification weight, by naming convention (torchvision and timm)."""

    def ok(key: str) -> bool:
        t = sd[key]
        return t.dim() == 2 or (t.dim() == 4 and tuple(t.shape[2:]) == (1, 1))

    for key in _CLASSIFIER_EXACT:
        if key in sd and ok(key):
            return key
    seq = [(int(m.group(2)), k) for k in sd if (m := _CLASSIFIER_SEQ.match(k)) and ok(k)]
    if seq:
        return max(seq)[1]
    loose = [k for k in sd if _CLASSIFIER_LOOSE.search(k) and "aux" not in k.lower() and "dist" not in k and ok(k)]
    if loose:
        return loose[-1]
    # unnamed layers (nn.Sequential): the last Linear-shaped weight, if it is also the last weight of all
    weights = [k for k in sd if k.endswith(".weight") and sd[k].dim() >= 1]
    if weights and sd[weights[-1]].dim() == 2:
        return weights[-1]
    return None


def infer_num_classes(sd: Mapping[str, torch.Tensor]) -> tuple[int | None, str | None]:
    """``(num_classes, key)`` from the classifier weight's first dimension, or ``(None, None)``."""
    key = classifier_key(sd)
    if key is None:
        return None, None
    return int(sd[key].shape[0]), key


def _significant(keys: Any) -> set[str]:
    return {k for k in keys if not k.endswith(NBT)}


def align_keys(sd: StateDict, model_keys: set[str], notes: list[str]) -> StateDict:
    """Drop or add one shared leading component (``model.``, ``backbone.`` …) when that makes the key sets agree."""
    ck = _significant(sd)
    want = _significant(model_keys)
    if ck == want or not ck:
        return sd
    firsts = {k.split(".", 1)[0] for k in sd}
    if len(firsts) == 1 and all("." in k for k in sd):
        prefix = next(iter(firsts)) + "."
        if {k[len(prefix) :] for k in ck} == want:
            notes.append(f"stripped the {prefix!r} prefix from every key")
            return {k[len(prefix) :]: v for k, v in sd.items()}
    mfirsts = {k.split(".", 1)[0] for k in want}
    if len(mfirsts) == 1:
        prefix = next(iter(mfirsts)) + "."
        if {prefix + k for k in ck} == want:
            notes.append(f"added the {prefix!r} prefix the model expects")
            return {prefix + k: v for k, v in sd.items()}
    return sd


def _dtype_names(dtypes: set[torch.dtype]) -> str:
    return "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", …" if len(keys) > limit else "")


def load_weights(
    model: nn.Module, sd: StateDict, *, label: str, source: str, hint: str | Callable[[], str | None] | None = None
) -> list[str]:
    """Load ``sd`` into ``model`` strictly; on mismatch raise one sentence naming the first offending keys.

    ``hint`` (or a function computing it, called only on failure) ends the sentence, e.g. a better architecture.
    """
    notes: list[str] = []
    model_sd = model.state_dict()
    sd = align_keys(sd, set(model_sd), notes)
    missing = [k for k in model_sd if k not in sd and not k.endswith(NBT)]
    unexpected = [k for k in sd if k not in model_sd]

    def tail() -> str:
        text = hint() if callable(hint) else hint
        return f"; {text}." if text else "; is the architecture right?"

    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} model key{'s' if len(missing) != 1 else ''} missing from the checkpoint ({_names(missing)})"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected checkpoint key{'s' if len(unexpected) != 1 else ''} ({_names(unexpected)})"
            )
        raise CheckpointError(f"Checkpoint {source} does not fit {label}: {' and '.join(parts)}{tail()}")
    mismatched = [
        (k, tuple(sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        _, head = infer_num_classes(sd)
        keys = {k for k, _, _ in mismatched}
        if head and head in keys and all(k.startswith(head.rsplit(".", 1)[0] + ".") for k in keys):
            ck_n = sd[head].shape[0]
            model_n = model_sd[head].shape[0]
            raise CheckpointError(
                f"Checkpoint {source} has {ck_n} classes ({head} is {list(sd[head].shape)}) but {label} was built with "
                f"{model_n}; pass --num-classes {ck_n} or leave --num-classes out."
            )
        k, a, b = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"Checkpoint {source} does not fit {label}: shape mismatch for {k}, checkpoint {list(a)} vs model {list(b)}{more}"
            f"{tail()}"
        )
    dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
    model_dtypes = {t.dtype for t in model_sd.values() if t.is_floating_point()}
    if dtypes and model_dtypes and dtypes != model_dtypes:
        notes.append(f"weights stored as {_dtype_names(dtypes)}, loaded as {_dtype_names(model_dtypes)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        line = str(exc).strip().splitlines()
        detail = " ".join(s.strip() for s in line[:2])[:300]
        raise CheckpointError(f"Checkpoint {source} does not fit {label} ({detail}).") from None
    return notes
