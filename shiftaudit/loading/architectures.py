"""Architectures users name by string: torchvision names, ``timm:NAME`` and ``package.module:factory``.

Weights are never downloaded: torchvision builders get ``weights=None`` and timm ``pretrained=False``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import UsageError

TIMM_PREFIX = "timm:"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@functools.lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification model names (detection, segmentation … live in submodules and are excluded)."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _require_timm(arch: str) -> Any:
    try:
        import timm
    except ImportError:
        raise UsageError(
            f"Architecture {arch!r} needs timm, which is not installed; run `pip install shiftaudit[timm]`."
        ) from None
    return timm


def kind_of(arch: str) -> str:
    """``torchvision``, ``timm`` or ``factory``."""
    if arch.lower().startswith(TIMM_PREFIX):
        return "timm"
    if ":" in arch:
        return "factory"
    return "torchvision"


def _suggest(name: str, choices: Any, n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)


def canonical_arch(arch: str) -> str:
    """Normalise spelling (torchvision names are case-insensitive) and reject unknown names with suggestions."""
    arch = arch.strip()
    if not arch:
        raise UsageError("--arch is empty; name an architecture such as resnet18.")
    kind = kind_of(arch)
    if kind == "timm":
        name = arch[len(TIMM_PREFIX) :]
        timm = _require_timm(arch)
        if not timm.is_model(name):
            close = _suggest(name, timm_names())
            tip = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else "; see timm.list_models()."
            raise UsageError(f"Unknown timm architecture {name!r}{tip}")
        return TIMM_PREFIX + name
    if kind == "factory":
        if not _FACTORY_RE.match(arch):
            raise UsageError(f"Architecture {arch!r} is not of the form package.module:factory.")
        return arch
    name = arch.lower()
    if name in torchvision_names():
        return name
    close = _suggest(name, torchvision_names())
    if timm_available() and name in timm_names():
        close = [TIMM_PREFIX + name, *close]
    if close:
        raise UsageError(f"Unknown architecture {arch!r}; did you mean {', '.join(close)}?")
    raise UsageError(f"Unknown architecture {arch!r}; use a torchvision name (resnet18), timm:NAME or package.module:factory.")


def _import_factory_module(module_name: str, arch: str) -> Any:
    """Import ``module_name`` with the current folder importable too (``python -m`` would allow it; a console script
    does not put the working directory on ``sys.path``)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if missing == module_name or module_name.startswith(missing + "."):
            raise UsageError(
                f"Cannot import module {module_name!r} for architecture {arch!r}: it is not in the current folder "
                f"({cwd}) nor on the Python path; run from the folder that holds it or set PYTHONPATH to that folder."
            ) from None
        raise UsageError(
            f"Cannot import module {module_name!r} for architecture {arch!r}: it needs {missing!r}, which is not installed."
        ) from None
    except ImportError as exc:
        raise UsageError(f"Cannot import module {module_name!r} for architecture {arch!r} ({exc}).") from None
    except Exception as exc:
        raise UsageError(
            f"Importing module {module_name!r} for architecture {arch!r} failed: {type(exc).__name__}: {str(exc).strip()[:200]}."
        ) from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def parse_arch_kwargs(text: str | None, flag: str = "--arch-kwargs") -> dict[str, Any] | None:
    """``--arch-kwargs '{"model_name": "efficientnet-lite0"}'``: a JSON object of keyword arguments for the builder."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise UsageError(
            f'{flag} must be a JSON object such as \'{{"model_name": "efficientnet-lite0"}}\', '
            f"and {text[:80]!r} is not valid JSON."
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object of keyword arguments (in braces), not a {type(value).__name__}.")
    bad = [k for k in value if not (k.isidentifier() and not k.startswith("_"))]
    if bad:
        raise UsageError(f"{flag} keys must be argument names, and {bad[0]!r} is not.")
    if "num_classes" in value:
        raise UsageError(f"{flag} cannot set num_classes; pass --num-classes instead.")
    return value


def resolve_factory(arch: str) -> Callable[..., Any]:
    module_name, _, attr = arch.partition(":")
    obj: Any = _import_factory_module(module_name, arch)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"Module {module_name!r} has no attribute {attr!r} (architecture {arch!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{arch!r} is not callable; point --arch at a function or class that returns an nn.Module.")
    return obj


def _missing_arguments(fn: Any, given: dict[str, Any]) -> list[str]:
    """The arguments ``fn`` requires (no default) that ``given`` leaves out; none when its signature cannot be read."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in given]


