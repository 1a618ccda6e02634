"""benchmarks/gpu.sh, proven without a GPU: which interpreter it picks, its stage limits and budget, the optional
fine-tuning hook (issue 26), and (slow) its whole dry run on the CPU with every output file; and the name probe of
``benchmarks.gpu --check`` that finds torch names a lent machine's older torch lacks.

Most tests hand the script a stand-in interpreter (a shell script printing what the real probe would print), so they
run without importing torch; the slow test runs the real thing, as the lent machine would but with no GPU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import REPO, referenced_names, resolves

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def fake_python(folder: Path, gpus: int, name: str = "python3") -> Path:
    """An interpreter that answers the script's torch probe as torch 2.11 seeing ``gpus`` GPUs would."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    gpu = "NVIDIA H100 80GB HBM3" if gpus else "-"
    path.write_text(f"#!/bin/sh\nprintf '2.11.0+cu130\\t13.0\\t{gpus}\\t{gpu}\\t3.12.3\\n'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def hook(folder: Path, body: str) -> Path:
    path = folder / "finetune.sh"
    path.write_text(body)
    return path


# the hook's record of what it was given: interpreter, dry-run flag, output folder, package path
RECORDING_HOOK = 'printf \'{"py": "%s", "dry_run": "%s", "out": "%s", "pythonpath": "%s"}\' "$PY" "$GPU_SH_DRY_RUN" "$OUT" \
"$PYTHONPATH" > "$OUT/gpu-finetune.json"\necho finetune hook ran\n'


def run_script(out: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GPU_SH_"))}  # not the outer pytest's
    base.pop("PYTHON", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**base, "OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def run_record(out: Path) -> dict:
    return json.loads((out / "gpu-run.json").read_text())


def test_help_names_every_setting(tmp_path):
    res = run_script(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    for needle in ("GPU_SH_BUDGET", "GPU_SH_STAGE_LIMIT", "GPU_SH_STAGES", "GPU_SH_FINETUNE", "PYTHON", "--dry-run"):
        assert needle in res.stdout
    assert not (tmp_path / "gpu.log").exists()  # --help runs nothing


def test_no_interpreter_with_torch_exits_2_and_says_what_to_do(tmp_path):
    broken = tmp_path / "bin" / "python"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    res = run_script(tmp_path / "out", PYTHON=str(broken))
    assert res.returncode == 2
    assert "no Python with torch found" in res.stdout and "PYTHON=" in res.stdout


def test_an_unknown_stage_is_refused(tmp_path):
    res = run_script(tmp_path, GPU_SH_STAGES="env,benchmark")
    assert res.returncode == 2 and "unknown stage 'benchmark'" in res.stderr


def test_an_interpreter_that_sees_a_gpu_is_preferred_and_runs_the_gpu_mode(tmp_path):
    """python3 on PATH sees a GPU (the lent machine's own Python): chosen over any .venv whose torch sees none, and
    the stages run in GPU mode; the hook gets the interpreter, the output folder and the working tree on PYTHONPATH."""
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir, gpus=1)
    out = tmp_path / "out"
    res = run_script(
        out,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        CUDA_VISIBLE_DEVICES="",  # a real .venv's torch sees no GPU even on a machine with one
        GPU_SH_STAGES="finetune",
        GPU_SH_FINETUNE=str(hook(tmp_path, RECORDING_HOOK)),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    record = run_record(out)
    assert record["mode"] == "gpu" and record["python"] == str(bin_dir / "python3") and record["torch"] == "2.11.0+cu130"
    assert record["gpu_name"] == "NVIDIA H100 80GB HBM3" and record["ok"] is True
    assert [s["name"] for s in record["stages"]] == ["finetune"] and record["stages"][0]["status"] == "ok"
    given = json.loads((out / "gpu-finetune.json").read_text())
    assert given["py"] == str(bin_dir / "python3") and given["dry_run"] == "0" and given["out"] == str(out)
    assert given["pythonpath"].split(":")[0] == str(REPO)
    assert "no GPU" not in res.stdout and "finetune hook ran" in (out / "gpu.log").read_text()


def test_no_gpu_seen_means_a_dry_run_that_says_so(tmp_path):
    out = tmp_path / "out"
    res = run_script(
        out,
        PYTHON=str(fake_python(tmp_path / "bin", gpus=0)),
        GPU_SH_STAGES="finetune",
        GPU_SH_FINETUNE=str(hook(tmp_path, RECORDING_HOOK)),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no GPU: dry run" in res.stdout
    assert run_record(out)["mode"] == "dry-run"
    assert json.loads((out / "gpu-finetune.json").read_text())["dry_run"] == "1"
    assert "no GPU: dry run" in (out / "gpu-summary.txt").read_text()


def test_a_stage_past_its_limit_is_stopped_and_fails_the_run(tmp_path):
    out = tmp_path / "out"
    res = run_script(
        out,
        PYTHON=str(fake_python(tmp_path / "bin", gpus=1)),
        GPU_SH_STAGES="finetune",
        GPU_SH_STAGE_LIMIT="1",
        GPU_SH_FINETUNE=str(hook(tmp_path, "sleep 60\n")),
    )
    assert res.returncode == 1
    (stage,) = run_record(out)["stages"]
    assert stage["status"] == "timed out" and stage["limit_s"] == 1 and stage["seconds"] < 30
    assert "FAILED" in (out / "gpu-summary.txt").read_text()


def test_a_stage_without_time_left_is_skipped_and_fails_the_run(tmp_path):
    out = tmp_path / "out"
    res = run_script(
        out,
        PYTHON=str(fake_python(tmp_path / "bin", gpus=1)),
        GPU_SH_STAGES="finetune",
        GPU_SH_BUDGET="5",
        GPU_SH_FINETUNE=str(hook(tmp_path, RECORDING_HOOK)),
    )
    assert res.returncode == 1
    assert [s["status"] for s in run_record(out)["stages"]] == ["skipped"]
    assert not (out / "gpu-finetune.json").exists()


def test_a_failing_hook_fails_the_run_and_an_absent_one_is_reported(tmp_path):
    out = tmp_path / "out"
    py = str(fake_python(tmp_path / "bin", gpus=1))
    res = run_script(out, PYTHON=py, GPU_SH_STAGES="finetune", GPU_SH_FINETUNE=str(hook(tmp_path, "exit 3\n")))
    assert res.returncode == 1 and run_record(out)["stages"][0] | {"seconds": 0} == {
        "name": "finetune",
        "status": "failed",
        "exit": 3,
        "seconds": 0,
        "limit_s": 150,
    }
    res = run_script(out, PYTHON=py, GPU_SH_STAGES="finetune", GPU_SH_FINETUNE=str(tmp_path / "absent.sh"))
    assert res.returncode == 0 and run_record(out)["stages"] == [] and run_record(out)["finetune_hook"] is None
    assert "absent" in (out / "gpu-summary.txt").read_text()
    assert not (out / "gpu-finetune.json").exists()  # the last run's files are cleared first


def test_the_name_probe_reads_imports_and_aliases(tmp_path):
    (tmp_path / "shiftaudit").mkdir()
    (tmp_path / "shiftaudit" / "m.py").write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch.overrides import NoSuchMode\n"
        "def f(x):\n    return F.no_such_function(torch.nn.Conv2d(1, 1, 1)(x)).sum()\n"
    )
    names = referenced_names(tmp_path)
    assert {"torch", "torch.nn.functional", "torch.overrides.NoSuchMode", "torch.nn.functional.no_such_function"} <= set(names)
    assert "torch.nn.Conv2d" in names and names["torch.nn.Conv2d"] == ["shiftaudit/m.py:5"]
    assert not resolves("torch.overrides.NoSuchMode") and not resolves("torch.nn.functional.no_such_function")
    assert resolves("torch.nn.functional.relu") and resolves("torch.nn.Conv2d") and not resolves("no_such_library.x")


def test_the_probe_reads_the_package_and_the_gpu_runs_other_files():
    """Every name is looked up on the lent machine; that all resolve under the pinned torch is part of the slow dry run."""
    names = referenced_names(REPO)
    assert any(w.startswith("shiftaudit/loading/pt2.py:") for w in names["torch.export.Dim"])
    assert any(w.startswith("tests/test_gpu.py:") for w in names["torch.cuda.mem_get_info"])
    assert any(w.startswith("benchmarks/gpu.py:") for w in names["torch.utils.flop_counter.FlopCounterMode"])


def test_the_engine_imports_first_in_a_fresh_process():
    """The package stage's 'public name used first' check, for the case it caught: shiftaudit.antialias imported the
    patch search, which needs the engine, while the engine was importing shiftaudit.antialias.aps (a circular import:
    `import shiftaudit.engine.plan`, or `shiftaudit.audit` used first, failed)."""
    code = "import shiftaudit.engine.plan, shiftaudit.engine.runner, shiftaudit; shiftaudit.audit; shiftaudit.antialias.Frontier"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.slow  # the whole dry run: ~1.5 min of CPU, 2-3 min on a loaded 2-core machine
@pytest.mark.timeout(660)
def test_dry_run_on_the_cpu_runs_every_stage_and_writes_its_files(tmp_path):
    out = tmp_path / "out"
    res = run_script(out, "--dry-run", timeout=630, PYTHON=sys.executable, GPU_SH_BUDGET="600", GPU_SH_STAGE_LIMIT="240")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    record = run_record(out)
    assert record["mode"] == "dry-run" and record["ok"] is True and record["python"] == sys.executable
    stages = {s["name"]: s["status"] for s in record["stages"]}
    assert stages == dict.fromkeys(("env", "package", "cli", "collect", "tests", "bench", "options", "finetune"), "ok")
    assert record["seconds"] <= 600
    assert {p.name for p in out.iterdir()} == {
        "gpu-summary.txt",
        "gpu-run.json",
        "gpu.log",
        "gpu-imports.json",
        "gpu-tests.xml",
        "gpu.json",
        "options.json",
        "gpu-finetune.json",
    }
    summary = (out / "gpu-summary.txt").read_text()
    assert "no GPU: dry run" in summary and "all stages passed" in summary and "skipped=8" in summary
    checked = json.loads((out / "gpu-imports.json").read_text())
    assert checked["ok"] and checked["package_from_working_tree"] and checked["missing_library_names"] == {}
    assert checked["modules_imported"] > 100 and "eval --help" in checked["cli"]
    assert json.loads((out / "gpu.json").read_text())["dry_run"] is True
    assert json.loads((out / "options.json").read_text())["device"] == "cpu"
    finetune = json.loads((out / "gpu-finetune.json").read_text())  # 2 gloo processes under torchrun, toy sizes
    assert finetune["processes"] == 2 and finetune["steps"] == 2 and finetune["device"].startswith("cpu (dry run")
    assert res.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
