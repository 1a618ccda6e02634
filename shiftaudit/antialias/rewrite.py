"""Find the strided layers of any nn.Module and put a blur between the dense operation and the subsampling.

Rules (§3.2 of the paper, App. C: blur *after* the dense op, never before the pool):

* strided MaxPool(k, s) -> MaxPool(k, 1) + BlurPool(s); strided AvgPool(k, s) -> AvgPool(k, 1) + BlurPool(s);
* strided Conv(s) -> Conv(1) + BlurPool(s), the blur after the norm/activation that directly follows the conv
  when the traced graph shows one (the paper's ConvBlurPool), else right after the conv;
* strided 1x1 conv (a ResNet shortcut) -> BlurPool(s) then the conv at stride 1;
* global/adaptive pooling is left alone.

Existing modules stay where they are (a strided conv gets stride 1 in place) and blurs hold no persistent
tensors, so the original checkpoint loads into the patched model by name, strict. Pools and shortcuts are
patched by plain module replacement; a conv whose blur belongs after its norm/activation needs the graph, so the
model is then traced with torch.fx into a GraphModule with the same module names. When tracing fails, the blur
goes right after the conv and the report says why.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import operator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from shiftaudit.antialias.aps import APSDown2d
from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.antialias.config import PLAN_SPEC_VERSION, SPEC_VERSION, PatchConfig, PatchPlan, get_patch_method
from shiftaudit.antialias.modules import BlurThenConv2d, ConvThenBlur2d, PoolBlur2d
from shiftaudit.errors import UsageError, first_line
from shiftaudit.module_inputs import tensor_argument
from shiftaudit.sizes import pair

_OUR_MODULES = (BlurPool2d, PoolBlur2d, ConvThenBlur2d, BlurThenConv2d, APSDown2d)
_ACT_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.Mish,
    nn.Hardtanh,
    nn.CELU,
    nn.SELU,
    nn.RReLU,
)
_ACT_FUNCTIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.hardtanh,
}
_ACT_METHODS = {"relu", "relu_"}


@dataclass
class PatchStep:
    """One strided layer: what the patch does to it, or why it leaves it alone."""

    name: str
    kind: str  # "maxpool", "avgpool", "conv", "stem", "shortcut"
    stride: int
    patched: bool
    reason: str = ""
    placed_after: str = ""  # the module/node after which the blur sits ("" for blur-before rules)
    blur: str = ""  # name of the inserted blur module
    method: str = "blurpool"

    @property
    def rule(self) -> str:
        s = self.stride
        down = f"{get_patch_method(self.method).label}(s{s})"
        return {
            "maxpool": f"MaxPool(s{s}) -> MaxPool(s1) + {down}",
            "avgpool": f"AvgPool(s{s}) -> AvgPool(s1) + {down}",
            "shortcut": f"{down} + Conv1x1(s1)",
        }.get(self.kind, f"Conv(s{s}) -> Conv(s1) + {down}")

    @property
    def action(self) -> str:
        if not self.patched:
            return f"skip: {self.reason}"
        down = get_patch_method(self.method).short
        if self.kind == "shortcut":
            return f"{down} before conv"
        if self.kind in ("maxpool", "avgpool"):
            return f"dense pool + {down}"
        where = self.placed_after if self.placed_after and self.placed_after != self.name else "conv"
        return f"{down} after {where}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "stride": self.stride,
            "patched": self.patched,
            "reason": self.reason,
            "rule": self.rule,
            "placed_after": self.placed_after,
            "blur": self.blur,
        }


@dataclass
class PatchResult:
    """The patched model, what happened at every strided layer, and the spec that rebuilds it."""

    model: nn.Module
    steps: list[PatchStep]
    config: PatchConfig
    mode: str  # "graph" (torch.fx) or "modules"
    notes: list[str] = field(default_factory=list)
    plan: PatchPlan | None = None  # a per-point plan (``config`` is then only the base that found the layers)

    @property
    def patched(self) -> list[PatchStep]:
        return [s for s in self.steps if s.patched]

    @property
    def skipped(self) -> list[PatchStep]:
        return [s for s in self.steps if not s.patched]

    @property
    def spec(self) -> dict[str, Any]:
        if self.plan is not None:
            return {
                "version": PLAN_SPEC_VERSION,
                "plan": self.plan.to_json(),
                "mode": self.mode,
                "patched": [s.name for s in self.patched],
            }
        return {"version": SPEC_VERSION, **self.config.to_json(), "mode": self.mode, "patched": [s.name for s in self.patched]}

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "steps": [s.to_json() for s in self.steps], "notes": list(self.notes)}


# -- finding the strided layers -------------------------------------------------------------------------------------
def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_patch(model: nn.Module, config: PatchConfig | None = None) -> list[PatchStep]:
    """Every strided conv/pool of ``model`` and the policy's decision for it (nothing is changed).

    The decisions depend on the modules only (no forward pass), so a saved patch spec rebuilds the same model.
    """
    cfg = config or PatchConfig()
    if isinstance(model, torch.jit.ScriptModule):
        raise UsageError("A TorchScript archive cannot be patched: load the weights as a state dict or safetensors with --arch.")
    modules = dict(model.named_modules())
    for pattern in (*cfg.only, *cfg.skip):
        if not any(_matches(n, (pattern,)) for n in modules if n):
            import difflib

            close = difflib.get_close_matches(pattern, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `shiftaudit inspect` lists the layers."
            raise UsageError(f"--only/--skip names {pattern!r}, which is no layer of the model{hint}")
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    inside_ours: set[str] = set()
    steps: list[PatchStep] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside_ours):
            continue
        if isinstance(m, _OUR_MODULES):
            inside_ours.add(name)
            continue
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
            stride = pair(m.stride if m.stride is not None else m.kernel_size)
        elif isinstance(m, nn.Conv2d):
            stride = pair(m.stride)
            kind = "shortcut" if pair(m.kernel_size) == (1, 1) else ("stem" if name == first_conv else "conv")
        else:
            continue
        if max(stride) <= 1:
            continue
        step = PatchStep(name=name, kind=kind, stride=max(stride), patched=True)
        if stride[0] != stride[1]:
            step.patched, step.reason = False, f"non-square stride {stride[0]}x{stride[1]}"
        elif cfg.only and not _matches(name, cfg.only):
            step.patched, step.reason = False, "not in --only"
        elif _matches(name, cfg.skip):
            step.patched, step.reason = False, "--skip"
        elif kind == "stem" and not cfg.stem:
            step.patched, step.reason = False, "stem (--stem)"
        elif kind == "shortcut" and not cfg.shortcuts:
            step.patched, step.reason = False, "shortcut (--shortcuts)"
        elif kind in ("maxpool", "avgpool") and not cfg.pools:
            step.patched, step.reason = False, "pools disabled"
        elif kind in ("conv", "stem") and not cfg.convs:
            step.patched, step.reason = False, "convs disabled"
        elif (
            kind in ("conv", "stem")
            and isinstance(m, nn.Conv2d)
            and m.kernel_size == m.stride
            and pair(m.padding) == (0, 0)
            and max(stride) >= 4
        ):
            step.patched, step.reason = False, "patchify conv (kernel = stride)"
        steps.append(step)
    return steps


# -- applying -------------------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """Convs and pools (subclasses included, e.g. timm's same-padding conv) and norm layers (timm's fused
    norm+activation) stay single nodes, so the graph shows what follows each strided layer."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*_OUR_MODULES, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            return True
        if "Norm" in type(m).__name__ and not any(isinstance(c, nn.Conv2d) for c in m.modules()):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    except Exception as exc:  # any tracing failure means: no graph, fall back to module replacement
        first = first_line(exc)
        return None, f"the model could not be traced with torch.fx ({type(exc).__name__}: {first[:120]})"
    _restore_unused(model, gm)
    if set(gm.state_dict()) != set(model.state_dict()):
        return None, "tracing with torch.fx would drop tensors of the state dict"
    return gm, ""


