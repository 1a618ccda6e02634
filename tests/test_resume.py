"""An interrupted audit, resumed from its state file, gives the same JSON as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from shiftaudit.data import load_data
from shiftaudit.data.presets import Preprocessing
from shiftaudit.engine.runner import audit
from shiftaudit.errors import AuditInterrupted, UsageError
from tests.helpers import (
    assert_clean_error,
    cli,
    env_eval_args,
    nothing_written,
    write_image_folder,
    write_images,
)

from .helpers import StopAfter, tiny_cnn


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = tiny_cnn(spatial_head=True, size=8).eval()
    images = torch.randn(10, 3, 8, 8)
    labels = torch.randint(0, 5, (10,))
    return model, images, labels


def run(model, images, labels, **kw):
    return audit(model, (images, labels), max_shift=2, device="cpu", batch_size=25, polyphase=False, **kw)


def test_interrupted_then_resumed_equals_uninterrupted(setup, tmp_path):
    model, images, labels = setup
    want = run(StopAfter(model, None), images, labels).to_json()
    state = tmp_path / "state.npz"
    with pytest.raises(AuditInterrupted) as info:
        run(StopAfter(model, 4), images, labels, resume=state)  # 25 rows a call = one image: stops at image 4
    assert state.exists() and info.value.progress == (3, 10) and info.value.resume_path == str(state)
    assert isinstance(info.value, KeyboardInterrupt) and not info.value.terminated
    got = run(StopAfter(model, None), images, labels, resume=state).to_json()
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_state_of_another_run_is_refused(setup, tmp_path):
    model, images, labels = setup
    state = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt):
        run(StopAfter(model, 3), images, labels, resume=state)
    with pytest.raises(UsageError, match=r"Cannot resume: --seed changed since the run saved in .* \(was 0, now 1\)"):
        run(StopAfter(model, None), images, labels, resume=state, seed=1)
    state.write_bytes(b"not a state")
    with pytest.raises(UsageError, match="not a shiftaudit audit state"):
        run(StopAfter(model, None), images, labels, resume=state)


def test_cli_resume_message_and_cleanup(setup, tmp_path, monkeypatch):
    from shiftaudit.cli import app

    model, images, labels = setup
    data = tmp_path / "d.npz"
    np.savez(data, images=images.numpy(), labels=labels.numpy())
    (tmp_path / "stopmod.py").write_text(
        "import torch\nfrom tests.helpers import tiny_cnn\nfrom tests.helpers import StopAfter\n"
        "def build(num_classes=5, stop=None):\n    torch.manual_seed(0)\n"
        "    return StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), stop)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "m.pt"
    torch.save(StopAfter(model, None).state_dict(), ckpt)
    state, report = tmp_path / "run.state", tmp_path / "r.json"
    args = [
        "eval",
        str(ckpt),
        "--data",
        str(data),
        "--raw",
        "--max-shift",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "25",
        "--no-polyphase",
        "--json",
        str(report),
        "--resume",
        str(state),
        "--quiet",
    ]
    import stopmod

    monkeypatch.setattr(stopmod, "build", lambda num_classes=5: StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), 5))
    res = CliRunner().invoke(app, [*args, "--arch", "stopmod:build"])
    assert res.exit_code == 130 and "progress saved in" in res.stderr and not report.exists() and state.exists()
    monkeypatch.setattr(stopmod, "build", lambda num_classes=5: StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), None))
    res = CliRunner().invoke(app, [*args, "--arch", "stopmod:build"])
    assert res.exit_code == 0, res.output
    assert report.exists() and not state.exists()


BASES = {"circular": [], "crop": ["--shift-mode", "crop"], "imagenet": ["--preset", "imagenet"]}  # imagenet: no --size


def _size(base: str) -> str | None:
    return None if base == "imagenet" else "16"


@pytest.fixture(scope="module")
def saved_states(tiny_env):
    """One interrupted run per base (its state file), made once: each case copies it and changes one thing."""
    states = {}
    for name, extra in BASES.items():
        state = tiny_env["root"] / f"{name}.state"
        res = cli(
            *env_eval_args(
                tiny_env,
                *extra,
                "--class-map",
                tiny_env["map"],
                "--batch-size",
                "25",
                "--no-polyphase",
                "--resume",
                state,
                "--quiet",
                arch="interrupt_on_second_call",
                size=_size(name),
            )
        )
        assert res.exit_code == 130 and state.is_file(), res.output
        states[name] = (state, extra)
    return states


def _permuted_map(tiny_env: dict[str, Any], tmp: Path) -> list[Any]:
    path = tmp / "permuted.json"
    path.write_text(json.dumps({"class_0": 2, "class_1": 1, "class_2": 0}))
    return ["--class-map", path]


def _other_weights(tiny_env: dict[str, Any], tmp: Path) -> list[Any]:
    torch.manual_seed(1)
    path = tmp / "other.pt"
    torch.save(tiny_env["mod"].tiny(3).state_dict(), path)
    return ["@ckpt", path]


# (base, changed options, needles of the refusal). Every one of these changes a number of the report.
CHANGES = [
    (
        "circular",
        ["--mean", "0.5,0.5,0.5"],
        ["--mean (directly or through --preset) changed", "(was [0.485, 0.456, 0.406], now [0.5, 0.5, 0.5])"],
    ),
    ("circular", ["--std", "0.5,0.5,0.5"], ["--std (directly or through --preset) changed"]),
    ("circular", ["--resize", "20"], ["--resize (directly or through --preset) changed", "(was 18, now 20)"]),  # 16 / 0.875
    ("circular", ["--size", "12", "--max-shift", "2"], ["--size"]),
    ("circular", ["--preset", "cifar"], ["--mean and --std (directly or through --preset) changed"]),
    ("circular", _permuted_map, ["the labels (--class-map) changed"]),
    ("circular", ["--max-shift", "1"], ["the shift set"]),
    ("circular", ["--pairs", "3"], ["--pairs changed", "(was 5, now 3)"]),
    ("circular", ["--seed", "1"], ["--seed"]),
    ("circular", ["--precision", "bf16"], ["--precision changed"]),
    ("circular", ["--limit", "4"], ["the images chosen (--limit)"]),
    ("circular", ["--mode", "sampled"], ["--mode"]),
    ("circular", ["--batch-size", "50"], ["--batch-size changed"]),
    ("circular", _other_weights, ["the model weights changed"]),
    ("circular", ["@arch", "tiny"], ["the model (--arch, --num-classes or its patch) changed"]),  # same weights
    ("circular", ["--data-kind", "folder"], ["--data"]),
    ("circular", ["--compile"], ["the engine (--no-polyphase, --compile) changed"]),
    ("crop", ["--max-shift", "1"], ["the image or crop canvas size", "the shift set"]),
    ("imagenet", ["--size", "224", "--resize", "256"], ["--preset changed", '(was "imagenet", now "custom")']),  # same numbers
]


@pytest.mark.parametrize(
    "base, change, needles", CHANGES, ids=[f"{b}:{c.__name__ if callable(c) else ' '.join(c)}" for b, c, _ in CHANGES]
)
def test_resume_refuses_any_change_that_changes_a_number_and_names_it(tiny_env, saved_states, tmp_path, base, change, needles):
    saved, extra = saved_states[base]
    state = tmp_path / "run.state"
    shutil.copy(saved, state)
    changed = change(tiny_env, tmp_path) if callable(change) else change
    swap = {changed[0]: changed[1]} if changed and str(changed[0]).startswith("@") else {}
    changed = changed[2:] if swap else changed
    report = tmp_path / "r.json"
    class_map = [] if "--data-kind" in changed else ["--class-map", tiny_env["map"]]
    args = env_eval_args(
        tiny_env,
        *extra,
        *class_map,
        "--batch-size",
        "25",
        "--no-polyphase",
        *changed,
        "--resume",
        state,
        "--json",
        report,
        arch=swap.get("@arch", "interrupt_on_second_call"),
        ckpt=swap.get("@ckpt"),
        size=_size(base),
    )
    line = assert_clean_error(cli(*args), "Cannot resume: ", str(state), "delete that file or drop --resume", *needles)
    assert state.read_bytes() == saved.read_bytes() and nothing_written(report), line


@pytest.mark.parametrize("what", ["added", "removed", "rewritten"])
def test_resume_refuses_data_files_added_removed_or_rewritten(tiny_env, tmp_path, what):
    data = write_image_folder(tmp_path / "val")
    state = tmp_path / "run.state"
    args = env_eval_args(
        tiny_env, "--batch-size", "25", "--no-polyphase", "--resume", state, "--quiet", arch="interrupt_on_second_call", data=data
    )
    assert cli(*args).exit_code == 130 and state.is_file()
    victim = data / "class_1" / "img_0.png"
    if what == "added":
        shutil.copy(victim, data / "class_1" / "img_9.png")
    elif what == "removed":
        victim.unlink()
    else:  # same name, other pixels (same count, same description): only the file's size/mtime can tell
        with Image.open(victim) as im:
            Image.fromarray(255 - np.asarray(im)).save(victim)
        os.utime(victim, ns=(time.time_ns(), os.stat(victim).st_mtime_ns + 10**9))
    line = assert_clean_error(cli(*args), "Cannot resume: ", "the data's files or content")
    assert "model" not in line.split("changed")[0]


def test_resume_refuses_another_package_version(tiny_env, tmp_path, monkeypatch):
    import shiftaudit

    state = tmp_path / "run.state"
    args = env_eval_args(
        tiny_env, "--batch-size", "25", "--no-polyphase", "--resume", state, "--quiet", arch="interrupt_on_second_call"
    )
    assert cli(*args).exit_code == 130
    monkeypatch.setattr(shiftaudit, "__version__", "99.0")
    assert_clean_error(cli(*args), "Cannot resume: the shiftaudit version changed", 'now "99.0"')


def test_resume_refuses_other_metrics_or_device_layout_through_the_api(tmp_path):
    """Parts the CLI cannot change on a CPU-only machine: the metrics asked for and the device's memory layout."""
    from shiftaudit.engine.runner import audit
    from shiftaudit.metrics import AccuracyAtZeroShift, SampledConsistency
    from tests.helpers import StopAfter, tiny_cnn

    torch.manual_seed(0)
    model, images, labels = tiny_cnn(size=8).eval(), torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    state = tmp_path / "run.state"

    def run(stop: int | None, **kw: Any) -> Any:
        return audit(
            StopAfter(model, stop), (images, labels), max_shift=1, device="cpu", batch_size=9, polyphase=False, resume=state, **kw
        )

    with pytest.raises(KeyboardInterrupt):
        run(3)
    with pytest.raises(UsageError, match=r"Cannot resume: the metrics asked for changed"):
        run(None, metrics=[SampledConsistency(), AccuracyAtZeroShift()])
    with pytest.raises(UsageError, match=r"Cannot resume: --device changed .*\(was \[\"cpu\", false\], now \[\"cpu\", true\]\)"):
        run(None, channels_last=True)


