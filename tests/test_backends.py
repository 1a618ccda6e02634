"""Inference runtimes as audit backends (``--backend``): each runtime's audit equals the torch audit; a runtime whose
probe disagrees with torch, or that cannot apply, leaves the audit to torch with a note; bad requests are refused in
one sentence; and the thread count the forward passes run on."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import shiftaudit
from shiftaudit.engine import backend_plan, threads
from shiftaudit.engine.backends import RUNTIMES, ExportFailed, OpenVino
from shiftaudit.engine.config import AuditConfig
from shiftaudit.errors import UsageError
from shiftaudit.result import AuditResult
from tests.helpers import assert_clean_error, cli, tiny_cnn

NAMES = tuple(RUNTIMES)  # openvino, onnxruntime
RUNTIME = [pytest.param(n, marks=pytest.mark.skipif(not RUNTIMES[n].installed(), reason=f"{n} not installed")) for n in NAMES]
FLOAT_TOLERANCE = 1e-5  # the stated tolerance of a runtime's floats (probabilities and their statistics) against torch's
PREDICTIONS = ("accuracy", "consistency", "adversarial", "accuracy_map", "flip_examples", "flip_rate")  # from argmaxes alone


def _model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_cnn(size=16, **kw).eval()


def _data(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _audit(model: nn.Module, backend: str, **kw) -> AuditResult:
    kw = {"max_shift": 2, "device": "cpu", **kw}
    return shiftaudit.audit(model, _data(), backend=backend, **kw)


def _without_backend(report: dict) -> dict:
    """A report as a torch audit writes it: no ``settings.backend``, no backend note, no runtime version."""
    report = json.loads(json.dumps(report))
    report["settings"].pop("backend", None)
    report["notes"] = [n for n in report["notes"] if not n.startswith("backend ")]
    for name in NAMES:
        report["environment"].pop(name, None)
    return report


def assert_same_report(torch_report: dict, other: dict) -> None:
    """Every key the same; integers, strings and every prediction-derived number identical; floats within
    FLOAT_TOLERANCE."""
    a, b = _without_backend(torch_report), _without_backend(other)

    def close(x, y, path):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                close(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                close(u, v, f"{path}[{i}]")
        elif isinstance(x, float) and not path.startswith(tuple(f"/metrics/{k}" for k in PREDICTIONS)):
            assert y == pytest.approx(x, abs=FLOAT_TOLERANCE), path
        else:
            assert x == y, path

    close(a, b, "")
    for key in ("correct", "sampled_agreement", "exact_consistency", "first_failure_radius"):
        assert a["per_image"].get(key) == b["per_image"].get(key), key


@pytest.mark.parametrize("name", RUNTIME)
@pytest.mark.parametrize("mode", ["exhaustive", "sampled"])
def test_each_runtime_audit_equals_the_torch_audit(name, mode):
    model = _model()
    reference = _audit(model, "torch", mode=mode).to_json()
    result = _audit(model, name, mode=mode)
    report = result.to_json()
    assert_same_report(reference, report)
    backend = report["settings"]["backend"]
    assert backend["name"] == name and backend["asked"] == name and backend["export_seconds"] > 0
    probe = backend["probe"]
    assert probe["rows"] == 6 and probe["top1_agreement"] == 1.0 and probe["max_abs_logit_diff"] < 1e-4
    assert report["environment"][name] == RUNTIMES[name].version()
    assert any(n.startswith(f"backend {name}: {RUNTIMES[name].label} ran the model") for n in report["notes"])
    assert "backend" not in reference["settings"] and name not in reference["environment"]
    assert AuditResult.from_json(report).settings["backend"] == backend  # read back strictly


@pytest.mark.parametrize("name", RUNTIME)
def test_the_runtime_runs_every_forward_of_the_audit(name, monkeypatch):
    """Once planned, the torch model runs no forward: every batch goes through the runtime's module."""
    model = _model()
    prepared = shiftaudit.plan_audit(AuditConfig(max_shift=2, device="cpu", backend=name, batch_size=20), model, _data())
    runtime = prepared.forward.model
    assert runtime is not model and not prepared.plan.channels_last
    calls = {"torch": 0, "runtime": 0}
    for key, module in (("torch", model), ("runtime", runtime)):
        monkeypatch.setattr(module, "forward", lambda x, f=module.forward, k=key: calls.__setitem__(k, calls[k] + 1) or f(x))
    result = shiftaudit.run_plan(prepared)
    assert calls == {"torch": 0, "runtime": 6 * 2}  # 25 shifts per image at 20 rows a forward: two forwards each
    assert result.timing["forward_rows"] == 6 * 25


