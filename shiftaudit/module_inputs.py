"""What a module was called with, as forward hooks see it.

A hook registered with ``with_kwargs=True`` gets the positional and the keyword arguments apart, so a layer called
as ``self.pool(input=x)`` is seen too: without them its hook gets an empty tuple and the layer is silently missed
(by inspection, by the per-layer distances) or breaks (a blur put before it).
"""

from __future__ import annotations

from typing import Any

import torch


def tensor_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int | str, torch.Tensor] | None:
    """Where the module's input tensor is (a position or a keyword) and the tensor: the first positional argument,
    else the first keyword argument that is a tensor; None when there is none."""
    if args:
        return (0, args[0]) if isinstance(args[0], torch.Tensor) else None
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return key, value
    return None


def input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    found = tensor_argument(args, kwargs)
    return None if found is None else found[1]