def _restore_unused(model: nn.Module, gm: fx.GraphModule) -> None:
    """Put back what the traced forward does not use (GoogLeNet's auxiliary heads in eval mode, say), so the
    patched model keeps every key of the original state dict."""
    have = dict(gm.named_modules())
    for name, module in model.named_modules():
        if not name or name in have:
            continue
        parent_name, _, leaf = name.rpartition(".")
        if parent_name and parent_name not in have:
            continue  # an ancestor was copied whole just now
        parent = gm.get_submodule(parent_name) if parent_name else gm
        setattr(parent, leaf, module)
        have.update({f"{name}.{n}" if n else name: m for n, m in module.named_modules()})
    gm_keys = set(gm.state_dict())
    for key, _ in model.state_dict().items():
        if key in gm_keys:
            continue
        owner_name, _, attr = key.rpartition(".")
        owner, target = model.get_submodule(owner_name), gm.get_submodule(owner_name)
        value = getattr(owner, attr)
        if isinstance(value, nn.Parameter):
            target.register_parameter(attr, value)
        elif isinstance(value, torch.Tensor):
            target.register_buffer(attr, value)
    for key in set(gm.state_dict()) - set(model.state_dict()):
        # fx registers every tensor attribute the graph reads as a buffer: keep the original's non-persistent ones so
        # (a relative-position index, say)
        owner_name, _, attr = key.rpartition(".")
        gm.get_submodule(owner_name)._non_persistent_buffers_set.add(attr)