@pytest.mark.parametrize("name", RUNTIME)
def test_the_sequential_gate_runs_on_the_runtime_and_says_so(name):
    """A gate-only audit decided from random draws: the same verdict as torch's, the backend in its settings."""
    model, data = _model(), _data(n=8)
    kw = dict(device="cpu", max_shift=8, thresholds={"min_consistency": 0.05}, sequential=True)
    reference = shiftaudit.audit(model, data, **kw)
    result = shiftaudit.audit(model, data, backend=name, **kw)
    assert result.settings["engine"] == reference.settings["engine"] == "sequential"
    assert result.gate is not None and reference.gate is not None
    assert result.gate["passed"] == reference.gate["passed"] is True
    assert result.settings["backend"]["name"] == name


class FlipsWhenExported(nn.Module):
    """A model whose exported graph is not the model: traced for export, it reverses its class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits.flip(1) if torch.jit.is_tracing() or torch.compiler.is_exporting() else logits


@pytest.mark.parametrize("name", RUNTIME)
def test_a_runtime_whose_probe_disagrees_leaves_the_audit_to_torch(name):
    model = FlipsWhenExported()
    reference = _audit(model, "torch").to_json()
    report = _audit(model, name).to_json()
    backend = report["settings"]["backend"]
    assert backend["name"] == "torch" and backend["asked"] == name and backend["export_seconds"] > 0
    assert backend["probe"]["top1_agreement"] < 1.0 and backend["probe"]["max_abs_logit_diff"] > 1e-3
    assert any("the runtime's predictions would differ, so torch ran the model" in n for n in report["notes"])
    assert _without_backend(report) == _without_backend(reference)  # torch ran it: the very same numbers


def test_a_runtime_output_off_by_more_than_the_tolerance_falls_back(monkeypatch):
    """The runtime's logits moved by 0.01 (same argmax): over the stated tolerance, so torch runs the audit."""
    if not OpenVino.installed():
        pytest.skip("openvino not installed")
    load = OpenVino.load

    def shifted(self, path):
        run = load(self, path)
        return lambda array: run(array) + 0.01 * (1 + abs(run(array)).max())

    monkeypatch.setattr(OpenVino, "load", shifted)
    report = _audit(_model(), "openvino").to_json()
    probe = report["settings"]["backend"]["probe"]
    assert report["settings"]["backend"]["name"] == "torch" and probe["top1_agreement"] == 1.0
    assert probe["max_abs_logit_diff"] > probe["tolerance"]


@pytest.mark.parametrize("name", RUNTIME)
def test_a_model_that_does_not_export_runs_in_torch_with_a_note(name, monkeypatch):
    def refuse(*args, **kwargs):
        raise ExportFailed("Unsupported operator aten::frobnicate")

    monkeypatch.setattr(backend_plan, "export_onnx", refuse)
    result = _audit(_model(), name)
    assert result.settings["backend"] == {"name": "torch", "asked": name, "export_seconds": None, "probe": None}
    assert f"backend {name}: the model does not export to ONNX (Unsupported operator aten::frobnicate); torch ran the model" in (
        result.notes
    )


