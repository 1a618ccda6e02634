"""Patch methods by name (``shiftaudit patch --method``): what replaces the subsampling of a strided layer.

* ``blurpool``: blur, then subsample at phase 0 (the paper's §3.2; default filter tri3, reflect padding).
* ``aps``: adaptive polyphase sampling, optionally after a blur (default: no blur, circular padding), with each
  residual shortcut following its main path's phase.

A method is one :class:`PatchMethod` and one :func:`register_patch_method` call; the rewrite asks it for the layer
to insert and, once every layer is patched, for any wiring between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from shiftaudit.errors import UsageError

if TYPE_CHECKING:
    from shiftaudit.antialias.config import PatchConfig


@dataclass(frozen=True)
class PatchMethod:
    name: str
    label: str  # in rules: "MaxPool(s2) -> MaxPool(s1) + BlurPool(s2)"
    short: str  # in actions: "dense pool + blur"
    default_filter: str
    default_pad: str
    make: Callable[[PatchConfig, int | None, int], nn.Module]  # (config, channels, stride) -> subsampling layer
    finish: Callable[[nn.Module, list[Any]], list[str]] | None = None  # (patched model, steps) -> notes


_METHODS: dict[str, PatchMethod] = {}


def register_patch_method(method: PatchMethod) -> PatchMethod:
    _METHODS[method.name] = method
    return method


def patch_method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get_patch_method(name: str) -> PatchMethod:
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise UsageError(f"Unknown patch method {name!r}; choose one of: {', '.join(_METHODS)}.") from None


def _blurpool(cfg: PatchConfig, channels: int | None, stride: int) -> nn.Module:
    from shiftaudit.antialias.blurpool import BlurPool2d

    assert cfg.filter is not None  # PatchConfig fills in the method's default
    return BlurPool2d(channels=channels, filt=cfg.filter, stride=stride, pad_mode=cfg.pad)


def _aps(cfg: PatchConfig, channels: int | None, stride: int) -> nn.Module:
    from shiftaudit.antialias.aps import APSDown2d

    return APSDown2d(stride=stride, filt=str(cfg.filter), pad_mode=cfg.pad, channels=channels)


def _link_aps(model: nn.Module, steps: list[Any]) -> list[str]:
    from shiftaudit.antialias.rewrite import link_aps_shortcuts

    return link_aps_shortcuts(model, steps)


# tri3: chosen by the post-hoc trade-off in docs/patching.md
register_patch_method(PatchMethod("blurpool", "BlurPool", "blur", "tri3", "reflect", _blurpool))
register_patch_method(PatchMethod("aps", "APS", "APS", "delta", "circular", _aps, _link_aps))