def _is_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op != "call_module":
        return False
    m = modules.get(str(node.target))
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) or "Norm" in type(m).__name__


def _is_act(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        name = type(m).__name__
        return isinstance(m, _ACT_MODULES) or name.endswith(("ReLU", "SiLU", "Swish", "GELU", "Mish"))
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS
    return node.op == "call_method" and node.target in _ACT_METHODS


def _placement(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """The conv node, or the norm/activation that directly follows it (one each at most, single use)."""
    place, seen_norm, seen_act = node, False, False
    while len(place.users) == 1:
        user = next(iter(place.users))
        if not seen_norm and _is_norm(user, modules):
            seen_norm = True
        elif not seen_act and _is_act(user, modules):
            seen_act = True
        else:
            break
        place = user
        if seen_act:
            break
    return place


def _node_label(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _free_name(root: nn.Module, base: str) -> str:
    names = dict(root.named_modules())
    candidate, i = base, 1
    while candidate in names:
        candidate, i = f"{base}{i}", i + 1
    return candidate


def _make_blur(cfg: PatchConfig, channels: int | None, stride: int, like: nn.Module | None = None) -> nn.Module:
    """The subsampling layer the method asks for (e.g. BlurPool: blur + phase 0; APS: blur + best phase)."""
    blur = get_patch_method(cfg.method).make(cfg, channels, stride)
    if like is None:
        return blur
    ref = next(iter(like.parameters()), None)
    if ref is not None:
        blur = blur.to(device=ref.device)
    return blur


def _set_stride_one(conv: nn.Conv2d) -> None:
    conv.stride = (1, 1)


def link_aps_shortcuts(model: nn.Module, steps: list[PatchStep]) -> list[str]:
    """Each APS shortcut follows the main-path APS layer of its own block (the longest common name prefix)."""
    notes = []
    mains = [s for s in steps if s.patched and s.kind != "shortcut"]
    for short in (s for s in steps if s.patched and s.kind == "shortcut"):
        parent = short.name.split(".")[:-1]

        def shared(step: PatchStep, parent: list[str] = parent) -> int:
            n = 0
            for a, b in zip(step.name.split("."), parent):
                if a != b:
                    break
                n += 1
            return n

        best = max(mains, key=shared, default=None)
        follower = model.get_submodule(short.blur)
        block_depth = max(1, len(parent) - 1)  # e.g. "layer2.0" for "layer2.0.downsample.0"
        if best is None or shared(best) < block_depth:
            notes.append(f"{short.name}: no main-path subsampling in its block; it chooses its own phase")
            continue
        leader = model.get_submodule(best.blur.split(",")[0])
        if isinstance(leader, PoolBlur2d):
            leader = leader.blur
        if isinstance(follower, APSDown2d) and isinstance(leader, APSDown2d):
            follower.follow(leader)
    return notes


def _blur_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return cast(nn.Module, module.blur)(output)


def _blur_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Blur the conv's input, whether it came by position or by keyword (``conv(input=x)``)."""
    found = tensor_argument(args, kwargs)
    if found is None:
        return args, kwargs
    where, x = found
    blurred = cast(nn.Module, module.blur)(x)
    if isinstance(where, int):
        return (blurred, *args[1:]), kwargs
    return args, {**kwargs, where: blurred}


def make_convs_circular(model: nn.Module) -> int:
    """Give every zero-padded conv circular padding (the paper's setting); returns how many changed.

    Patched pools then wrap around as well (see :class:`PoolBlur2d`).
    """
    changed = 0
    for m in model.modules():
        if (
            isinstance(m, nn.Conv2d)
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
            and any(p > 0 for p in pair(m.padding))
        ):
            m.padding_mode = "circular"
            changed += 1
    return changed


def patch_model(model: nn.Module, config: PatchConfig | PatchPlan | None = None, *, inplace: bool = False) -> PatchResult:
    """Patch ``model`` by ``config`` (one config for every selected layer, or a per-point :class:`PatchPlan`); the
    input model is left untouched unless ``inplace``."""
    plan = config if isinstance(config, PatchPlan) else None
    cfg = PatchConfig(stem=True) if plan is not None else (config if isinstance(config, PatchConfig) else PatchConfig())
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise UsageError("Only a Python nn.Module can be patched (a TorchScript archive cannot).")
    steps = plan_patch(model, config=cfg)
    per_step = _plan_configs(steps, plan) if plan is not None else {}
    for step in steps:
        step.method = per_step.get(step.name, cfg).method
    if not inplace:
        model = copy.deepcopy(model)
    notes: list[str] = []
    was_training = model.training
    if cfg.circular_conv:
        n = make_convs_circular(model)
        notes.append(f"{n} convolutions now pad circularly (--circular-conv)")
        if cfg.pad != "circular":
            notes.append("the blur pads by reflection: use --pad circular as well for exact modulo-shift equivariance")
    todo = [s for s in steps if s.patched]
    convs = [s for s in todo if s.kind in ("conv", "stem")]

    gm, placements = _conv_graph(model, convs, notes) if convs else (None, {})
    root: nn.Module = gm if gm is not None else model
    for s in todo:
        _patch_step(root, gm, s, per_step.get(s.name, cfg), placements)
    if gm is not None:
        gm.graph.lint()
        gm.recompile()
        model = gm
    for method in dict.fromkeys(s.method for s in todo) if plan is not None else (cfg.method,):
        finish = get_patch_method(method).finish
        if finish is not None:
            notes.extend(finish(model, [s for s in steps if s.method == method]))
    model.train(was_training)
    mode = "graph" if gm is not None else "modules"
    return PatchResult(model=model, steps=steps, config=cfg, mode=mode, notes=notes, plan=plan)


def _plan_configs(steps: list[PatchStep], plan: PatchPlan) -> dict[str, PatchConfig]:
    """Each planned layer's one-method config; the steps the plan leaves out are marked so. A plan naming a layer that
    is no patchable strided layer of this model is refused."""
    wanted = plan.treatments()
    found = {s.name: s for s in steps}
    for name in wanted:
        if name not in found:
            raise UsageError(
                f"The patch plan names {name!r}, which is no strided layer of this model; `shiftaudit inspect` lists them."
            )
        if not found[name].patched:
            raise UsageError(f"The patch plan names {name!r}, which cannot be patched ({found[name].reason}).")
    for s in steps:
        if s.patched and s.name not in wanted:
            s.patched, s.reason = False, "not in the plan"
    return {name: t.config() for name, t in wanted.items()}


def _conv_graph(
    model: nn.Module, convs: list[PatchStep], notes: list[str]
) -> tuple[fx.GraphModule | None, dict[str, list[fx.Node]]]:
    """Convs need the graph to place the blur after their norm/activation: the traced model and each conv's call
    nodes, or no graph when tracing fails (noted) or no blur would move past anything (module replacement then keeps
    the model's own class)."""
    placements: dict[str, list[fx.Node]] = {}
    gm, why = _trace(model)
    if gm is None:
        notes.append(f"{why}: blurs go right after the strided convs, before their norm/activation")
    else:
        gm_modules = dict(gm.named_modules())
        for s in convs:
            nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == s.name]
            placements[s.name] = nodes
        if all(_placement(n, gm_modules) is n for nodes in placements.values() for n in nodes):
            gm = None  # nothing to move past: module replacement keeps the model's own class
    return gm, placements


def _patch_step(
    root: nn.Module, gm: fx.GraphModule | None, s: PatchStep, cfg: PatchConfig, placements: dict[str, list[fx.Node]]
) -> None:
    """Add the blur of one planned step to ``root`` (the graph when there is one), recording where it went in ``s``."""
    m = root.get_submodule(s.name)
    if s.kind in ("maxpool", "avgpool"):
        blur = _make_blur(cfg, None, s.stride)
        assert isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))  # what inspection calls a maxpool or avgpool
        _set_module(root, s.name, PoolBlur2d(m, blur, circular=cfg.circular_conv or cfg.pad == "circular"))
        s.blur = f"{s.name}.blur"
        return
    assert isinstance(m, nn.Conv2d)
    if s.kind == "shortcut":
        _blur_shortcut(root, s, m, cfg)
    elif gm is None:
        _blur_conv_output(root, s, m, cfg)
    else:
        _blur_in_graph(gm, s, m, cfg, placements.get(s.name, []))