def test_the_export_goes_to_a_temporary_folder_that_is_deleted(monkeypatch, tmp_path):
    name = next((n for n in NAMES if RUNTIMES[n].installed()), None)
    if name is None:
        pytest.skip("no inference runtime installed")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen = []
    export = backend_plan.export_onnx

    def spy(model, example, folder):
        seen.append(Path(folder))
        return export(model, example, folder)

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(backend_plan, "export_onnx", spy)
    assert _audit(_model(), name).settings["backend"]["name"] == name
    assert seen and seen[0].parent == scratch and seen[0].name.startswith("shiftaudit-export-")
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"polyphase": True, "max_shift": 8}, "the polyphase engine evaluates every circular shift at once"),
        ({"compile": True}, "torch.compile was asked for"),
        ({"precision": "bf16"}, "precision bf16 is torch's autocast"),
    ],
)
def test_auto_leaves_to_torch_what_no_runtime_can_run(kw, why, monkeypatch):
    monkeypatch.setattr(backend_plan, "AUTO_MIN_SECONDS", 0.0)
    model = _model(padding_mode="circular") if kw.get("polyphase") else _model()
    plan = shiftaudit.plan_audit(AuditConfig(**{"max_shift": 2, "device": "cpu", **kw}, backend="auto"), model, _data()).plan
    assert plan.backend is not None and plan.backend.name == "torch" and plan.to_json()["backend"]["asked"] == "auto"
    assert any(n.startswith(f"backend auto: {why}") and n.endswith("; torch ran the model") for n in plan.notes), plan.notes


@pytest.mark.parametrize("name", RUNTIME)
def test_a_named_runtime_skips_the_polyphase_engine_and_float64_models(name):
    circular = _audit(_model(padding_mode="circular"), name, max_shift=8)
    assert circular.settings["engine"] == "polyphase" and circular.settings["backend"]["name"] == "torch"
    double = shiftaudit.audit(_model().double(), (_data()[0].double(), _data()[1]), max_shift=1, device="cpu", backend=name)
    assert double.settings["backend"]["name"] == "torch"
    assert any("the runtimes run float32 models and this one is float64" in n for n in double.notes)


