"""Fault injection on inputs (issue 13, sections 2, 4 and 5): resume never mixes runs, bad input is one sentence and
exit 2 (never exit 3, a traceback or a hang), and nothing is silently wrong.

Each class of fault is injected for real: changed flags and rewritten files between an interrupted run and its
continuation, SIGTERM sent to a real ``python -m shiftaudit`` process, a real FIFO, unreadable folders and links to
devices, float TIFFs and NaN pixels. Hypothesis explores the spaces too large for a table (class-map values, bad
option combinations, damaged compare reports) with few, bounded examples.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shiftaudit.data import load_data, read_class_map
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError, UsageError
from tests.helpers import (
    assert_clean_error,
    cli,
    examples,
    nothing_written,
    write_image_folder,
    write_images,
    write_models_module,
)

MODULE = "sa_faultinput_models"


def _examples(n: int) -> settings:
    """``n`` examples under the "ci" profile, more under "fuzz" (`make fuzz`); derandomised as the profile says."""
    return settings(max_examples=examples(n), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


FEW = _examples(12)  # each example runs the eval command
MANY = _examples(60)  # each example is a function call or a compare of two small files (~50 ms)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a 3-class tiny checkpoint, a 16x16 ImageFolder (6 images) and a class map."""
    root = tmp_path_factory.mktemp("fault-inputs")
    pkgs = root / "pkgs"
    write_models_module(pkgs, MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(pkgs))
        mp.setenv("SHIFTAUDIT_CACHE_DIR", str(root / "cache"))
        mod = __import__(MODULE)
        torch.manual_seed(0)
        ckpt = root / "tiny.pt"
        torch.save(mod.tiny(3).state_dict(), ckpt)
        data = write_image_folder(root / "val")
        cmap = root / "map.json"
        cmap.write_text(json.dumps({"class_0": 0, "class_1": 1, "class_2": 2}))
        yield {"root": root, "pkgs": pkgs, "ckpt": ckpt, "data": data, "map": cmap, "mod": mod}
    sys.modules.pop(MODULE, None)


def eval_args(env: dict[str, Any], *extra: Any, arch: str = "tiny", data: Any = None, ckpt: Any = None,
              size: str | None = "16") -> list[Any]:
    return ["eval", ckpt or env["ckpt"], "--arch", f"{MODULE}:{arch}", "--data", data or env["data"],
            *(["--size", size] if size else []), "--max-shift", "2", "--device", "cpu", "--workers", "0", *extra]


def first_error_line(res: Any) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# 2. Resume never mixes runs
# ---------------------------------------------------------------------------------------------------------------

BASES = {"circular": [], "crop": ["--shift-mode", "crop"], "imagenet": ["--preset", "imagenet"]}  # imagenet: no --size


def _size(base: str) -> str | None:
    return None if base == "imagenet" else "16"


@pytest.fixture(scope="module")
def saved_states(env):
    """One interrupted run per base (its state file), made once: each case copies it and changes one thing."""
    states = {}
    for name, extra in BASES.items():
        state = env["root"] / f"{name}.state"
        res = cli(*eval_args(env, *extra, "--class-map", env["map"], "--batch-size", "25", "--no-polyphase",
                             "--resume", state, "--quiet", arch="interrupt_on_second_call", size=_size(name)))
        assert res.exit_code == 130 and state.is_file(), res.output
        states[name] = (state, extra)
    return states


def _permuted_map(env: dict[str, Any], tmp: Path) -> list[Any]:
    path = tmp / "permuted.json"
    path.write_text(json.dumps({"class_0": 2, "class_1": 1, "class_2": 0}))
    return ["--class-map", path]


def _other_weights(env: dict[str, Any], tmp: Path) -> list[Any]:
    torch.manual_seed(1)
    path = tmp / "other.pt"
    torch.save(env["mod"].tiny(3).state_dict(), path)
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


@pytest.mark.parametrize("base, change, needles", CHANGES,
                         ids=[f"{b}:{c.__name__ if callable(c) else ' '.join(c)}" for b, c, _ in CHANGES])
