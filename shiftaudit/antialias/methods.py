"""Patch methods by name (``shiftaudit patch --method``): what replaces the subsampling of a strided layer.

* ``blurpool``: blur, then subsample at phase 0 (the paper's §3.2; default filter tri3, reflect padding).
* ``aps``: adaptive polyphase sampling, optionally after a blur (default: no blur, circular padding), with each
  residual shortcut following its main path's phase.

A method is one :class:`PatchMethod` and one :func:`register_patch_method` call; the rewrite asks it for the layer
to insert and, once every layer is patched, for any wiring between them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from shiftaudit.antialias.aps import APSDown2d
from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.antialias.config import (  # the registry sits below the rewrite, which asks it
    PatchConfig,
    PatchMethod,
    get_patch_method,
    patch_method_names,
    register_patch_method,
)
from shiftaudit.antialias.rewrite import link_aps_shortcuts

__all__ = ["PatchMethod", "get_patch_method", "patch_method_names", "register_patch_method"]


def _blurpool(cfg: PatchConfig, channels: int | None, stride: int) -> nn.Module:
    assert cfg.filter is not None  # PatchConfig fills in the method's default
    return BlurPool2d(channels=channels, filt=cfg.filter, stride=stride, pad_mode=cfg.pad)


def _aps(cfg: PatchConfig, channels: int | None, stride: int) -> nn.Module:
    return APSDown2d(stride=stride, filt=str(cfg.filter), pad_mode=cfg.pad, channels=channels)


def _link_aps(model: nn.Module, steps: list[Any]) -> list[str]:
    return link_aps_shortcuts(model, steps)


# tri3: chosen by the post-hoc trade-off in docs/patching.md
register_patch_method(PatchMethod("blurpool", "BlurPool", "blur", "tri3", "reflect", _blurpool))
register_patch_method(PatchMethod("aps", "APS", "APS", "delta", "circular", _aps, _link_aps))