@pytest.mark.parametrize("asked", ["auto", pytest.param("openvino", marks=RUNTIME[0].marks)])
def test_an_onnx_model_runs_as_it_came(asked, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from shiftaudit.engine.backends import export_onnx
    from shiftaudit.loading import load_model

    loaded = load_model(export_onnx(_model(), _data()[0][:2], tmp_path))
    result = shiftaudit.audit(loaded, _data(), max_shift=1, device="cpu", backend=asked)
    assert "backend" not in result.settings and result.model["format"] == "onnx"
    assert f"backend {asked}: not used, the model is an ONNX graph run by onnxruntime already" in result.notes


def test_auto_takes_the_fastest_installed_runtime_when_the_audit_is_long_enough(monkeypatch):
    installed = [n for n in backend_plan.AUTO_ORDER if RUNTIMES[n].installed()]
    if not installed:
        pytest.skip("no inference runtime installed")
    short = _audit(_model(), "auto")
    assert short.settings["backend"] == {"name": "torch", "asked": "auto", "export_seconds": None, "probe": None}
    assert any("too few for exporting the model to pay" in n for n in short.notes)
    monkeypatch.setattr(backend_plan, "AUTO_MIN_SECONDS", 0.0)
    torch_logits = backend_plan._torch_logits  # torch timed at 10 s a probe batch: any runtime is faster
    monkeypatch.setattr(backend_plan, "_torch_logits", lambda model, x, timed: (torch_logits(model, x, timed)[0], 10.0))
    long = _audit(_model(), "auto")
    assert long.settings["backend"]["name"] in installed and long.settings["backend"]["asked"] == "auto"
    race = next(n for n in long.notes if n.startswith("backend auto: "))
    assert "probe batch: torch " in race and all(RUNTIMES[n].label in race for n in installed)
    assert_same_report(short.to_json(), long.to_json())


@pytest.mark.parametrize("fastest", NAMES)
def test_auto_takes_the_runtime_that_was_fastest_on_the_probe(fastest, monkeypatch):
    if not all(RUNTIMES[n].installed() for n in NAMES):
        pytest.skip("needs every runtime installed")
    monkeypatch.setattr(backend_plan, "AUTO_MIN_SECONDS", 0.0)
    torch_logits, compare = backend_plan._torch_logits, backend_plan.compare
    monkeypatch.setattr(backend_plan, "_torch_logits", lambda model, x, timed: (torch_logits(model, x, timed)[0], 10.0))

    def timed(module, x, ref, timed=False):
        probe, ok, _ = compare(module, x, ref, timed)
        name = "openvino" if type(module).__name__ == "RuntimeModule" else "onnxruntime"
        return probe, ok, 1.0 if name == fastest else 2.0

    monkeypatch.setattr(backend_plan, "compare", timed)
    result = _audit(_model(), "auto")
    assert result.settings["backend"]["name"] == fastest
    race = next(n for n in result.notes if n.startswith("backend auto: "))
    assert "probe batch: torch 10 s, OpenVINO" in race and f"{RUNTIMES[fastest].label} 1 s" in race


def test_auto_keeps_torch_when_torch_was_the_fastest_on_the_probe(monkeypatch):
    if not any(RUNTIMES[n].installed() for n in backend_plan.AUTO_ORDER):
        pytest.skip("no inference runtime installed")
    monkeypatch.setattr(backend_plan, "AUTO_MIN_SECONDS", 0.0)
    torch_logits = backend_plan._torch_logits
    monkeypatch.setattr(backend_plan, "_torch_logits", lambda model, x, timed: (torch_logits(model, x, timed)[0], 1e-9))
    result = _audit(_model(), "auto")
    backend = result.settings["backend"]
    assert backend["name"] == "torch" and backend["export_seconds"] > 0 and backend["probe"]["top1_agreement"] == 1.0
    assert any(n.endswith("torch was the fastest, and ran the model") for n in result.notes)


def test_auto_without_runtimes_measures_channels_last(monkeypatch):
    monkeypatch.setattr(backend_plan, "AUTO_MIN_SECONDS", 0.0)
    for cls in RUNTIMES.values():
        monkeypatch.setattr(cls, "installed", classmethod(lambda cls: False))
    monkeypatch.setattr(backend_plan, "CHANNELS_LAST_GAIN", 1e9)  # never faster enough
    config = AuditConfig(max_shift=2, device="cpu", backend="auto")
    plan = shiftaudit.plan_audit(config, _model(), _data()).plan
    assert not plan.channels_last and any("no inference runtime is installed" in n for n in plan.notes)
    monkeypatch.setattr(backend_plan, "CHANNELS_LAST_GAIN", 0.0)  # always taken
    prepared = shiftaudit.plan_audit(config, _model(), _data())
    assert prepared.plan.channels_last and prepared.forward.channels_last
    assert any(n.startswith("backend auto: channels_last memory format") for n in prepared.plan.notes)
    result = shiftaudit.run_plan(prepared)
    reference = _audit(_model(), "torch").to_json()
    assert_same_report(reference, result.to_json())


def test_a_torch_audit_has_no_backend_anywhere():
    plan = shiftaudit.plan_audit(AuditConfig(max_shift=2, device="cpu"), _model(), _data()).plan
    assert plan.backend is None and "backend" not in plan.to_json()
    assert "backend" not in _audit(_model(), "torch").settings


# -- refusals ------------------------------------------------------------------------------------------------------


def test_an_unknown_backend_is_refused():
    with pytest.raises(UsageError, match="Unknown `backend` 'tensorrt'; use one of auto, torch, openvino, onnxruntime"):
        _audit(_model(), "tensorrt")


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"layers": "auto"}, "Per-layer distances hook PyTorch modules"),
        ({"precision": "bf16"}, "runs the model in float32"),
        ({"compile": True}, "compiles the model itself"),
    ],
)
def test_a_named_runtime_refuses_what_needs_pytorch_modules(kw, needle):
    with pytest.raises(UsageError, match=needle):
        _audit(_model(), "openvino", **kw)


def test_a_runtime_that_is_not_installed_is_refused(monkeypatch):
    monkeypatch.setattr(OpenVino, "installed", classmethod(lambda cls: False))
    with pytest.raises(UsageError, match=r"`backend` openvino needs the openvino package, which is not installed: pip install"):
        _audit(_model(), "openvino")