def test_a_resumed_run_keeps_the_notes_of_images_read_before_the_interruption(tmp_path):
    """The decode flags of the images done before the interruption (here: grayscale images converted to RGB) are saved
    with the state, so the resumed report still counts them: the same JSON as an uninterrupted run."""
    from shiftaudit.engine.runner import audit
    from tests.helpers import StopAfter, tiny_cnn

    data = write_image_folder(tmp_path / "val", size=8)
    write_images(data / "class_0", 2, size=8, mode="L", prefix="gray")  # sorted first: read before the interruption
    prep = Preprocessing(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    model, state = tiny_cnn(num_classes=3, size=8).eval(), tmp_path / "run.state"

    def run(stop: int | None, **kw: Any) -> dict[str, Any]:
        return audit(
            StopAfter(model, stop),
            load_data(data, preprocessing=prep),
            max_shift=1,
            device="cpu",
            batch_size=9,
            polyphase=False,
            num_workers=0,
            **kw,
        ).to_json()

    want = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(3, resume=state)
    got = run(None, resume=state)
    assert "converted 2 images with another colour mode to RGB" in got["notes"], got["notes"]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_resume_path_that_is_a_folder_or_a_pipe_is_said_before_any_work(tiny_env, tmp_path, kind):
    target = tmp_path / "state"
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    res = cli(*env_eval_args(tiny_env, "--resume", target, "--json", tmp_path / "r.json"))
    line = assert_clean_error(res, "--resume", str(target))
    assert ("is a folder; pass a file path" in line) if kind == "folder" else ("not a regular file" in line)
    assert "delete" not in line and nothing_written(tmp_path / "r.json")