def test_resume_refuses_any_change_that_changes_a_number_and_names_it(env, saved_states, tmp_path, base, change, needles):
    saved, extra = saved_states[base]
    state = tmp_path / "run.state"
    shutil.copy(saved, state)
    changed = change(env, tmp_path) if callable(change) else change
    swap = {changed[0]: changed[1]} if changed and str(changed[0]).startswith("@") else {}
    changed = changed[2:] if swap else changed
    report = tmp_path / "r.json"
    class_map = [] if "--data-kind" in changed else ["--class-map", env["map"]]
    args = eval_args(env, *extra, *class_map, "--batch-size", "25", "--no-polyphase", *changed, "--resume", state,
                     "--json", report, arch=swap.get("@arch", "interrupt_on_second_call"), ckpt=swap.get("@ckpt"),
                     size=_size(base))
    line = assert_clean_error(cli(*args), "Cannot resume: ", str(state), "delete that file or drop --resume", *needles)
    assert state.read_bytes() == saved.read_bytes() and nothing_written(report), line


@pytest.mark.parametrize("what", ["added", "removed", "rewritten"])
def test_resume_refuses_data_files_added_removed_or_rewritten(env, tmp_path, what):
    data = write_image_folder(tmp_path / "val")
    state = tmp_path / "run.state"
    args = eval_args(env, "--batch-size", "25", "--no-polyphase", "--resume", state, "--quiet",
                     arch="interrupt_on_second_call", data=data)
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


def test_resume_refuses_another_package_version(env, tmp_path, monkeypatch):
    import shiftaudit

    state = tmp_path / "run.state"
    args = eval_args(env, "--batch-size", "25", "--no-polyphase", "--resume", state, "--quiet", arch="interrupt_on_second_call")
    assert cli(*args).exit_code == 130
    monkeypatch.setattr(shiftaudit, "__version__", "99.0")
    assert_clean_error(cli(*args), "Cannot resume: the shiftaudit version changed", "now \"99.0\"")


def test_resume_refuses_other_metrics_or_device_layout_through_the_api(tmp_path):
    """Parts the CLI cannot change on a CPU-only machine: the metrics asked for and the device's memory layout."""
    from shiftaudit.engine.runner import audit
    from shiftaudit.metrics import AccuracyAtZeroShift, SampledConsistency
    from tests.helpers import StopAfter, tiny_cnn

    torch.manual_seed(0)
    model, images, labels = tiny_cnn(size=8).eval(), torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    state = tmp_path / "run.state"

    def run(stop: int | None, **kw: Any) -> Any:
        return audit(StopAfter(model, stop), (images, labels), max_shift=1, device="cpu", batch_size=9, polyphase=False,
                     resume=state, **kw)

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
        return audit(StopAfter(model, stop), load_data(data, preprocessing=prep), max_shift=1, device="cpu", batch_size=9,
                     polyphase=False, num_workers=0, **kw).to_json()

    want = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(3, resume=state)
    got = run(None, resume=state)
    assert "converted 2 images with another colour mode to RGB" in got["notes"], got["notes"]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_resume_path_that_is_a_folder_or_a_pipe_is_said_before_any_work(env, tmp_path, kind):
    target = tmp_path / "state"
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    res = cli(*eval_args(env, "--resume", target, "--json", tmp_path / "r.json"))
    line = assert_clean_error(res, "--resume", str(target))
    assert ("is a folder; pass a file path" in line) if kind == "folder" else ("not a regular file" in line)
    assert "delete" not in line and nothing_written(tmp_path / "r.json")


@pytest.mark.timeout(120)
def test_sigterm_saves_progress_and_the_resumed_run_equals_an_uninterrupted_one(env, tmp_path):
    """SIGTERM (timeout, schedulers) to a real process mid-audit: exit 143, progress saved; resuming gives the same
    bytes as a run that was never interrupted."""
    state, mark, resumed, reference = (
        tmp_path / "run.state",
        tmp_path / "forwards",
        tmp_path / "resumed.json",
        tmp_path / "ref.json",
    )
    args = [str(a) for a in eval_args(env, "--batch-size", "25", "--no-polyphase", "--quiet", arch="slow")]
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(env["pkgs"]), os.getcwd()]), "SA_SLOW": "0.4",
                 "SA_MARK": str(mark), "OMP_NUM_THREADS": str(torch.get_num_threads()), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "shiftaudit", *args, "--resume", str(state), "--json", str(resumed)],
                            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (mark.exists() and mark.read_text().count("forward") >= 3) and proc.poll() is None:
            assert time.monotonic() < deadline, "the audit never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): stopped cleanly after "), err
    assert f"progress saved in {state}" in lines[0] and state.is_file() and not resumed.exists()
    res = cli(*args, "--resume", state, "--json", resumed)  # the same command again: continues, then cleans up
    assert res.exit_code == 0, res.output
    assert not state.exists()
    assert cli(*args, "--json", reference).exit_code == 0
    assert resumed.read_bytes() == reference.read_bytes()