def test_a_named_runtime_runs_on_the_cpu():
    config = AuditConfig(backend="openvino", device="cuda")
    with pytest.raises(UsageError, match="`backend` openvino runs the model on the CPU; use `device` cpu, not cuda"):
        backend_plan.runtime_device(config, torch.device("cuda"))
    auto = AuditConfig(backend="openvino", device="auto")
    assert backend_plan.runtime_device(auto, torch.device("cuda")) == torch.device("cpu")
    assert backend_plan.runtime_device(AuditConfig(device="cuda"), torch.device("cuda")) == torch.device("cuda")


# -- the command line ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend")
    torch.save(_model().state_dict(), root / "tiny.pt")
    images, labels = _data()
    torch.save({"images": images, "labels": labels}, root / "data.pt")
    (root / "models.py").write_text(
        "from tests.helpers import tiny_cnn\n\ndef tiny(num_classes=5):\n    return tiny_cnn(size=16)\n", encoding="utf-8"
    )
    return root


def _eval(files: Path, *extra: object):
    return cli(
        "eval", files / "tiny.pt", "--arch", "models:tiny", "--data", files / "data.pt", "--raw", "--max-shift", "2",
        "--device", "cpu", "--workers", "0", "--quiet", *extra,
    )  # fmt: skip


@pytest.fixture
def on_path(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    monkeypatch.chdir(files)
    return files


@pytest.mark.parametrize("name", RUNTIME)
def test_eval_backend_writes_the_torch_report_with_the_backend_beside_it(name, on_path, tmp_path):
    before = sorted(p.name for p in on_path.iterdir())
    assert _eval(on_path, "--json", tmp_path / "torch.json").exit_code == 0
    res = _eval(on_path, "--backend", name, "--threads", "1", "--json", tmp_path / "rt.json")
    assert res.exit_code == 0, res.output
    reference, report = (json.loads((tmp_path / f).read_text()) for f in ("torch.json", "rt.json"))
    assert_same_report(reference, report)
    assert report["settings"]["backend"]["name"] == name
    assert sorted(p.name for p in on_path.iterdir() if p.name != "__pycache__") == [b for b in before if b != "__pycache__"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--layers", "auto"), "--backend openvino runs an exported graph; use --backend torch with --layers"),
        (("--precision", "bf16"), "--backend openvino runs the model in float32; use --precision fp32"),
        (("--compile",), "--backend openvino compiles the model itself; drop --compile"),
        (("--threads", "2000"), "--threads 2000 is more than the 1,024 allowed"),
    ],
)
def test_eval_refuses_a_runtime_with_what_it_cannot_run(extra, needle, on_path):
    assert_clean_error(_eval(on_path, "--backend", "openvino", *extra), needle)


def test_eval_refuses_an_unknown_backend_and_a_missing_runtime(on_path, monkeypatch):
    res = _eval(on_path, "--backend", "tensorrt")
    assert res.exit_code == 2 and "tensorrt" in res.output and "Traceback" not in res.output
    monkeypatch.setattr(OpenVino, "installed", classmethod(lambda cls: False))
    assert_clean_error(_eval(on_path, "--backend", "openvino"), "needs the openvino package", "shiftaudit[openvino]")


@pytest.mark.slow  # three audits and two exports (about 10 s)
def test_patch_eval_audits_both_models_through_the_runtime(on_path, tmp_path):
    name = next((n for n in NAMES if RUNTIMES[n].installed()), None)
    if name is None:
        pytest.skip("no inference runtime installed")
    args = ["patch", on_path / "tiny.pt", "--arch", "models:tiny", "--eval", "--data", on_path / "data.pt", "--raw"]
    res = cli(*args, "--max-shift", "1", "--device", "cpu", "--quiet", "--backend", name, "--json", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "p.json").read_text())
    audits = [v for v in report.values() if isinstance(v, dict) and v.get("schema") == "shiftaudit/audit-report"]
    assert len(audits) == 2 and all(a["settings"]["backend"]["name"] == name for a in audits)


# -- threads ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_default(monkeypatch):
    threads.default_threads.cache_clear()
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield
    threads.default_threads.cache_clear()


