"""Faults around what a run writes, and what the model's code can do to the run (issue 13, sections 1, 3 and 4).

- Outputs pointed at a FIFO, socket, device node, symlink or folder are refused before any work, and the node stays
  what it was (never replaced by a regular file; a FIFO is never opened, so nothing hangs).
- Files are created with the umask's mode and fsynced before the rename; a run writes all its outputs or none.
- A model whose forward raises SystemExit(0) or another BaseException fails the run (exit 2): a CI gate never
  passes without a report.
- Rich markup, newlines and escape sequences in user strings are printed literally, on one line.
- (issue 24) A reader that leaves (``| head -1``) or a closed stdout costs no file and is never blamed on the model;
  names at the file system's length limit are written, longer ones refused before any work; a reused --out folder
  keeps no picture of an earlier run; control characters are escaped in every printed line.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftaudit.errors import OutputError, one_line
from shiftaudit.files import (
    all_or_nothing,
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
)
from tests.helpers import (
    assert_clean_error,
    cli,
    examples,
    synthetic_result,
    tiny_models_on_path,
    write_image_folder,
    write_images,
)

MODULE = "sa_fault_outputs_models"
REPO = Path(__file__).resolve().parents[1]
# a FIFO opened by mistake blocks forever: fail, never hang (ten times longer under `make fuzz`, with ten times the examples)
pytestmark = pytest.mark.timeout(60 * examples(1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a tiny 3-class state dict, a 16x16 ImageFolder of 3 images, two reports."""
    root = tmp_path_factory.mktemp("outputs")
    with tiny_models_on_path(root, MODULE, classes=3, per_class=1) as (_, ckpt, data):
        reports = [
            synthetic_result(name="a").save_json(root / "a.json"),
            synthetic_result(0.1, name="b").save_json(root / "b.json"),
        ]
        yield root, ckpt, data, reports


def forbid_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any audit fail the test: a refusal must come before the work."""

    def audit(*args: object, **kwargs: object) -> None:
        raise AssertionError("the audit started although an output was unusable")

    monkeypatch.setattr("shiftaudit.engine.runner.run_plan", audit)  # what audit() runs
    monkeypatch.setattr("shiftaudit.cli.demo_cmd.run_plan", audit)  # what the demo runs
    monkeypatch.setattr("shiftaudit.cli.eval_cmd.run_plan", audit)  # what eval runs
    monkeypatch.setattr("shiftaudit.antialias.workflow.run_plan", audit)  # what patch --eval runs


def disk_full(path: object, *args: object, **kwargs: object) -> None:
    """A writer that fills the disk half-way through its file (OSError 28 inside the atomic writer)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half of it")
        raise OSError(28, "No space left on device")


def eval_args(setup, *extra: object, factory: str = "tiny") -> list[object]:
    _, ckpt, data, _ = setup
    return ["eval", ckpt, "--arch", f"{MODULE}:{factory}", "--data", data, "--size", "16", "--max-shift", "1",
            "--device", "cpu", "--workers", "0", *extra]


# -- making the nodes ---------------------------------------------------------------------------------------------
def make_node(path: Path, kind: str, stack: contextlib.ExitStack) -> None:
    """Put a ``kind`` at ``path``: nothing, a regular file, a FIFO, a socket, symlinks, a folder or a device node."""
    if kind == "nothing":
        return
    if kind == "regular":
        path.write_text("previous content\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = stack.enter_context(socket.socket(socket.AF_UNIX))
        cwd = os.getcwd()
        os.chdir(path.parent)  # a relative name: socket paths are limited to ~100 bytes
        try:
            sock.bind(path.name)
        finally:
            os.chdir(cwd)
    elif kind == "symlink-to-file":
        target = path.with_name(path.name + ".target")
        target.write_text("the link's target\n")
        os.symlink(target, path)
    elif kind == "symlink-to-devnull":
        os.symlink("/dev/null", path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "chardev":
        try:  # the same device numbers as /dev/null, made in the temp folder
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, AttributeError):
            pytest.skip("making a device node needs root (CAP_MKNOD)")
    else:
        raise ValueError(kind)


def snapshot(path: Path) -> tuple[int, str | None, bytes | None] | None:
    """What stands at ``path``: its type, its link target, a regular file's bytes (None when nothing is there)."""
    try:
        st_ = os.lstat(path)
    except FileNotFoundError:
        return None
    link = os.readlink(path) if stat.S_ISLNK(st_.st_mode) else None
    data = path.read_bytes() if stat.S_ISREG(st_.st_mode) else None
    return stat.S_IFMT(st_.st_mode), link, data


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writer (``.NAME.xxxx``) anywhere under ``folder``."""
    return [p for p in folder.rglob(".*") if p.is_file()]


SPECIAL = ["fifo", "socket", "symlink-to-file", "symlink-to-devnull", "chardev"]
SAID = {"fifo": "FIFO", "socket": "socket", "symlink-to-file": "symbolic link", "symlink-to-devnull": "symbolic link",
        "chardev": "character device", "folder": "folder"}


def command(setup, flag: str, target: Path) -> list[object]:
    """A command line writing ``target`` through ``flag``; the model would fail its first forward pass, so a refusal
    that came after the audit started would say so instead."""
    root, ckpt, data, reports = setup
    broken = "feature_map"
    if flag in ("eval --json", "eval --junit", "eval --resume"):
        return eval_args(setup, flag.split()[1], target, "--min-consistency", "0", factory=broken)
    if flag == "eval --out":
        return eval_args(setup, "--out", target, factory=broken)
    if flag == "eval --out/report.json":
        return eval_args(setup, "--out", target.parent, factory=broken)
    if flag in ("patch -o", "patch --json"):
        return ["patch", ckpt, "--arch", f"{MODULE}:needs_mask", flag.split()[1], target, "--size", "16"]
    if flag in ("demo --json", "demo --out"):
        return ["demo", "--images", "4", "--max-shift", "1", "--device", "cpu", flag.split()[1], target]
    if flag == "compare --json":
        return ["compare", *reports, "--json", target]
    if flag == "inspect --json":
        return ["inspect", ckpt, "--arch", f"{MODULE}:tiny", "--size", "16", "--json", target]
    raise ValueError(flag)


FILE_FLAGS = ["eval --json", "eval --junit", "eval --resume", "eval --out/report.json", "patch -o", "patch --json",
              "demo --json", "compare --json", "inspect --json"]
FOLDER_FLAGS = ["eval --out", "demo --out"]


# -- 1. outputs onto device nodes, FIFOs, sockets, symlinks ---------------------------------------------------------
@pytest.mark.parametrize("kind", SPECIAL + ["folder"])
@pytest.mark.parametrize("flag", FILE_FLAGS)
def test_an_output_onto_anything_but_a_regular_file_is_refused_before_any_work(setup, tmp_path, monkeypatch, flag, kind):
    forbid_audit(monkeypatch)
    target = tmp_path / "outputs" / "target.json" if flag != "eval --out/report.json" else tmp_path / "outputs" / "report.json"
    target.parent.mkdir()
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        res = cli(*command(setup, flag, target))
        line = assert_clean_error(res, str(target), SAID[kind])
        assert snapshot(target) == before, f"{flag} replaced the {kind}"
    assert not leftovers(tmp_path)
    assert line.count("error:") == 1


@pytest.mark.parametrize("kind", SPECIAL + ["regular"])
@pytest.mark.parametrize("flag", FOLDER_FLAGS)
def test_a_report_folder_onto_anything_but_a_folder_is_refused(setup, tmp_path, monkeypatch, flag, kind):
    forbid_audit(monkeypatch)
    target = tmp_path / "report"
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        res = cli(*command(setup, flag, target))
        assert_clean_error(res, str(target), "not a folder")
        assert snapshot(target) == before
    assert not leftovers(tmp_path)


def test_a_fifo_is_refused_in_a_real_process_within_seconds(setup, tmp_path):
    """The process, not just the CLI function: a FIFO opened for reading or writing would block it forever."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    args = [str(a) for a in eval_args(setup, "--json", fifo, "--resume", tmp_path / "state")]
    root = setup[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)])}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shiftaudit", *args], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip().startswith("error: --json") and "FIFO" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and time.monotonic() - t0 < 30


