"""What ``shiftaudit patch`` shows: the decision at every strided layer, the latency comparison, how to reload."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from shiftaudit.antialias import PatchResult
from shiftaudit.antialias.report import PatchLatency
from shiftaudit.report.terminal import sig, text


def steps_table(result: PatchResult) -> Table:
    cfg = result.config
    what = f"{cfg.filter}, {cfg.pad} padding" if cfg.method == "blurpool" else f"APS, blur {cfg.filter}, {cfg.pad} padding"
    t = Table(title=f"Patch ({what})", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Layer", "Kind", "Rule", "Decision"):
        t.add_column(col)
    for s in result.steps:
        t.add_row(
            *(text(c) for c in (s.name, s.kind, s.rule if s.patched else "-", s.action)), style=None if s.patched else "dim"
        )
    return t


def latency_table(latency: PatchLatency) -> Table:
    """Median and IQR (:class:`~shiftaudit.antialias.LatencyStats`) of baseline and patched, and the overhead."""
    shape, b, a = latency.input_shape, latency.baseline, latency.patched
    t = Table(
        title=f"Forward latency, batch {shape[0]} of {shape[2]}x{shape[3]} on {latency.device} (median and IQR over "
              f"{b.repeats} runs)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("Baseline", "Patched", "Overhead"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_row(
        f"{sig(b.median)} ms (IQR {sig(b.iqr)})", f"{sig(a.median)} ms (IQR {sig(a.iqr)})", f"{100 * latency.overhead:+.1f} %"
    )
    return t


def latency_warning(latency: PatchLatency) -> str | None:
    if not latency.too_noisy:
        return None
    b, a = latency.baseline, latency.patched
    return (
        f"warning: latency noise exceeds the difference (IQR {sig(b.iqr)} and {sig(a.iqr)} ms, medians "
        f"{sig(b.median)} and {sig(a.median)} ms): the overhead is not measurable on this machine now; rerun on a quiet machine."
    )


def rebuild_message(output: Path, fmt: str, arch: str | None) -> str:
    """What it takes to load the saved model again: true for every kind of architecture."""
    from shiftaudit.loading.architectures import kind_of

    if fmt == "torchscript":
        return (f"wrote {output} (torchscript, deprecated by torch: prefer .pt2); `shiftaudit eval {output} --data ...` runs "
                "it with no other flags (a black box: no inspection)")
    if fmt == "pt2":
        return (f"wrote {output} (pt2); `shiftaudit eval {output} --data ...` runs it with no other flags, and "
                f"`torch.export.load('{output}').module()` anywhere torch runs")
    if arch and kind_of(arch) == "factory":
        module = arch.partition(":")[0]
        if module != "shiftaudit" and not module.startswith("shiftaudit."):
            top = module.split(".")[0]
            where = (
                f"the package {top} is installed here: install it wherever you evaluate the file"
                if _installed(top)
                else f"the module {module} must be importable: run from its folder or set PYTHONPATH"
            )
            return (
                f"wrote {output} (safetensors); rebuild it with `shiftaudit eval {output} --arch {arch} --data ...` "
                f"({where}; its arguments, the patch and the preprocessing are stored in the file)"
            )
    if arch and kind_of(arch) == "timm":
        return (f"wrote {output} (safetensors); `shiftaudit eval {output} --data ...` rebuilds it with no other flags (timm "
                "must be installed)")
    return f"wrote {output} ({fmt}); `shiftaudit eval {output} --data ...` rebuilds it with no other flags"


def _installed(package: str) -> bool:
    """Whether ``package`` is imported from an installed location (site-packages), not the current folder or PYTHONPATH."""
    import importlib.util
    import sysconfig

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    origin = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
    if not origin:
        return False
    roots = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return any(Path(origin).resolve().is_relative_to(root) for root in roots)