@pytest.mark.parametrize(
    "env, cpus, load, want",
    [
        ({}, 4, 0.0, 4),  # an idle machine: torch's own count
        ({}, 4, 2.2, 2),  # two cores busy: the two left
        ({}, 2, 3.0, 1),  # a loaded machine: one thread, never none
        ({"PYTEST_XDIST_WORKER": "gw0"}, 4, 0.0, 1),
        ({"WORLD_SIZE": "2"}, 4, 0.0, 1),
    ],
)
def test_the_default_thread_count_never_oversubscribes(env, cpus, load, want, fresh_default, monkeypatch):
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setattr(threads, "available_cpus", lambda: cpus)
    monkeypatch.setattr(threads, "_load", lambda: load)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert threads.default_threads() == want


def test_an_audit_runs_on_its_threads_and_restores_the_callers(monkeypatch):
    seen = []
    model = _model()
    original = model.forward

    def watch(x):
        seen.append(torch.get_num_threads())
        return original(x)

    monkeypatch.setattr(model, "forward", watch)
    before = torch.get_num_threads()
    prepared = shiftaudit.plan_audit(AuditConfig(max_shift=1, device="cpu", threads=2), model, _data())
    assert prepared.plan.threads == 2 and prepared.plan.to_json()["threads"] == 2
    shiftaudit.run_plan(prepared)
    assert set(seen) == {2} and torch.get_num_threads() == before
    with pytest.raises(UsageError, match="`threads` must be at least 1"):
        _audit(model, "torch", threads=0)


def _stat(*cpus):
    """A /proc/stat text: per CPU (user, nice, system, idle, iowait, irq, softirq, steal)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{i} " + " ".join(map(str, t)) + " 0 0" for i, t in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 5"]) + "\n"


def test_busy_cores_are_measured_from_proc_stat_not_guessed_from_the_load_average(fresh_default, monkeypatch):
    # cpu0 idle (idle and iowait ticks only); cpu1 busy: 60 user + 20 system + 20 steal, no idle, over the window
    snapshots = iter(
        [
            _stat((100, 0, 50, 1000, 10, 0, 0, 5), (200, 0, 70, 900, 0, 0, 0, 30)),
            _stat((100, 0, 50, 1090, 20, 0, 0, 5), (260, 0, 90, 900, 0, 0, 0, 50)),
        ]
    )
    monkeypatch.setattr(threads, "_read_stat", lambda: next(snapshots))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1})
    assert threads._busy_cpus() == pytest.approx(1.0)

    # the idle VM of docs/performance.md: every CPU idle while the load average reads about one
    idle = iter(
        [
            _stat((0, 0, 0, 100, 0, 0, 0, 0), (0, 0, 0, 100, 0, 0, 0, 0)),
            _stat((0, 0, 0, 200, 0, 0, 0, 0), (0, 0, 0, 200, 0, 0, 0, 0)),
        ]
    )
    monkeypatch.setattr(threads, "_read_stat", lambda: next(idle))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.06, 1.7, 1.6))
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert threads.default_threads() == 2


def test_only_this_process_s_cpus_count_and_the_load_average_is_the_fallback(fresh_default, monkeypatch):
    before = _stat((0, 0, 0, 100, 0, 0, 0, 0), (0, 0, 0, 100, 0, 0, 0, 0))
    after = _stat((0, 0, 0, 200, 0, 0, 0, 0), (100, 0, 0, 100, 0, 0, 0, 0))  # cpu1 busy, cpu0 idle
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    for cpus, want in (({0}, 0.0), ({1}, 1.0), ({0, 1}, 1.0)):
        texts = iter([before, after])
        monkeypatch.setattr(threads, "_read_stat", lambda texts=texts: next(texts))
        monkeypatch.setattr(threads, "allowed_cpus", lambda cpus=cpus: cpus)
        assert threads._busy_cpus() == pytest.approx(want)
    monkeypatch.setattr(threads, "_read_stat", lambda: None)  # no /proc: the load average
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert threads._load() == 2.5