def accepts_num_classes(arch: str) -> bool:
    """Whether ``num_classes`` can be passed when building ``arch`` (always for torchvision and timm)."""
    if kind_of(arch) != "factory":
        return True
    try:
        sig = inspect.signature(resolve_factory(arch))
    except (TypeError, ValueError):
        return False
    return "num_classes" in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def build_model(arch: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A freshly initialised model (CPU, eval mode) for ``arch``; never downloads weights."""
    model = _construct(canonical_arch(arch), num_classes, kwargs)
    return model.eval()


def _construct(arch: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    kind = kind_of(arch)
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = int(num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "timm":
            timm = _require_timm(arch)
            extra.pop("pretrained", None)
            try:
                model = timm.create_model(arch[len(TIMM_PREFIX) :], pretrained=False, **extra)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"Cannot build {arch} with {sorted(extra)}: {exc}.") from None
        elif kind == "factory":
            fn = resolve_factory(arch)
            try:
                inspect.signature(fn).bind(**extra)
            except TypeError as exc:
                missing = _missing_arguments(fn, extra)
                if missing:
                    example = json.dumps({name: "..." for name in missing})
                    raise UsageError(
                        f"Factory {arch} needs the argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which "
                        f"neither the checkpoint nor --arch-kwargs gives; pass --arch-kwargs '{example}' (arch_kwargs= "
                        "in Python)."
                    ) from None
                raise UsageError(f"Factory {arch} does not accept the arguments {sorted(extra)} ({exc}).") from None
            except ValueError:
                pass  # builtins without a signature: just call
            try:
                model = fn(**extra)
            except Exception as exc:
                raise UsageError(f"Factory {arch} failed: {type(exc).__name__}: {str(exc).strip()[:200]}.") from None
            if not isinstance(model, nn.Module):
                raise UsageError(f"Factory {arch} returned a {type(model).__name__}, not a torch.nn.Module.")
        else:
            import torchvision

            extra.pop("weights", None)
            try:
                model = torchvision.models.get_model(arch, weights=None, **extra)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"Cannot build {arch} with {sorted(extra)}: {exc}.") from None
    return model


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Create big tensors on the meta device, keep small ones real.

    ``with torch.device("meta")`` breaks builders that compute their layout with tensor ops and ``.tolist()``
    (torchvision's RegNets); those computations use small tensors, parameters are big ones.
    """

    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.full, torch.empty_strided}

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            size: Any = kwargs.get("size", args[0] if args else ())
            if isinstance(size, int):
                size = tuple(a for a in args if isinstance(a, int))
            try:
                numel = math.prod(int(s) for s in size)
            except (TypeError, ValueError):
                numel = 0
            if numel >= 256:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _NoFillsOnMeta(TorchFunctionMode):
    """Skip the random initialisers on meta tensors: they have no values to fill, yet torch runs each through its
    reference decomposition, which was two thirds of building a skeleton (torchvision's 80 models: 37 s -> 15 s,
    identical signatures). A torch function mode is thread-local, so no other thread's initialisation is touched."""

    FILLS = frozenset({"normal_", "uniform_", "random_", "exponential_", "log_normal_", "cauchy_", "bernoulli_", "erfinv_"})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", None) in self.FILLS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def build_skeleton(arch: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """The model without real storage (meta device): enough for its state-dict names and shapes, cheaply."""
    arch = canonical_arch(arch)
    try:
        with _quiet(), torch.device("meta"), _NoFillsOnMeta():
            return _construct(arch, num_classes, kwargs)
    except UsageError:
        raise
    except Exception:
        with _quiet(), _LargeTensorsOnMeta():
            return _construct(arch, num_classes, kwargs)


def timm_preprocessing(model: nn.Module, arch: str) -> Preprocessing | None:
    """The input size/normalisation timm recorded for this architecture (its ``pretrained_cfg``)."""
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    try:  # a missing or malformed entry: None, like no pretrained_cfg at all
        _, h, w = (int(v) for v in cfg["input_size"])
        crop = float(cfg.get("crop_pct") or 0.875)
        return Preprocessing(
            size=(h, w),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            resize=int(math.floor(min(h, w) / crop)) if crop < 1 else None,
            name=arch,
        )
    except Exception:
        return None
