"""Faults around what a run writes, and what the model's code can do to the run (issue 13, sections 1, 3 and 4).

- Outputs pointed at a FIFO, socket, device node, symlink or folder are refused before any work, and the node stays
  what it was (never replaced by a regular file; a FIFO is never opened, so nothing hangs).
- Files are created with the umask's mode and fsynced before the rename; a run writes all its outputs or none.
- A model whose forward raises SystemExit(0) or another BaseException fails the run (exit 2): a CI gate never
  passes without a report.
- Rich markup, newlines and escape sequences in user strings are printed literally, on one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftaudit.atomicio import (
    all_or_nothing,
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
)
from shiftaudit.errors import OutputError
from tests.helpers import (
    assert_clean_error,
    cli,
    examples,
    synthetic_result,
    tiny_models_on_path,
    write_image_folder,
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

    monkeypatch.setattr("shiftaudit.engine.runner.run_plan", audit)  # what audit() and the demo run
    monkeypatch.setattr("shiftaudit.cli.running.run_plan", audit)  # what eval and patch --eval run


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
        mp.setattr("shiftaudit.atomicio.write_json_atomic", disk_full)  # the report is written after the model
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
    title = "".join(line.rstrip() for line in res.stdout.splitlines())  # the title wraps at the table's width
    assert "[bold]data[/]: 3 images" in title and "(" + str(model) + ")" in title


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