def test_sigterm_handler_is_restored_after_a_command(env, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert cli(*eval_args(env, "--quiet", "--limit", "1")).exit_code == 0
    assert signal.getsignal(signal.SIGTERM) == before


# ---------------------------------------------------------------------------------------------------------------
# 4. Bad input: exit 2 and one sentence, never exit 3, a traceback or a hang
# ---------------------------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)


@MANY
@given(values=st.lists(JSON_SCALARS, min_size=1, max_size=4), num_classes=st.one_of(st.none(), st.integers(1, 10)))
def test_class_map_values_are_whole_indices_within_the_classes_or_one_sentence(values, num_classes):
    """Accepted exactly when every value is a JSON integer in range; anything else (true, 0.9, 1.0, 1e20, NaN, a
    string, a huge integer) is one sentence, never truncated, allocated or an internal error."""
    obj = {f"class_{i}": v for i, v in enumerate(values)}
    if all(type(v) is int and 0 <= v < (num_classes or 1_000_000) for v in values):
        assert read_class_map(obj, num_classes)[0] == obj
    else:
        with pytest.raises(DataError) as exc:
            read_class_map(obj, num_classes)
        assert "\n" not in str(exc.value) and len(str(exc.value)) < 300


@MANY
@given(keys=st.lists(st.one_of(st.integers(-5, 10**25).map(str), st.text(max_size=6)), min_size=1, max_size=4, unique=True),
       num_classes=st.integers(1, 10))
def test_keras_class_index_keys_are_whole_indices_within_the_classes_or_one_sentence(keys, num_classes):
    obj = {k: [f"wnid{i}", f"name{i}"] for i, k in enumerate(keys)}
    if all(k.isascii() and k.isdigit() and int(k) < num_classes for k in keys):
        assert read_class_map(obj, num_classes)[0] == {f"wnid{i}": int(k) for i, k in enumerate(keys)}
    else:
        with pytest.raises(DataError):
            read_class_map(obj, num_classes)


@pytest.mark.parametrize("text, needle", [
    ('{"class_0": 0, "class_1": 1e20, "class_2": 2}', "1e+20, not a whole class index"),
    ('{"class_0": 0, "class_1": 0.9, "class_2": 2}', "0.9, not a whole class index"),
    ('{"class_0": 0, "class_1": true, "class_2": 2}', "true, not a whole class index"),
    ('{"class_0": 0, "class_1": 1e400, "class_2": 2}', "too large for a double"),
    ('{"class_0": 0, "class_1": 100000000000000, "class_2": 2}', "outside 0..2 (the model's 3 classes)"),
    ('{"0": ["class_0"], "1": ["class_1"], "99999999999999999999": ["class_2"]}', "not a whole class index"),
    ('{"class_0": NaN}', "NaN, which is not a JSON number"),
])
def test_class_map_values_through_the_cli(env, tmp_path, text, needle):
    cmap = tmp_path / "map.json"
    cmap.write_text(text)
    res = cli(*eval_args(env, "--class-map", cmap, "--json", tmp_path / "r.json"))
    assert_clean_error(res, needle)
    assert nothing_written(tmp_path / "r.json")


@pytest.mark.timeout(60)
def test_class_map_fifo_is_refused_without_blocking(env, tmp_path):
    fifo = tmp_path / "map.json"
    os.mkfifo(fifo)
    assert_clean_error(cli(*eval_args(env, "--class-map", fifo)), "not a regular file")


BAD_OPTIONS = {
    "--max-shift": ["9", "100000", "10" * 20],
    "--shift-step": ["inf", "nan", "1e400", "0", "0.5", "1000"],
    "--pairs": ["0", "-3", "1000000", "10" * 20],
    "--size": ["0", "1", "5000", "10" * 20],
    "--resize": ["0", "100000"],
    "--batch-size": ["0", "1000000000"],
    "--limit": ["0", "-1"],
    "--workers": ["-1", "1000000"],
    "--num-classes": ["0", "10000000000"],
    "--mean": ["nan,0,0", "inf,0,0", "1e400,0,0", "1,2", "a"],
    "--std": ["0,0,0", "-1,1,1", "nan,1,1"],
    "--shift-mode": ["sideways"],
    "--mode": ["fast"],
    "--precision": ["fp8"],
}


@FEW
@given(picked=st.lists(st.sampled_from(sorted(BAD_OPTIONS)), min_size=1, max_size=3, unique=True), data=st.data())
def test_bad_option_combinations_are_exit_2_and_name_an_option(env, tmp_path, picked, data):
    """Out-of-range, non-finite and nonsense values, alone or together: exit 2, the first line names one of the
    options given (or --size/--max-shift, which they contradict), nothing written, well within 30 s (a --max-shift 5000
    crop canvas or a million pairs would not be)."""
    args: list[Any] = []
    for flag in picked:
        args += [flag, data.draw(st.sampled_from(BAD_OPTIONS[flag]), label=flag)]
    report = tmp_path / f"r{time.monotonic_ns()}.json"
    t0 = time.monotonic()
    res = cli(*eval_args(env, *args, "--json", report))
    assert time.monotonic() - t0 < 30
    assert res.exit_code == 2, (args, res.output)
    line = first_error_line(res)
    assert any(flag in line for flag in (*picked, "--max-shift", "--size")), (args, line)  # eval_args sets those two
    assert nothing_written(report)


def test_typer_range_errors_name_the_option_on_the_first_line(env):
    res = cli(*eval_args(env, "--pairs", "0"))
    assert res.exit_code == 2
    assert first_error_line(res).startswith("error: Invalid value for '--pairs'")


# -- compare ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(env):
    path = env["root"] / "report.json"
    res = cli(*eval_args(env, "--quiet", "--json", path))
    assert res.exit_code == 0, res.output
    return path


def _compare(report: Path, other: Path, *extra: Any):
    return cli("compare", report, other, "--names", "a,b", *extra)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, here: tuple = ()) -> list[tuple]:
    """Every path into ``node`` (lists: their first 3 items)."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, (*here, i))
    return out


@settings(MANY)
@given(data=st.data())
def test_damaged_reports_are_compared_or_refused_in_one_sentence(report, tmp_path, data):
    """Any field of a real report replaced by any JSON value: compare either works (exit 0) or refuses in one
    sentence with exit 2; never an internal error (exit 3). Raw NaN/Infinity/1e400 tokens and deep nesting are refused.
    Every field is read into its type (``AuditResult.from_json``), so every path is fair game; the metric entries,
    where a wrong type would bite the tables, are drawn twice as often."""
    doc = json.loads(report.read_text())
    entries = _paths(doc["metrics"], ("metrics",))[1:]
    path = data.draw(st.one_of(st.sampled_from(entries), st.sampled_from(_paths(doc)[1:])), label="field")
    value = data.draw(JSON_VALUES, label="value")
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = json.dumps(doc)
    token = data.draw(st.sampled_from([None, "NaN", "-Infinity", "1e400", "[" * 5000 + "]" * 5000]), label="token")
    if token is not None:
        text = text.replace('"schema_version": 1', f'"schema_version": 1, "junk": {token}')
    damaged = tmp_path / f"damaged{time.monotonic_ns()}.json"
    damaged.write_text(text)
    res = _compare(report, damaged, "--json", tmp_path / "cmp.json")
    assert res.exit_code in (0, 2), (path, value, res.output)
    if res.exit_code == 2:
        line = assert_clean_error(res)
        assert str(damaged) in line or line.startswith("error: b "), line  # the file, or the run by its --names name
    assert token is None or res.exit_code == 2


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda d: {**d, "metrics": []}, "metrics is a list, not an object"),
        (lambda d: {**d, "data": "x"}, "data is a string, not an object"),
        (lambda d: {**d, "schema_version": True}, "schema_version is True"),
        (
            lambda d: {**d, "metrics": {**d["metrics"], "accuracy": {"none": {"value": "high"}}}},
            "metrics.accuracy.none.value is a string",
        ),
        (
            lambda d: {**d, "metrics": {**d["metrics"], "accuracy_map": {**d["metrics"]["accuracy_map"], "accuracy": [[0.5]]}}},
            "not a dh x dw grid",
        ),
    ],
)
def test_reports_of_the_wrong_shape_name_the_field(report, tmp_path, damage, needle):
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(damage(json.loads(report.read_text()))))
    assert_clean_error(_compare(report, damaged), needle, "not a", str(damaged))


@pytest.mark.parametrize("text, needle", [
    ('{"schema": "shiftaudit/audit-report", "schema_version": NaN}', "NaN, which is not a JSON number"),
    ('{"schema": "shiftaudit/audit-report", "schema_version": Infinity}', "Infinity, which is not a JSON number"),
    ('{"schema": "shiftaudit/audit-report", "schema_version": 1e400}', "too large for a double"),
    ('{"schema": "shiftaudit/audit-report", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"schema": "shiftaudit/audit-report", "x": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels deep"),
    ("\xff\xfe not text", "not UTF-8 text"),
])
def test_compare_refuses_what_python_json_would_accept_or_choke_on(report, tmp_path, text, needle):
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    assert_clean_error(_compare(report, bad), needle)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_compare_never_opens_a_fifo_or_device(report, tmp_path, kind):
    target = {"fifo": tmp_path / "pipe.json", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    line = assert_clean_error(_compare(report, target))
    assert ("is a folder" if kind == "folder" else "not a regular file") in line


# -- tensor data files ------------------------------------------------------------------------------------------


def _save(path: Path, images: Any) -> Path:
    if path.suffix == ".npz":
        np.savez(path, images=images)
    else:
        torch.save({"images": images}, path)
    return path


TENSOR_FILES = [
    ("strings", "s.npz", lambda: np.array([["a", "b"]] * 4), "not strings"),
    ("dates", "d.npz", lambda: np.zeros((4, 3, 8, 8), dtype="datetime64[s]"), "not dates"),
    ("0x0 images", "z.npz", lambda: np.zeros((4, 3, 0, 0), np.uint8), "hold no pixels"),
    ("sparse", "sp.pt", lambda: torch.zeros(4, 3, 8, 8).to_sparse(), "not a sparse coo one"),
    ("float8", "f8.pt", lambda: torch.zeros(4, 3, 8, 8).to(torch.float8_e4m3fn), "float8_e4m3fn"),
    ("meta", "m.pt", lambda: torch.empty(4, 3, 8, 8, device="meta"), "meta tensor"),
    ("complex", "c.npz", lambda: np.zeros((4, 3, 8, 8), np.complex64), "not complex"),
    ("5-D", "five.npz", lambda: np.zeros((2, 2, 3, 8, 8), np.uint8), "must be 4-D"),
    ("list of strings", "ls.pt", lambda: ["a", "b"], "not strings"),
]


@pytest.mark.parametrize("name, file, make, needle", TENSOR_FILES, ids=[t[0] for t in TENSOR_FILES])
def test_tensor_files_that_cannot_be_images_are_one_sentence(env, tmp_path, name, file, make, needle):
    path = tmp_path / file
    if name == "list of strings":
        torch.save(make(), path)
    else:
        _save(path, make())
    res = cli(*eval_args(env, "--json", tmp_path / "r.json", data=path))
    assert_clean_error(res, needle)
    assert nothing_written(tmp_path / "r.json")


def test_uint16_and_uint32_tensors_are_read_as_integers(env, tmp_path):
    for dtype in (np.uint16, np.uint32):
        path = tmp_path / f"{np.dtype(dtype).name}.npz"
        np.savez(path, images=np.random.default_rng(0).integers(0, 60000, (3, 3, 16, 16)).astype(dtype), labels=np.arange(3))
        res = cli(*eval_args(env, "--quiet", "--json", tmp_path / "r.json", data=path))
        assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------------------------------------------
# 5. Nothing silently wrong
# ---------------------------------------------------------------------------------------------------------------


def _run_report(args: list[Any], out: Path) -> dict[str, Any]:
    res = cli(*args, "--json", out, "--quiet")
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_unreadable_subfolder_is_counted_and_fatal_with_strict(env, tmp_path, monkeypatch):
    """An unreadable sub-folder (os.scandir raises EACCES, as it does for a non-root user on a chmod 000 folder)."""
    data = write_image_folder(tmp_path / "val")
    write_images(data / "class_1" / "locked", 2, seed=5)
    real_scandir = os.scandir

    def scandir(path: Any = "."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rep = _run_report(eval_args(env, data=data), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 6
    assert any("1 unreadable entry skipped: class_1/locked (unreadable folder: permission denied)" in n for n in rep["notes"]), (
        rep["notes"]
    )
    assert_clean_error(cli(*eval_args(env, "--strict", data=data)), "Cannot read", "locked", "permission denied", "--strict")


def test_links_to_devices_loops_and_nowhere_are_counted_and_fatal_with_strict(env, tmp_path):
    data = write_image_folder(tmp_path / "val")
    (data / "class_0" / "dev.png").symlink_to("/dev/zero")
    (data / "class_1" / "a.png").symlink_to(data / "class_1" / "b.png")
    (data / "class_1" / "b.png").symlink_to(data / "class_1" / "a.png")
    (data / "class_2" / "gone.png").symlink_to(tmp_path / "missing.png")
    (data / "class_2" / "up").symlink_to(data, target_is_directory=True)
    rep = _run_report(eval_args(env, data=data), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 6
    note = next(n for n in rep["notes"] if "unreadable entries skipped" in n)
    for needle in (
        "5 unreadable entries",
        "dev.png (a device",
        "a.png (a symbolic link loop)",
        "gone.png (a broken symbolic link)",
        "up (a link back to a folder above it",
    ):
        assert needle in note, note
    assert_clean_error(cli(*eval_args(env, "--strict", data=data)), "Cannot read", "--strict")


def test_device_named_like_an_image_in_a_flat_folder_is_counted(env, tmp_path):
    folder = tmp_path / "flat"
    write_images(folder, 2)
    (folder / "zero.png").symlink_to("/dev/zero")
    ds = load_data(folder, preprocessing=Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert len(ds) == 2 and any("zero.png (a device, not an image file)" in n for n in ds.notes)


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


def test_float_tiffs_are_scaled_by_their_range_not_clipped_black(tmp_path):
    from shiftaudit.data.preprocess import decode_image, finish

    rng = np.random.default_rng(0)
    unit = rng.random((16, 16))
    ref = tmp_path / "ref.png"
    Image.fromarray(np.round(unit * 255).astype(np.uint8), mode="L").save(ref)
    want, _ = finish(decode_image(ref, 3)[0], None)
    for name, values in (("unit.tif", unit), ("bytes.tif", unit * 255)):
        got, _ = finish(decode_image(_float_tiff(tmp_path / name, values), 3)[0], None)
        assert got.shape == (3, 16, 16) and got.mean() > 0.3  # not black
        assert torch.allclose(got, want, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="neither 0-1 nor 0-255"):
        decode_image(_float_tiff(tmp_path / "wild.tif", unit * 1000 - 5), 3)


def test_nan_pixels_are_the_datas_problem_naming_the_image(env, tmp_path):
    folder = tmp_path / "tiffs" / "class_0"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        values = rng.random((16, 16))
        if i == 1:
            values[3, 4] = np.nan
        _float_tiff(folder / f"t{i}.tif", values)
    rep = _run_report(eval_args(env, data=folder.parent), tmp_path / "r.json")
    assert rep["data"]["num_images"] == 2 and rep["data"]["nonfinite_images"] == 0  # not blamed on the model
    assert any("1 image with NaN or infinite pixel values skipped (a problem in the data, not the model): t1.tif" in n
               for n in rep["notes"]), rep["notes"]
    assert_clean_error(cli(*eval_args(env, "--strict", data=folder.parent)), "t1.tif", "NaN or infinite pixel values", "--strict")


def test_nan_pixels_in_every_tensor_image_is_a_data_error_not_a_model_error(env, tmp_path):
    images = np.random.default_rng(0).random((4, 3, 16, 16)).astype(np.float32)
    images[:, 0, 0, 0] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, images=images, labels=np.arange(4) % 3)
    line = assert_clean_error(
        cli(*eval_args(env, "--json", tmp_path / "r.json", data=path)),
        "None of the 4 images could be used",
        "mage 0 has NaN or infinite pixel values",
    )
    assert "model gave" not in line


def test_a_digit_string_is_an_index_only_as_a_key_of_the_imagenet_style_map():
    """Found by the property test above: {"folder": "0"} was taken as index 0; only {"0": ["wnid", "name"]} keys are."""
    assert read_class_map({"0": ["n01440764", "tench"]}, None)[0] == {"n01440764": 0}
    with pytest.raises(DataError, match=r"Class map entry 'cat' is \"0\", not a whole class index"):
        read_class_map({"cat": "0"}, None)