def _blur_shortcut(root: nn.Module, s: PatchStep, m: nn.Conv2d, cfg: PatchConfig) -> None:
    """A strided 1x1 conv (a ResNet shortcut): the blur first, then the conv at stride 1."""
    blur = _make_blur(cfg, m.in_channels, s.stride, m)
    if type(m) is nn.Conv2d:
        _set_module(root, s.name, BlurThenConv2d.from_conv(m, blur))
    else:
        m.blur = blur
        _set_stride_one(m)
        m.register_forward_pre_hook(_blur_input, with_kwargs=True)
    s.blur = f"{s.name}.blur"


def _blur_conv_output(root: nn.Module, s: PatchStep, m: nn.Conv2d, cfg: PatchConfig) -> None:
    """Without a graph the blur goes right after the strided conv (before its norm/activation)."""
    blur = _make_blur(cfg, m.out_channels, s.stride, m)
    if type(m) is nn.Conv2d:
        _set_module(root, s.name, ConvThenBlur2d.from_conv(m, blur))
    else:  # a conv subclass with its own forward (timm's same padding): keep it, blur its output
        m.blur = blur
        _set_stride_one(m)
        m.register_forward_hook(_blur_output)
    s.blur, s.placed_after = f"{s.name}.blur", s.name


def _blur_in_graph(gm: fx.GraphModule, s: PatchStep, m: nn.Conv2d, cfg: PatchConfig, nodes: list[fx.Node]) -> None:
    """In the graph the blur goes after the conv's norm/activation (where the paper puts it), once per call of the
    conv; the conv itself then runs with stride 1."""
    if not nodes:
        s.patched, s.reason = False, "not called in the traced forward pass"
        return
    gm_modules = dict(gm.named_modules())
    blur_names = []
    for node in nodes:
        place = _placement(node, gm_modules)
        blur_name = _free_name(gm, f"{s.name}_blur")
        gm.add_submodule(blur_name, _make_blur(cfg, m.out_channels, s.stride, m))
        with gm.graph.inserting_after(place):
            blur_node = gm.graph.call_module(blur_name, (place,))
        # every use of ``place`` now reads the blur, except the blur itself
        place.replace_all_uses_with(blur_node, delete_user_cb=functools.partial(operator.is_not, blur_node))
        blur_names.append(blur_name)
        s.placed_after = _node_label(place)
    _set_stride_one(m)
    s.blur = ",".join(blur_names)