def test_the_writer_itself_never_replaces_a_node_that_appeared_during_the_run(tmp_path):
    """The check just before the rename: a FIFO made while the file was being written is not replaced."""
    dest = tmp_path / "r.json"
    with pytest.raises(OutputError, match="FIFO"), atomic_path(dest) as tmp:
        tmp.write_text("{}")
        os.mkfifo(dest)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode) and not leftovers(tmp_path)


@pytest.mark.parametrize("kind", SPECIAL)
def test_library_writes_refuse_nodes_too(tmp_path, kind):
    target = tmp_path / "x.bin"
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        with pytest.raises(OutputError, match=SAID[kind]):
            write_bytes_atomic(target, b"data")
        assert snapshot(target) == before


# -- "-" means stdout for --json, and nothing else ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["eval", "demo", "patch", "compare"])
def test_json_dash_is_stdout_with_the_tables_on_stderr_and_no_file_named_dash(setup, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    root, ckpt, data, reports = setup
    args = {
        "eval": eval_args(setup, "--json", "-"),
        "demo": ["demo", "--images", "4", "--max-shift", "1", "--device", "cpu", "--json", "-"],
        "patch": ["patch", ckpt, "--arch", f"{MODULE}:tiny", "--size", "16", "--json", "-"],
        "compare": ["compare", *reports, "--json", "-"],
    }[name]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is the JSON and nothing else
    assert report["schema"].startswith("shiftaudit/")
    assert "wrote" not in res.output
    assert not list(tmp_path.iterdir()), "a file named '-' (or another) appeared"


@pytest.mark.parametrize("flag", ["--junit", "--out", "--resume"])
def test_dash_for_any_other_output_is_refused(setup, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    res = cli(*eval_args(setup, flag, "-", "--min-consistency", "0"))
    assert_clean_error(res, flag, "'-'")
    assert not list(tmp_path.iterdir())


def test_patch_output_dash_is_refused(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("patch", setup[1], "--arch", f"{MODULE}:tiny", "--size", "16", "-o", "-")
    assert_clean_error(res, "--output", "'-'")
    assert not list(tmp_path.iterdir())


# -- modes and fsync ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_created_files_take_the_umask_like_any_tool(setup, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        res = cli(*eval_args(setup, "--json", tmp_path / "r.json", "--out", tmp_path / "report", "--quiet",
                             "--junit", tmp_path / "j.xml", "--min-consistency", "0"))
        write_bytes_atomic(tmp_path / "lib.bin", b"x")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    files = [tmp_path / "r.json", tmp_path / "j.xml", tmp_path / "lib.bin", *(tmp_path / "report").iterdir()]
    assert len(files) > 4
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o777 & ~mask  # folders: plain mkdir


def test_each_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", os.path.realpath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json_atomic(tmp_path / "one.json", {"a": 1})
    with all_or_nothing():
        write_json_atomic(tmp_path / "two.json", {"b": 2})
        write_bytes_atomic(tmp_path / "three.bin", b"3")
    renamed = [src for what, src in events if what == "replace"]
    assert len(renamed) == 3
    for src in renamed:
        synced = events.index(("fsync", src))
        assert synced < events.index(("replace", src)), f"{src} renamed before it was fsynced"
    last_rename = max(i for i, e in enumerate(events) if e[0] == "replace")
    assert ("fsync", os.path.realpath(tmp_path)) in events[last_rename:], "the folder was not fsynced after the renames"
    assert json.loads((tmp_path / "two.json").read_text()) == {"b": 2}


# -- all outputs or none ------------------------------------------------------------------------------------------
def _previous_outputs(tmp_path: Path) -> dict[Path, bytes]:
    out = tmp_path / "report"
    out.mkdir()
    files = {tmp_path / "r.json": b"old report\n", tmp_path / "j.xml": b"old junit\n", out / "report.json": b"old\n",
             out / "report.html": b"old html\n"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def test_a_failure_at_the_last_write_leaves_every_previous_output_as_it_was(setup, tmp_path, monkeypatch):
    monkeypatch.setattr("shiftaudit.report.junit.write_bytes_atomic", disk_full)  # the JUnit file is written last
    previous = _previous_outputs(tmp_path)
    names_before = sorted(p.name for p in (tmp_path / "report").iterdir())
    res = cli(*eval_args(setup, "--json", tmp_path / "r.json", "--out", tmp_path / "report", "--junit", tmp_path / "j.xml",
                         "--min-consistency", "0"))
    assert_clean_error(res, "j.xml", "no space left on device")
    assert {p: p.read_bytes() for p in previous} == previous
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == names_before, "new pictures were left behind"
    assert not leftovers(tmp_path)


def test_a_failure_removes_the_report_folder_the_run_created(setup, tmp_path, monkeypatch):
    monkeypatch.setattr("shiftaudit.report.html.write_text_atomic", disk_full)
    res = cli(*eval_args(setup, "--json", tmp_path / "r.json", "--out", tmp_path / "new" / "report"))
    assert_clean_error(res, "report.html", "no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the JSON or the new folders were left behind"


def test_a_failed_rename_puts_back_what_the_run_had_already_replaced(tmp_path, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old a")
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(dst) == second:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="no output of this run was written"), all_or_nothing():
        write_json_atomic(first, {"new": 1})
        write_json_atomic(second, {"new": 2})
    assert first.read_text() == "old a" and not second.exists()
    assert not leftovers(tmp_path)


def test_ctrl_c_inside_a_staged_run_writes_nothing(tmp_path):
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), all_or_nothing():
        write_json_atomic(tmp_path / "a.json", {"new": 1})
        write_json_atomic(tmp_path / "sub" / "b.json", {"new": 2})
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old"


def test_a_new_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A folder the run creates is built beside its place and renamed in with the run's files: nothing of it is seen
    before the end, and a failed rename after it (or Ctrl-C between two renames) takes it back out."""
    out, last = tmp_path / "new" / "report", tmp_path / "z.json"
    (tmp_path / "z.json").write_text("old z")
    with all_or_nothing() as outputs:
        write_json_atomic(out / "report.json", {"new": 1})
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["z.json"]
    assert json.loads((out / "report.json").read_text()) == {"new": 1} and outputs.removed == []
    real_replace = os.replace
    for failure in (OSError(5, "Input/output error"), KeyboardInterrupt()):

        def replace(src: object, dst: object, failure: BaseException = failure) -> None:
            if Path(dst) == last:  # type: ignore[arg-type]
                raise failure
            real_replace(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OutputError if isinstance(failure, OSError) else KeyboardInterrupt), all_or_nothing():
            write_json_atomic(tmp_path / "other" / "r.json", {"new": 2})
            write_json_atomic(out / "report.json", {"new": 3})
            write_json_atomic(last, {"new": 4})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "z.json"] and last.read_text() == "old z"
        assert json.loads((out / "report.json").read_text()) == {"new": 1} and not leftovers(tmp_path)


def test_a_name_clash_inside_out_is_found_before_the_audit(setup, tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    (tmp_path / "report" / "report.html").mkdir(parents=True)
    res = cli(*eval_args(setup, "--out", tmp_path / "report", "--json", tmp_path / "r.json"))
    assert_clean_error(res, "report.html", "is a folder")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flags", [("--json", "--junit"), ("--json", "--resume"), ("--junit", "--out")])
def test_two_outputs_naming_one_file_are_refused(setup, tmp_path, monkeypatch, flags):
    forbid_audit(monkeypatch)
    same = tmp_path / "report.json"
    args = []
    for flag in flags:
        args += [flag, tmp_path if flag == "--out" else same]
    res = cli(*eval_args(setup, *args, "--min-consistency", "0"))
    assert_clean_error(res, flags[0], flags[1], "report.json")
    assert not list(tmp_path.iterdir())


def test_an_unwritable_resume_path_is_refused_before_the_audit(setup, tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    (tmp_path / "afile").write_text("x")
    res = cli(*eval_args(setup, "--resume", tmp_path / "afile" / "state.npz"))
    assert_clean_error(res, "--resume", "afile")


def test_a_bad_demo_patch_filter_is_refused_before_any_audit(tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    res = cli("demo", "--patch", "no-such-filter", "--out", tmp_path / "report", "--json", tmp_path / "r.json")
    assert_clean_error(res, "no-such-filter")
    assert not list(tmp_path.iterdir())


def test_patch_writes_the_model_and_the_report_together_or_neither(setup, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr("shiftaudit.cli.patch_views.write_json_atomic", disk_full)  # the report is written after the model
        res = cli("patch", setup[1], "--arch", f"{MODULE}:tiny", "--size", "16", "-o", tmp_path / "aa.safetensors",
                  "--json", tmp_path / "patch.json")
    assert_clean_error(res, "patch.json", "no space left on device")
    assert not list(tmp_path.iterdir()), "the patched model was written without its report"
    res = cli("patch", setup[1], "--arch", f"{MODULE}:tiny", "--size", "16", "-o", tmp_path / "aa.safetensors",
              "--json", tmp_path / "patch.json")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aa.safetensors", "patch.json"]


def test_ctrl_c_sent_to_a_real_process_mid_audit_leaves_no_output(setup, tmp_path):
    """SIGINT to the real CLI while its (slow) model runs: exit 130, one line, no report, no JUnit, no temp file."""
    root = setup[0]
    marker = tmp_path / "started"
    args = [str(a) for a in eval_args(setup, "--json", tmp_path / "r.json", "--out", tmp_path / "report", "--junit",
                                      tmp_path / "j.xml", "--min-consistency", "0", "--batch-size", "1",
                                      factory="slow_with_marker")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)]), "SA_TEST_MARKER": str(marker)}
    # a shell's background job (CI started with `&`, nohup) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: give the CLI the default disposition a terminal's Ctrl-C meets
    proc = subprocess.Popen([sys.executable, "-m", "shiftaudit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 40
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the audit never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().startswith("interrupted: stopped cleanly") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started"]


# -- property: whatever mix of destinations, all written or nothing touched -----------------------------------------
DESTINATION_KINDS = ["nothing", "regular", "fifo", "socket", "symlink-to-file", "symlink-to-devnull", "folder"]


@settings(max_examples=examples(25), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(json_kind=st.sampled_from(DESTINATION_KINDS), junit_kind=st.sampled_from(DESTINATION_KINDS),
       inner_kind=st.sampled_from(DESTINATION_KINDS), html_kind=st.sampled_from(["nothing", "regular", "fifo"]))
def test_any_mix_of_destinations_writes_everything_or_touches_nothing(setup, json_kind, junit_kind, inner_kind, html_kind):
    with tempfile.TemporaryDirectory(prefix="sa") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        (root / "report").mkdir()
        paths = {"json": root / "r.json", "junit": root / "j.xml", "inner": root / "report" / "report.json",
                 "html": root / "report" / "report.html"}
        kinds = {"json": json_kind, "junit": junit_kind, "inner": inner_kind, "html": html_kind}
        for key, path in paths.items():
            make_node(path, kinds[key], stack)
        before = {path: snapshot(path) for path in root.rglob("*")}
        res = cli(*eval_args(setup, "--json", paths["json"], "--junit", paths["junit"], "--out", root / "report",
                             "--min-consistency", "0", "--quiet"))
        if all(k in ("nothing", "regular") for k in kinds.values()):
            assert res.exit_code == 0, res.output
            assert all(stat.S_ISREG(os.lstat(p).st_mode) and b"previous content" not in p.read_bytes() for p in paths.values())
        else:
            assert_clean_error(res)
            assert {path: snapshot(path) for path in root.rglob("*")} == before, "something was touched"
        assert not leftovers(root)


# -- 3. the model's code cannot fake a pass -------------------------------------------------------------------------
@pytest.mark.parametrize("factory, said", [("exit_zero", "SystemExit(0)"), ("generator_exit", "GeneratorExit"),
                                           ("model_bail", "ModelBail")])
def test_a_model_raising_an_exit_fails_the_gate_with_no_report(setup, tmp_path, factory, said):
    res = cli(*eval_args(setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", "--json", tmp_path / "r.json",
                         factory=factory))
    assert_clean_error(res, "The model failed", said)
    assert not list(tmp_path.iterdir()), "a report or a JUnit file was written"


def test_a_model_raising_systemexit_zero_fails_in_a_real_process(setup, tmp_path):
    root = setup[0]
    args = [str(a) for a in eval_args(setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", factory="exit_zero")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "shiftaudit", *args], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "SystemExit(0)" in proc.stderr and not (tmp_path / "j.xml").exists()


def test_an_exit_while_building_the_model_is_a_failure_not_a_pass(setup, tmp_path):
    res = cli(*eval_args(setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", factory="exit_on_build"))
    assert_clean_error(res, "SystemExit(0)", "failure")
    assert not (tmp_path / "j.xml").exists()


@pytest.mark.parametrize("name", ["inspect", "patch --dry-run", "patch --eval"])
def test_other_commands_running_the_model_fail_on_its_exit_too(setup, tmp_path, name):
    root, ckpt, data, _ = setup
    arch = ["--arch", f"{MODULE}:exit_zero", "--size", "16"]
    args = {
        "inspect": ["inspect", ckpt, *arch],
        "patch --dry-run": ["patch", ckpt, *arch, "--dry-run"],
        "patch --eval": ["patch", ckpt, *arch, "--eval", "--data", data, "--max-shift", "1", "-o", tmp_path / "p.safetensors"],
    }[name]
    assert_clean_error(cli(*args), "SystemExit(0)")
    assert not list(tmp_path.iterdir())


def test_handle_errors_turns_any_stray_exit_into_exit_2():
    import typer

    from shiftaudit.cli.common import handle_errors

    for exc in (SystemExit(0), SystemExit(None), GeneratorExit()):
        @handle_errors
        def run(exc: BaseException = exc) -> None:
            raise exc

        with pytest.raises(typer.Exit) as info:
            run()
        assert info.value.exit_code == 2


# -- 4. user strings reach rich literally, on one line ----------------------------------------------------------------
def test_markup_in_folder_and_file_names_is_printed_literally(setup, tmp_path):
    _, ckpt, data, _ = setup
    weird = tmp_path / "[bold]data[" / "]"  # a path holding "[/]"
    write_image_folder(weird, classes=3, per_class=1)
    (tmp_path / "ck[").mkdir()
    model = tmp_path / "ck[" / "]pt[red].pt"
    model.write_bytes(ckpt.read_bytes())
    report = tmp_path / "[/]" / "r[bold].json"
    res = cli("eval", model, "--arch", f"{MODULE}:tiny", "--data", weird, "--size", "16", "--max-shift", "1",
              "--device", "cpu", "--workers", "0", "--json", report)
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["model"]["source"].endswith("ck[/]pt[red].pt")
    assert f"wrote {report}" in res.stdout.splitlines()
    title = "".join(res.stdout.split())  # the title wraps at the table's width, at a space or inside a word
    assert "[bold]data[/]:3images" in title and "(" + str(model) + ")" in title


def test_markup_and_emoji_codes_in_an_error_are_literal(tmp_path):
    res = cli("eval", tmp_path / "[/]missing :smile:.pt", "--data", tmp_path)
    assert_clean_error(res, "[/]missing :smile:.pt")


@pytest.mark.parametrize("name, shown", [("bad\nname.pt", "bad\\nname.pt"), ("esc\x1b[31mred.pt", "esc\\x1b[31mred.pt"),
                                         ("cr\rname.pt", "cr\\rname.pt")])
def test_control_characters_in_a_file_name_keep_the_error_on_one_line(tmp_path, name, shown):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint at all")
    res = cli("eval", path, "--data", tmp_path)
    line = assert_clean_error(res, shown)
    assert "\x1b" not in res.stderr and "\r" not in res.stderr, line


def test_a_newline_in_an_output_name_keeps_the_wrote_line_whole(setup, tmp_path):
    report = tmp_path / "two\nlines.json"
    res = cli(*eval_args(setup, "--json", report))
    assert res.exit_code == 0, res.output
    assert report.exists()
    assert f"wrote {tmp_path}/two\\nlines.json" in res.stdout.splitlines()


def test_markup_in_a_progress_description_is_not_parsed(monkeypatch):
    import io

    from shiftaudit.cli.common import PlainConsole
    from shiftaudit.cli.progress import RichProgress

    screen = io.StringIO()
    monkeypatch.setattr("shiftaudit.cli.progress.err_console", PlainConsole(file=screen, force_terminal=True, width=120))
    progress = RichProgress()
    progress.start(2, "auditing [/] [bold]x")
    progress.advance(2)
    progress.stop()
    assert "auditing [/] [bold]x" in screen.getvalue()


def test_an_output_never_replaces_an_input_of_the_command(setup, tmp_path, monkeypatch):
    """`compare a.json b.json --json a.json`, `eval m.pt --json m.pt`, `patch m.pt -o m.pt`: refused before any work,
    the input untouched (two spellings of one path are one file)."""
    forbid_audit(monkeypatch)
    root, ckpt, _, reports = setup
    before = [p.read_bytes() for p in (ckpt, *reports)]
    res = cli("compare", *reports, "--json", reports[0].parent / "." / reports[0].name)
    assert_clean_error(res, "--json", "would replace an input")
    res = cli(*eval_args(setup, "--json", ckpt))
    assert_clean_error(res, "--json", "would replace an input")
    res = cli("patch", ckpt, "--arch", f"{MODULE}:tiny", "-o", ckpt)
    assert_clean_error(res, "would replace an input")
    assert [p.read_bytes() for p in (ckpt, *reports)] == before


def test_a_quoted_tilde_is_a_folder_named_tilde_like_for_any_tool(setup, tmp_path, monkeypatch):
    """The check and the writer agree on the path: '~/r.json' (quoted, so the shell did not expand it) is written
    under ./~, never checked in $HOME and written elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    res = cli(*eval_args(setup, "--json", "~/r.json"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "~" / "r.json").is_file() and not (tmp_path / "home").exists()


# -- issue 24: a closed stdout never costs a file --------------------------------------------------------------------
def shiftaudit_process(setup, args: list[object], *, stdout: object = subprocess.PIPE, stderr: object = subprocess.PIPE,
                       close_stdout: bool = False, shell_tail: str = "") -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, with the test models importable. ``close_stdout``: started with descriptor 1
    closed (``>&-``); ``shell_tail``: run by bash with this after the command (``| head -1``), the exit status being
    the CLI's own."""
    root = setup[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shiftaudit", *map(str, args)]
    if shell_tail:
        cmd = ["bash", "-c", f'"$@" {shell_tail}; exit "${{PIPESTATUS[0]}}"', "bash", *cmd]
    return subprocess.run(cmd, stdout=stdout, stderr=stderr, text=True, env=env, timeout=150,
                          preexec_fn=(lambda: os.close(1)) if close_stdout else None)


@contextlib.contextmanager
def reader_gone() -> object:
    """The write end of a pipe whose reader has already left: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        yield write
    finally:
        os.close(write)


def assert_all_outputs_whole(tmp_path: Path) -> None:
    assert json.loads((tmp_path / "r.json").read_text())["schema"].startswith("shiftaudit/")
    ET.parse(tmp_path / "j.xml")
    folder = tmp_path / "report"
    assert {"report.json", "report.html", "adversarial.png"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "report.json").read_text()) == json.loads((tmp_path / "r.json").read_text())
    assert (folder / "report.html").read_text().rstrip().endswith("</html>")
    assert not leftovers(tmp_path)


def assert_no_blame(stderr: str | None) -> None:
    if stderr is None:
        return
    # the blame a failed write used to earn ("the model's code ... stopped the run", a model error); a note that
    # merely mentions the model (its assumed statistics) is not blame
    for said in ("Traceback", "model's code", "stopped the run", "internal error", "BrokenPipe", "Exception ignored"):
        assert said not in stderr, stderr


GATE_PASSES, GATE_FAILS = ("--min-consistency", "0"), ("--min-accuracy", "1")  # the tiny model gets 1 of 3 right


@pytest.mark.parametrize("how, gate, code", [
    pytest.param("reader gone", GATE_PASSES, 0, id="reader gone-gate passes"),
    pytest.param("reader gone", GATE_FAILS, 1, id="reader gone-gate fails", marks=pytest.mark.slow),
    pytest.param("| head -1", GATE_PASSES, 0, id="head -1", marks=pytest.mark.slow),
    pytest.param("stdout closed", GATE_PASSES, 0, id="stdout closed", marks=pytest.mark.slow),
    pytest.param("stderr reader gone", GATE_FAILS, 1, id="stderr reader gone-gate fails", marks=pytest.mark.slow),
])
@pytest.mark.timeout(180)  # a whole audit in a real process: minutes on a loaded 2-core machine
def test_a_reader_that_leaves_costs_no_file_and_keeps_the_runs_exit_code(setup, tmp_path, how, gate, code):
    """`shiftaudit eval ... | head -1`: rich used to raise SystemExit(1) on the broken pipe, which the run took for
    the model's exit (exit 2, "the model's code stopped the run") and the report files, written after the table, were
    lost. Now the table is cut, the files are written whole and the exit code is the run's own (the gate's verdict)."""
    args = eval_args(setup, "--json", tmp_path / "r.json", "--out", tmp_path / "report", "--junit", tmp_path / "j.xml",
                     *gate)
    if how == "reader gone":
        with reader_gone() as pipe:
            proc = shiftaudit_process(setup, args, stdout=pipe)
    elif how == "| head -1":
        proc = shiftaudit_process(setup, args, shell_tail="| head -1")
    elif how == "stdout closed":
        proc = shiftaudit_process(setup, args, close_stdout=True)
    else:
        with reader_gone() as pipe:
            proc = shiftaudit_process(setup, args, stderr=pipe)
    assert proc.returncode == code, proc.stderr
    assert_no_blame(proc.stderr)
    assert_all_outputs_whole(tmp_path)


@pytest.mark.parametrize("how", ["reader gone", pytest.param("stdout closed", marks=pytest.mark.slow)])
@pytest.mark.timeout(180)
def test_json_to_a_stdout_nobody_reads_ends_141_after_every_file_is_written(setup, tmp_path, how):
    """`--json -` with its reader gone, or stdout closed: the files were written first (stdout comes last in a run),
    and the run ends like a writer killed by SIGPIPE, 141, with no traceback (it was exit 3, "internal error")."""
    args = eval_args(setup, "--json", "-", "--out", tmp_path / "report", "--junit", tmp_path / "j.xml",
                     "--min-consistency", "0")
    if how == "reader gone":
        with reader_gone() as pipe:
            proc = shiftaudit_process(setup, args, stdout=pipe)
    else:
        proc = shiftaudit_process(setup, args, close_stdout=True)
    assert proc.returncode == 141, proc.stderr
    assert_no_blame(proc.stderr)
    ET.parse(tmp_path / "j.xml")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["schema"].startswith("shiftaudit/")
    assert not leftovers(tmp_path)


def test_a_closed_stdout_is_held_by_dev_null_so_no_file_takes_its_number(setup):
    """Started with descriptor 1 closed (`>&-`), the next file opened would be number 1, and anything a library writes
    to "stdout" would land in it (a report being written, say). The CLI holds /dev/null there first."""
    code = ("import os, sys\nfrom shiftaudit.cli import main\nsys.argv = ['shiftaudit', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nos.write(2, str(os.open(os.devnull, os.O_RDONLY)).encode())")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and proc.stderr == "3", proc.stderr


def test_version_to_a_reader_that_left_is_141_and_silent(setup):
    with reader_gone() as pipe:
        proc = shiftaudit_process(setup, ["--version"], stdout=pipe)
    assert (proc.returncode, proc.stderr) == (141, "")


# -- issue 24: names at the file system's length limit ----------------------------------------------------------------
def named(folder: Path, size: int, ext: str = ".json", fill: str = "n") -> Path:
    """``folder`` / a name of exactly ``size`` bytes ending in ``ext``."""
    return folder / (fill * (size - len(ext)) + ext)


NAME_MAX = 255  # ext4, tmpfs, xfs, btrfs: what the temporary folders of a test run are on


def test_outputs_named_at_the_file_systems_limit_are_written(setup, tmp_path):
    """Every output of every command with a name of exactly NAME_MAX bytes: the temporary file beside it (and the
    backup of the file it replaces) used to be `.NAME.xxxxxxxx.ext`, too long, so a whole audit ran and then could not
    save ("file name too long")."""
    assert os.pathconf(tmp_path, "PC_NAME_MAX") == NAME_MAX
    root, ckpt, data, reports = setup
    report, junit, state = named(tmp_path, NAME_MAX), named(tmp_path, NAME_MAX, ".xml"), named(tmp_path, NAME_MAX, ".npz")
    folder = named(tmp_path, NAME_MAX, "", fill="o")
    report.write_text("an earlier report, replaced")
    res = cli(*eval_args(setup, "--json", report, "--junit", junit, "--out", folder, "--resume", state,
                         "--min-consistency", "0", "--quiet"))
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text()) == json.loads((folder / "report.json").read_text())
    ET.parse(junit)
    assert not state.exists()  # deleted once the report is written, as always
    model, patch_json = named(tmp_path, NAME_MAX, ".safetensors", fill="m"), named(tmp_path, NAME_MAX, fill="p")
    res = cli("patch", ckpt, "--arch", f"{MODULE}:tiny", "--size", "16", "-o", model, "--json", patch_json)
    assert res.exit_code == 0, res.output
    assert model.stat().st_size > 0 and json.loads(patch_json.read_text())
    for args in (["compare", *reports, "--json"], ["inspect", ckpt, "--arch", f"{MODULE}:tiny", "--size", "16", "--json"]):
        out = named(tmp_path, NAME_MAX, fill=args[0][0])
        res = cli(*args, out)
        assert res.exit_code == 0, res.output
        assert json.loads(out.read_text())["schema"].startswith("shiftaudit/")
    assert not leftovers(tmp_path)


def test_a_failed_rename_puts_back_a_file_named_at_the_limit(tmp_path, monkeypatch):
    """The hard-link backup beside a replaced file has a name that fits too: without it the file cannot be put back."""
    first, second = named(tmp_path, NAME_MAX, fill="a"), tmp_path / "b.json"
    first.write_text("old a")
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(dst) == second:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="no output of this run was written"), all_or_nothing():
        write_json_atomic(first, {"new": 1})
        write_json_atomic(second, {"new": 2})
    assert first.read_text() == "old a" and not second.exists()
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("flag", FILE_FLAGS + FOLDER_FLAGS)
def test_an_output_name_over_the_limit_is_one_sentence_before_any_work(setup, tmp_path, monkeypatch, flag):
    forbid_audit(monkeypatch)
    if flag == "eval --out/report.json":  # a folder whose name is over the limit, holding report.json
        target = named(tmp_path, NAME_MAX + 1, "", fill="o") / "report.json"
    else:
        target = named(tmp_path, NAME_MAX + 1)
    res = cli(*command(setup, flag, target))
    said = {"-o": "--output", "--out/report.json": "--out"}.get(flag.split()[1], flag.split()[1])
    assert_clean_error(res, said, f"{NAME_MAX + 1} bytes", f"more than the {NAME_MAX}", "shorter name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_path_at_the_path_limit_is_written_and_a_longer_one_refused_before_any_work(setup, tmp_path, monkeypatch):
    """PATH_MAX (4096 bytes with the NUL): a relative path of 4095 bytes is written, although the temporary file
    beside it has a longer name than the report (it is cut to fit); 4096 bytes is refused before the model loads."""
    monkeypatch.chdir(tmp_path)
    folder = Path(*["d" * 250] * 16)  # 4,015 bytes, folders made one level at a time
    folder.mkdir(parents=True)
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1
    report = named(folder, limit - len(str(folder)) - 1)
    assert len(str(report)) == limit
    res = cli(*eval_args(setup, "--json", report, "--quiet"))
    assert res.exit_code == 0, res.output
    assert json.loads(Path(report).read_text())["schema"].startswith("shiftaudit/")
    forbid_audit(monkeypatch)
    res = cli(*eval_args(setup, "--json", named(folder, limit - len(str(folder)))))
    assert_clean_error(res, "--json", f"{limit + 1:,} bytes long, more than the {limit}")
    assert [p.name for p in folder.iterdir()] == [report.name]


@pytest.mark.parametrize("what", ["eval model", "--data", "--class-map", "compare report", "inspect model", "patch model"])
def test_an_over_long_input_name_is_one_sentence_exit_2(setup, tmp_path, what):
    """A model, data or class-map name over NAME_MAX: one sentence and exit 2 (the model and --data were exit 3,
    "internal error (OSError: [Errno 36] File name too long ...)")."""
    _, ckpt, data, reports = setup
    long = named(tmp_path, NAME_MAX + 45, ".pt")
    arch = ["--arch", f"{MODULE}:tiny", "--size", "16"]
    args = {
        "eval model": ["eval", long, *arch, "--data", data],
        "--data": ["eval", ckpt, *arch, "--data", long],
        "--class-map": ["eval", ckpt, *arch, "--data", data, "--class-map", long],
        "compare report": ["compare", reports[0], long],
        "inspect model": ["inspect", long, *arch],
        "patch model": ["patch", long, *arch],
    }[what]
    assert_clean_error(cli(*args), str(long)[:60])
    assert not list(tmp_path.iterdir())


# -- issue 24: a reused --out folder ----------------------------------------------------------------------------------
def test_a_reused_report_folder_keeps_no_picture_of_an_earlier_run(setup, tmp_path):
    """`eval --layers --out R`, then `eval --out R`: layers.png of the first run used to stay beside the new report,
    a heatmap of another audit. Pictures shiftaudit drew and this run does not are removed (and said); files it did
    not draw are left, and a file at one of the report's picture names that it did not draw is named."""
    from PIL import Image

    out = tmp_path / "report"
    res = cli(*eval_args(setup, "--out", out, "--layers", "auto", "--quiet"))
    assert res.exit_code == 0, res.output
    assert "layers.png" in {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("the user's own notes\n")
    Image.new("RGB", (4, 4)).save(out / "consistency.png")  # a report picture name (unlabelled runs), not drawn here
    res = cli(*eval_args(setup, "--out", out))
    assert res.exit_code == 0, res.output
    wrote = {Path(line.removeprefix("wrote ")).name for line in res.stdout.splitlines() if line.startswith("wrote ")}
    assert {p.name for p in out.iterdir()} == wrote | {"notes.txt", "consistency.png"}
    assert f"removed {out / 'layers.png'}: an earlier run's picture" in res.stdout
    assert f"note: left {out / 'consistency.png'} as it is" in res.stdout
    assert (out / "notes.txt").read_text() == "the user's own notes\n"
    assert not leftovers(tmp_path)


def test_a_failed_run_removes_no_stale_picture(setup, tmp_path, monkeypatch):
    out = tmp_path / "report"
    res = cli(*eval_args(setup, "--out", out, "--layers", "auto", "--quiet"))
    assert res.exit_code == 0, res.output
    before = {p: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr("shiftaudit.report.junit.write_bytes_atomic", disk_full)  # the JUnit file is written last
    res = cli(*eval_args(setup, "--out", out, "--junit", tmp_path / "j.xml", "--min-consistency", "0"))
    assert_clean_error(res, "j.xml", "no space left on device")
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    assert not leftovers(tmp_path)


def test_a_stale_file_that_cannot_be_removed_undoes_the_run(tmp_path, monkeypatch):
    """Removal is one of the run's renames: if it fails, the files already replaced are put back."""
    from shiftaudit.files import remove_stale

    stale, report = tmp_path / "layers.png", tmp_path / "report.json"
    stale.write_bytes(b"an earlier picture")
    report.write_text("the earlier report")
    real_unlink = os.unlink

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if Path(path) == stale:  # type: ignore[arg-type]
            raise OSError(13, "Permission denied")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OutputError, match="no output of this run was written"), all_or_nothing():
        write_json_atomic(report, {"new": 1})
        remove_stale(stale)
    assert report.read_text() == "the earlier report" and stale.read_bytes() == b"an earlier picture"
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink-to-file", "folder"])
def test_a_stale_name_that_is_not_a_regular_file_is_never_removed(tmp_path, kind):
    from shiftaudit.files import remove_stale

    target = tmp_path / "layers.png"
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        with all_or_nothing() as outputs:
            write_json_atomic(tmp_path / "report.json", {"new": 1})
            remove_stale(target)
        assert snapshot(target) == before and outputs.removed == []


# -- issue 24: control characters in every printed line --------------------------------------------------------------
# ESC sequences, carriage return, newline, bell, C1 NEL and CSI, a bidi override, rich markup
NASTY = "\x1b[31m\r\n\x07\x85\x9b\u202e[bold]"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")  # all but "\n"


def assert_no_raw_control(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"raw {found.group()!r} at {found.start()}: {text[max(0, found.start() - 80):found.end() + 40]!r}"


def test_control_characters_in_every_user_string_are_escaped_in_every_printed_line(setup, tmp_path):
    """Folder, class and file names, notes, table titles, "wrote" lines and gate lines: rich strips some controls
    (BEL, CR) and passes the rest (ESC, CSI, a bidi override) straight to the terminal; the HTML page and the JUnit
    file held them raw (the JUnit file did not parse)."""
    data = tmp_path / f"data{NASTY}"
    for i, name in enumerate(["c\x1b[32mat", "do\rg\n", f"b\x9bird{NASTY}"]):
        write_images(data / name, 1, seed=i)
    (data / "c\x1b[32mat" / "bro\x1bken\u202e.png").write_bytes(b"not an image")  # skipped, named in a note
    out, report, junit = tmp_path / f"out{NASTY}", tmp_path / f"r{NASTY}.json", tmp_path / f"j{NASTY}.xml"
    _, ckpt, _, _ = setup
    res = cli("eval", ckpt, "--arch", f"{MODULE}:tiny", "--data", data, "--size", "16", "--max-shift", "1", "--device",
              "cpu", "--workers", "0", "--json", report, "--out", out, "--junit", junit, "--min-consistency", "0")
    assert res.exit_code == 0, res.output
    assert_no_raw_control(res.stdout + res.stderr)
    flat = "".join(res.stdout.split())
    shown = "".join(one_line(NASTY).split())
    assert f"data{shown}:4images" in flat, flat  # the table's title (the broken file counts until it is read)
    assert "skipped:bro\\x1bken\\u202e.png" in flat  # the note
    assert f"wrote{report.parent}/r{shown}.json" in flat and f"wrote{out}/report.html".replace(NASTY, shown) in flat
    ET.parse(junit)
    page = (out / "report.html").read_text()
    assert_no_raw_control(page)
    assert html.escape(f"data{one_line(NASTY)}") in page
    assert f"data{NASTY}: 4 images" in json.loads(report.read_text())["data"]["description"]  # the JSON keeps it exact


def test_control_characters_in_compared_report_names_are_escaped(setup, tmp_path):
    """Run names come from the report files' names: table headers, caption and notes show them escaped."""
    _, _, _, reports = setup
    first, second = tmp_path / f"base{NASTY}.json", tmp_path / "pat\x1bched\u202e.json"
    first.write_bytes(reports[0].read_bytes())
    second.write_bytes(reports[1].read_bytes())
    res = cli("compare", first, second)
    assert res.exit_code == 0, res.output
    assert_no_raw_control(res.stdout + res.stderr)
    assert "Change from base\\x1b[31m" in "".join(res.stdout.splitlines())


def test_the_console_escapes_whatever_reaches_it_raw():
    """The last step before the terminal: a renderable built without the escaping helper still cannot send an escape
    sequence or a bidi override (rich's own styles still work)."""
    import io

    from rich.text import Text

    from shiftaudit.cli.common import PlainConsole

    screen = io.StringIO()
    PlainConsole(file=screen, force_terminal=True, width=80).print(Text("a\x1b[2Jb\u202ec\x9bd", style="bold"))
    shown = screen.getvalue()
    assert "a\\x1b[2Jb\\u202ec\\x9bd" in shown and "\x1b[2J" not in shown and "\u202e" not in shown
    assert "\x1b[1m" in shown  # bold, from rich


@pytest.mark.parametrize("plain", [False, True], ids=["live bar", "plain lines"])
def test_control_characters_in_a_progress_description_are_escaped(monkeypatch, plain):
    import io

    from shiftaudit.cli.common import PlainConsole
    from shiftaudit.cli.progress import RichProgress

    screen = io.StringIO()
    monkeypatch.setattr("shiftaudit.cli.progress.err_console", PlainConsole(file=screen, force_terminal=True, width=200))
    progress = RichProgress(plain=plain, every_s=0.0, min_gap_s=0.0)
    progress.start(2, f"auditing {NASTY}")
    progress.advance(2)
    progress.stop()
    shown = screen.getvalue()
    assert f"auditing {one_line(NASTY)}" in shown
    # ESC and CR: also rich's own styles and cursor moves; the name's own sequence must not be there
    assert not any(c in shown for c in "\x07\x85\x9b\u202e") and "\x1b[31m\r" not in shown
