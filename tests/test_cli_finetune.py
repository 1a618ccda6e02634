"""Issue 26 part 2 end to end: `shiftaudit patch --distill/--finetune` with the trainer's flags, on real files.

What the terminal says equals the JSON; flags that cannot go together are refused before any work; a run killed by
SIGTERM exits 143 with its state saved and the same command finishes it to the weights of an uninterrupted run; two
processes under torchrun (gloo) give the one-process result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import assert_clean_error, cli
from tests.test_distill import DEMO, write_demo_npz

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_demo_npz(root / "train.npz", 80, seed=1)
    write_demo_npz(root / "test.npz", 16, seed=90210)
    from shiftaudit.data.synthetic import make_synthetic

    images, _labels, _names = make_synthetic(80, seed=1)
    np.save(root / "unlabelled.npy", images)
    return root


def test_distill_with_the_trainers_flags_reports_every_setting_and_says_what_the_json_holds(files, tmp_path):
    rep = tmp_path / "patch.json"
    res = cli(
        "patch", DEMO, "--filter", "tri3", "--pad", "circular", "--distill", files / "unlabelled.npy", "--train-steps", "6",
        "--train-batch", "16", "--accumulate", "2", "--warmup", "2", "--weight-decay", "0.01", "--ema", "0.9",
        "--augment", "flip", "--eval-every", "3", "--json", rep,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(rep.read_text())["distill"]
    assert d["steps"] == 6 and d["stopped_by"] == "steps" and [h["step"] for h in d["history"]] == [0, 3, 6]
    s = d["settings"]
    assert (s["batch_size"], s["accumulate"], s["warmup"], s["weight_decay"], s["ema"], s["augment"]) == (
        16,
        2,
        2,
        0.01,
        0.9,
        "flip",
    )
    assert s["ce_weight"] == 0 and s["seconds"] is None and d["processes"] == 1
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("distilled "))
    shown = [float(v) for v in re.findall(r"([\d.]+) %", line)]
    expected = [d[k] for k in ("agreement_before", "agreement_after", "shifted_agreement_before", "shifted_agreement_after")]
    expected += [d["consistency_before"], d["consistency_after"], d["teacher_consistency"]]
    assert shown == pytest.approx([round(100 * v, 1) for v in expected], abs=0.051)
    assert "distilled 6 steps (steps budget)" in line and f"on {d['train_images']} images" in line


def test_finetune_trains_on_labels_and_refuses_unlabelled_images(files, tmp_path):
    rep = tmp_path / "patch.json"
    res = cli("patch", DEMO, "--finetune", files / "train.npz", "--train-steps", "2", "--train-batch", "8", "--json", rep)
    assert res.exit_code == 0, res.output
    d = json.loads(rep.read_text())["distill"]
    assert d["settings"]["ce_weight"] == 0.5 and d["accuracy_before"] is not None and "fine-tuned 2 steps" in res.stdout
    assert_clean_error(
        cli("patch", DEMO, "--finetune", files / "unlabelled.npy", "--train-steps", "1"), "labelled images", "--distill"
    )


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--distill", "x.npy", "--finetune", "y.npz"], ["--distill", "--finetune", "one of them"]),
        (["--ce-weight", "0.3"], ["--ce-weight", "--finetune"]),
        (["--resume", "state.safetensors"], ["--resume", "--distill or --finetune"]),
        (["--distill", "x.npy", "--train-batch", "6", "--accumulate", "4"], ["--train-batch (6)", "--accumulate (4)"]),
    ],
)
def test_training_flags_that_cannot_run_are_refused_before_any_work(flags, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # x.npy, y.npz: no such files; the refusal comes before anything is read
    assert_clean_error(cli("patch", REPO / DEMO, *flags), *needles)


def command(files: Path, out: Path, state: Path | None, steps: int = 30) -> list[str]:
    cmd = [
        sys.executable, "-m", "shiftaudit", "patch", DEMO, "--filter", "tri3", "--pad", "circular",
        "--distill", str(files / "unlabelled.npy"), "--train-steps", str(steps), "--train-batch", "8", "--eval-every", "2",
        "--ema", "0.9", "-o", str(out), "--quiet",
    ]  # fmt: skip
    return cmd + (["--resume", str(state)] if state else [])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.mark.slow
def test_sigterm_saves_the_state_and_the_same_command_finishes_to_the_uninterrupted_weights(files, tmp_path):
    state, stopped, whole = tmp_path / "state.safetensors", tmp_path / "resumed.safetensors", tmp_path / "whole.safetensors"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command(files, stopped, state), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): stopped cleanly after" in err and f"progress saved in {state}" in err
    assert not stopped.exists()  # nothing half-written
    done_steps = int(re.search(r"after (\d+) of 30 steps", err).group(1))
    with safe_open(state, "pt") as f:  # saved at the step the run stopped at, not only at the last evaluation
        assert json.loads(f.metadata()["run"])["step"] == done_steps
    for cmd in (command(files, stopped, state), command(files, whole, None)):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    a, b = weights(stopped), weights(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_under_torchrun_give_the_one_process_model(files, tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run_one = command(files, one, None, steps=4)
    run_two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *run_one[1:]]
    run_two[run_two.index(str(one))] = str(two)
    for cmd in (run_one, run_two):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