def patch(
    model: nn.Module,
    *,
    method: str = "blurpool",
    filter: str | None = None,
    pad: str | None = None,
    stem: bool = False,
    shortcuts: bool = True,
    circular_conv: bool = False,
    only: tuple[str, ...] | list[str] = (),
    skip: tuple[str, ...] | list[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """Return ``model`` with blur-before-subsampling at every strided layer (see :func:`patch_model` for the report)."""
    pad = pad or get_patch_method(method).default_pad
    cfg = PatchConfig(
        method=method,
        filter=filter,
        pad=pad,
        stem=stem,
        shortcuts=shortcuts,
        circular_conv=circular_conv,
        only=tuple(only),
        skip=tuple(skip),
    )
    return patch_model(model, cfg, inplace=inplace).model


def apply_patch_spec(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Rebuild the patched model a checkpoint's spec describes (before its weights are loaded)."""
    if not isinstance(spec, dict):
        raise UsageError("The checkpoint's patch spec is not a JSON object.")
    version = spec.get("version", SPEC_VERSION)
    if not isinstance(version, int) or version > PLAN_SPEC_VERSION:
        raise UsageError(f"The checkpoint was patched by a newer shiftaudit (patch spec version {version}); upgrade shiftaudit.")
    how = PatchPlan.from_json(spec.get("plan")) if version == PLAN_SPEC_VERSION else PatchConfig.from_json(spec)
    result = patch_model(model, how, inplace=True)
    want = spec.get("patched")
    got = [s.name for s in result.patched]
    if isinstance(want, list) and sorted(map(str, want)) != sorted(got):
        missing = sorted(set(map(str, want)) - set(got)) or sorted(set(got) - set(map(str, want)))
        raise UsageError(
            f"The checkpoint's patch spec does not fit this architecture (layer {missing[0]!r} differs); "
            "was it saved with another version of the model code?"
        )
    return result.model
