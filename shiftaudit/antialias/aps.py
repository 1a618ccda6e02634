"""Adaptive polyphase sampling (APS; Chaman & Dokmanic, CVPR 2021): subsample at the phase of largest norm.

A stride-s subsampling keeps one of s² polyphase components (phase (i, j): rows i, i+s, ...; columns j, j+s, ...).
Plain subsampling always keeps phase (0, 0), so a one-pixel shift of the input changes which samples survive.
APS keeps, per image, the component with the largest l2 norm instead. A circular shift of the input permutes the
components (and shifts each circularly), so the same content is kept and the layer becomes exactly equivariant;
with circular padding everywhere and a global pool at the end, the network is exactly shift-invariant.

In a residual block the shortcut must keep the phase the main path chose, or the two branches would be added out
of register: a shortcut's APS layer *follows* the main path's (it reads the phase chosen on the same images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.antialias.blurpool import BlurPool2d


class APSDown2d(nn.Module):
    """Optional stride-1 blur, then keep the polyphase component of largest norm (or the leader's phase)."""

    def __init__(self, stride: int = 2, filt: str = "delta", pad_mode: str = "circular", channels: int | None = None) -> None:
        super().__init__()
        self.stride = int(stride)
        self.filt = filt
        self.blur = BlurPool2d(channels=channels, filt=filt, stride=1, pad_mode=pad_mode) if filt != "delta" else None
        self._leader: list[APSDown2d] = []  # a plain list, so the leader is not registered as a submodule twice
        self.last_phase: torch.Tensor | None = None

    def follow(self, leader: APSDown2d) -> None:
        """Use the phase ``leader`` chose on the same batch (a shortcut following its block's main path)."""
        self._leader[:] = [leader]

    @property
    def leader(self) -> APSDown2d | None:
        return self._leader[0] if self._leader else None

    def extra_repr(self) -> str:
        follow = ", follows the main path" if self._leader else ""
        return f"stride={self.stride}, filt={self.filt}{follow}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur is not None:
            x = self.blur(x)
        s = self.stride
        n, c, h, w = x.shape
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:  # circular padding to a multiple of the stride: output ceil(H / s), like BlurPool
            x = F.pad(x, (0, pw, 0, ph), mode="circular")
            h, w = h + ph, w + pw
        comps = x.reshape(n, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).reshape(n, s * s, c, h // s, w // s)
        leader = self.leader
        if leader is None:
            norms = comps.float().pow(2).sum(dim=(2, 3, 4))
            phase = norms.argmax(dim=1)
            self.last_phase = phase
        else:
            last = leader.last_phase
            if last is None or last.shape[0] != n:
                raise RuntimeError("An APS shortcut ran before the main path that chooses its phase.")
            phase = last
        return comps[torch.arange(n, device=x.device), phase]
