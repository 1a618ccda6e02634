"""Output safety (shiftaudit/files.py): what a run writes, it writes whole, where it was asked, or not at all.

- Outputs pointed at a FIFO, socket, device node, symlink or folder are refused before any work, and the node stays
  what it was (never replaced by a regular file; a FIFO is never opened, so nothing hangs).
- Files are created with the umask's mode and fsynced before the rename; a run writes all its outputs or none, and a
  failing or interrupted write keeps the previous file.
- Names at the file system's length limit are written, longer ones refused before any work; an output never replaces
  an input of the command.
- A reused ``--out`` folder keeps no picture of an earlier run; a stale name that is not a regular file is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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

from shiftaudit.errors import OutputError, ShiftAuditError
from shiftaudit.files import (
    all_or_nothing,
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
)
from tests.helpers import (
    NAME_MAX,
    REPO,
    TINY_SETUP_MODULE,
    assert_clean_error,
    cli,
    examples,
    forbid_audit,
    leftovers,
    named,
    setup_eval_args,
)


@pytest.mark.parametrize(
    "where, needle",
    [("FILE/report.json", "is a file, not a folder"), ("/proc/sa-report.json", "cannot be written"), ("DIR", "is a folder")],
)
def test_check_output_path_refuses_unwritable_places_without_creating_anything(tmp_path, where, needle):
    from shiftaudit.errors import OutputError
    from shiftaudit.files import check_output as check_output_path

    (tmp_path / "FILE").write_text("x")
    target = Path(where.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path)))
    with pytest.raises(OutputError, match=needle):
        check_output_path(target, "--json")
    check_output_path(tmp_path / "new" / "deeper" / "r.json", "--json")  # fine, and not created
    check_output_path(tmp_path / "outdir", "--out", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


# a FIFO opened by mistake blocks forever: fail, never hang (ten times longer under `make fuzz`, with ten times the examples)
pytestmark = pytest.mark.timeout(60 * examples(1))


def disk_full(path: object, *args: object, **kwargs: object) -> None:
    """A writer that fills the disk half-way through its file (OSError 28 inside the atomic writer)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half of it")
        raise OSError(28, "No space left on device")


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


SPECIAL = ["fifo", "socket", "symlink-to-file", "symlink-to-devnull", "chardev"]


SAID = {
    "fifo": "FIFO",
    "socket": "socket",
    "symlink-to-file": "symbolic link",
    "symlink-to-devnull": "symbolic link",
    "chardev": "character device",
    "folder": "folder",
}


def command(tiny_setup, flag: str, target: Path) -> list[object]:
    """A command line writing ``target`` through ``flag``; the model would fail its first forward pass, so a refusal
    that came after the audit started would say so instead."""
    root, ckpt, data, reports = tiny_setup
    broken = "feature_map"
    if flag in ("eval --json", "eval --junit", "eval --resume"):
        return setup_eval_args(tiny_setup, flag.split()[1], target, "--min-consistency", "0", factory=broken)
    if flag == "eval --out":
        return setup_eval_args(tiny_setup, "--out", target, factory=broken)
    if flag == "eval --out/report.json":
        return setup_eval_args(tiny_setup, "--out", target.parent, factory=broken)
    if flag in ("patch -o", "patch --json"):
        return ["patch", ckpt, "--arch", f"{TINY_SETUP_MODULE}:needs_mask", flag.split()[1], target, "--size", "16"]
    if flag in ("demo --json", "demo --out"):
        return ["demo", "--images", "4", "--max-shift", "1", "--device", "cpu", flag.split()[1], target]
    if flag == "compare --json":
        return ["compare", *reports, "--json", target]
    if flag == "inspect --json":
        return ["inspect", ckpt, "--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16", "--json", target]
    raise ValueError(flag)


FILE_FLAGS = [
    "eval --json",
    "eval --junit",
    "eval --resume",
    "eval --out/report.json",
    "patch -o",
    "patch --json",
    "demo --json",
    "compare --json",
    "inspect --json",
]


FOLDER_FLAGS = ["eval --out", "demo --out"]


@pytest.mark.parametrize("kind", SPECIAL + ["folder"])
@pytest.mark.parametrize("flag", FILE_FLAGS)
def test_an_output_onto_anything_but_a_regular_file_is_refused_before_any_work(tiny_setup, tmp_path, monkeypatch, flag, kind):
    forbid_audit(monkeypatch)
    target = tmp_path / "outputs" / "target.json" if flag != "eval --out/report.json" else tmp_path / "outputs" / "report.json"
    target.parent.mkdir()
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        res = cli(*command(tiny_setup, flag, target))
        line = assert_clean_error(res, str(target), SAID[kind])
        assert snapshot(target) == before, f"{flag} replaced the {kind}"
    assert not leftovers(tmp_path)
    assert line.count("error:") == 1


@pytest.mark.parametrize("kind", SPECIAL + ["regular"])
@pytest.mark.parametrize("flag", FOLDER_FLAGS)
def test_a_report_folder_onto_anything_but_a_folder_is_refused(tiny_setup, tmp_path, monkeypatch, flag, kind):
    forbid_audit(monkeypatch)
    target = tmp_path / "report"
    with contextlib.ExitStack() as stack:
        make_node(target, kind, stack)
        before = snapshot(target)
        res = cli(*command(tiny_setup, flag, target))
        assert_clean_error(res, str(target), "not a folder")
        assert snapshot(target) == before
    assert not leftovers(tmp_path)


@pytest.mark.slow  # a real process (~5 s); the in-process refusals above hold the property
def test_a_fifo_is_refused_in_a_real_process_within_seconds(tiny_setup, tmp_path):
    """The process, not just the CLI function: a FIFO opened for reading or writing would block it forever."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    args = [str(a) for a in setup_eval_args(tiny_setup, "--json", fifo, "--resume", tmp_path / "state")]
    root = tiny_setup[0]
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


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_created_files_take_the_umask_like_any_tool(tiny_setup, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        res = cli(
            *setup_eval_args(
                tiny_setup,
                "--json",
                tmp_path / "r.json",
                "--out",
                tmp_path / "report",
                "--quiet",
                "--junit",
                tmp_path / "j.xml",
                "--min-consistency",
                "0",
            )
        )
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


def _previous_outputs(tmp_path: Path) -> dict[Path, bytes]:
    out = tmp_path / "report"
    out.mkdir()
    files = {
        tmp_path / "r.json": b"old report\n",
        tmp_path / "j.xml": b"old junit\n",
        out / "report.json": b"old\n",
        out / "report.html": b"old html\n",
    }
    for path, data in files.items():
        path.write_bytes(data)
    return files


def test_a_failure_at_the_last_write_leaves_every_previous_output_as_it_was(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.setattr("shiftaudit.report.junit.write_bytes_atomic", disk_full)  # the JUnit file is written last
    previous = _previous_outputs(tmp_path)
    names_before = sorted(p.name for p in (tmp_path / "report").iterdir())
    res = cli(
        *setup_eval_args(
            tiny_setup,
            "--json",
            tmp_path / "r.json",
            "--out",
            tmp_path / "report",
            "--junit",
            tmp_path / "j.xml",
            "--min-consistency",
            "0",
        )
    )
    assert_clean_error(res, "j.xml", "no space left on device")
    assert {p: p.read_bytes() for p in previous} == previous
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == names_before, "new pictures were left behind"
    assert not leftovers(tmp_path)


def test_a_failure_removes_the_report_folder_the_run_created(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.setattr("shiftaudit.report.html.write_text_atomic", disk_full)
    res = cli(*setup_eval_args(tiny_setup, "--json", tmp_path / "r.json", "--out", tmp_path / "new" / "report"))
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


def test_a_name_clash_inside_out_is_found_before_the_audit(tiny_setup, tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    (tmp_path / "report" / "report.html").mkdir(parents=True)
    res = cli(*setup_eval_args(tiny_setup, "--out", tmp_path / "report", "--json", tmp_path / "r.json"))
    assert_clean_error(res, "report.html", "is a folder")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flags", [("--json", "--junit"), ("--json", "--resume"), ("--junit", "--out")])
def test_two_outputs_naming_one_file_are_refused(tiny_setup, tmp_path, monkeypatch, flags):
    forbid_audit(monkeypatch)
    same = tmp_path / "report.json"
    args = []
    for flag in flags:
        args += [flag, tmp_path if flag == "--out" else same]
    res = cli(*setup_eval_args(tiny_setup, *args, "--min-consistency", "0"))
    assert_clean_error(res, flags[0], flags[1], "report.json")
    assert not list(tmp_path.iterdir())


def test_an_unwritable_resume_path_is_refused_before_the_audit(tiny_setup, tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    (tmp_path / "afile").write_text("x")
    res = cli(*setup_eval_args(tiny_setup, "--resume", tmp_path / "afile" / "state.npz"))
    assert_clean_error(res, "--resume", "afile")


def test_patch_writes_the_model_and_the_report_together_or_neither(tiny_setup, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr("shiftaudit.cli.patch_views.write_json_atomic", disk_full)  # the report is written after the model
        res = cli(
            "patch",
            tiny_setup[1],
            "--arch",
            f"{TINY_SETUP_MODULE}:tiny",
            "--size",
            "16",
            "-o",
            tmp_path / "aa.safetensors",
            "--json",
            tmp_path / "patch.json",
        )
    assert_clean_error(res, "patch.json", "no space left on device")
    assert not list(tmp_path.iterdir()), "the patched model was written without its report"
    res = cli(
        "patch",
        tiny_setup[1],
        "--arch",
        f"{TINY_SETUP_MODULE}:tiny",
        "--size",
        "16",
        "-o",
        tmp_path / "aa.safetensors",
        "--json",
        tmp_path / "patch.json",
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aa.safetensors", "patch.json"]


DESTINATION_KINDS = ["nothing", "regular", "fifo", "socket", "symlink-to-file", "symlink-to-devnull", "folder"]


@settings(
    max_examples=examples(25),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    json_kind=st.sampled_from(DESTINATION_KINDS),
    junit_kind=st.sampled_from(DESTINATION_KINDS),
    inner_kind=st.sampled_from(DESTINATION_KINDS),
    html_kind=st.sampled_from(["nothing", "regular", "fifo"]),
)
def test_any_mix_of_destinations_writes_everything_or_touches_nothing(tiny_setup, json_kind, junit_kind, inner_kind, html_kind):
    with tempfile.TemporaryDirectory(prefix="sa") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        (root / "report").mkdir()
        paths = {
            "json": root / "r.json",
            "junit": root / "j.xml",
            "inner": root / "report" / "report.json",
            "html": root / "report" / "report.html",
        }
        kinds = {"json": json_kind, "junit": junit_kind, "inner": inner_kind, "html": html_kind}
        for key, path in paths.items():
            make_node(path, kinds[key], stack)
        before = {path: snapshot(path) for path in root.rglob("*")}
        res = cli(
            *setup_eval_args(
                tiny_setup,
                "--json",
                paths["json"],
                "--junit",
                paths["junit"],
                "--out",
                root / "report",
                "--min-consistency",
                "0",
                "--quiet",
            )
        )
        if all(k in ("nothing", "regular") for k in kinds.values()):
            assert res.exit_code == 0, res.output
            assert all(stat.S_ISREG(os.lstat(p).st_mode) and b"previous content" not in p.read_bytes() for p in paths.values())
        else:
            assert_clean_error(res)
            assert {path: snapshot(path) for path in root.rglob("*")} == before, "something was touched"
        assert not leftovers(root)


def test_an_output_never_replaces_an_input_of_the_command(tiny_setup, tmp_path, monkeypatch):
    """`compare a.json b.json --json a.json`, `eval m.pt --json m.pt`, `patch m.pt -o m.pt`: refused before any work,
    the input untouched (two spellings of one path are one file)."""
    forbid_audit(monkeypatch)
    root, ckpt, _, reports = tiny_setup
    before = [p.read_bytes() for p in (ckpt, *reports)]
    res = cli("compare", *reports, "--json", reports[0].parent / "." / reports[0].name)
    assert_clean_error(res, "--json", "would replace an input")
    res = cli(*setup_eval_args(tiny_setup, "--json", ckpt))
    assert_clean_error(res, "--json", "would replace an input")
    res = cli("patch", ckpt, "--arch", f"{TINY_SETUP_MODULE}:tiny", "-o", ckpt)
    assert_clean_error(res, "would replace an input")
    assert [p.read_bytes() for p in (ckpt, *reports)] == before


def test_a_quoted_tilde_is_a_folder_named_tilde_like_for_any_tool(tiny_setup, tmp_path, monkeypatch):
    """The check and the writer agree on the path: '~/r.json' (quoted, so the shell did not expand it) is written
    under ./~, never checked in $HOME and written elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    res = cli(*setup_eval_args(tiny_setup, "--json", "~/r.json"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "~" / "r.json").is_file() and not (tmp_path / "home").exists()


def test_outputs_named_at_the_file_systems_limit_are_written(tiny_setup, tmp_path):
    """Every output of every command with a name of exactly NAME_MAX bytes: the temporary file beside it (and the
    backup of the file it replaces) used to be `.NAME.xxxxxxxx.ext`, too long, so a whole audit ran and then could not
    save ("file name too long")."""
    assert os.pathconf(tmp_path, "PC_NAME_MAX") == NAME_MAX
    root, ckpt, data, reports = tiny_setup
    report, junit, state = named(tmp_path, NAME_MAX), named(tmp_path, NAME_MAX, ".xml"), named(tmp_path, NAME_MAX, ".npz")
    folder = named(tmp_path, NAME_MAX, "", fill="o")
    report.write_text("an earlier report, replaced")
    res = cli(
        *setup_eval_args(
            tiny_setup,
            "--json",
            report,
            "--junit",
            junit,
            "--out",
            folder,
            "--resume",
            state,
            "--min-consistency",
            "0",
            "--quiet",
        )
    )
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text()) == json.loads((folder / "report.json").read_text())
    ET.parse(junit)
    assert not state.exists()  # deleted once the report is written, as always
    model, patch_json = named(tmp_path, NAME_MAX, ".safetensors", fill="m"), named(tmp_path, NAME_MAX, fill="p")
    res = cli("patch", ckpt, "--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16", "-o", model, "--json", patch_json)
    assert res.exit_code == 0, res.output
    assert model.stat().st_size > 0 and json.loads(patch_json.read_text())
    inspect = ["inspect", ckpt, "--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16", "--json"]
    for args in (["compare", *reports, "--json"], inspect):
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
def test_an_output_name_over_the_limit_is_one_sentence_before_any_work(tiny_setup, tmp_path, monkeypatch, flag):
    forbid_audit(monkeypatch)
    if flag == "eval --out/report.json":  # a folder whose name is over the limit, holding report.json
        target = named(tmp_path, NAME_MAX + 1, "", fill="o") / "report.json"
    else:
        target = named(tmp_path, NAME_MAX + 1)
    res = cli(*command(tiny_setup, flag, target))
    said = {"-o": "--output", "--out/report.json": "--out"}.get(flag.split()[1], flag.split()[1])
    assert_clean_error(res, said, f"{NAME_MAX + 1} bytes", f"more than the {NAME_MAX}", "shorter name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_path_at_the_path_limit_is_written_and_a_longer_one_refused_before_any_work(tiny_setup, tmp_path, monkeypatch):
    """PATH_MAX (4096 bytes with the NUL): a relative path of 4095 bytes is written, although the temporary file
    beside it has a longer name than the report (it is cut to fit); 4096 bytes is refused before the model loads."""
    monkeypatch.chdir(tmp_path)
    folder = Path(*["d" * 250] * 16)  # 4,015 bytes, folders made one level at a time
    folder.mkdir(parents=True)
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1
    report = named(folder, limit - len(str(folder)) - 1)
    assert len(str(report)) == limit
    res = cli(*setup_eval_args(tiny_setup, "--json", report, "--quiet"))
    assert res.exit_code == 0, res.output
    assert json.loads(Path(report).read_text())["schema"].startswith("shiftaudit/")
    forbid_audit(monkeypatch)
    res = cli(*setup_eval_args(tiny_setup, "--json", named(folder, limit - len(str(folder)))))
    assert_clean_error(res, "--json", f"{limit + 1:,} bytes long, more than the {limit}")
    assert [p.name for p in folder.iterdir()] == [report.name]


@pytest.fixture(scope="module")
def layers_report(tiny_setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report folder of one `eval --out R --layers auto` run (with its layers.png), made once: each test copies it."""
    out = tmp_path_factory.mktemp("layers") / "report"
    res = cli(*setup_eval_args(tiny_setup, "--out", out, "--layers", "auto", "--quiet"))
    assert res.exit_code == 0, res.output
    assert "layers.png" in {p.name for p in out.iterdir()}
    return out


def test_a_reused_report_folder_keeps_no_picture_of_an_earlier_run(tiny_setup, layers_report, tmp_path):
    """`eval --layers --out R`, then `eval --out R`: layers.png of the first run used to stay beside the new report,
    a heatmap of another audit. Pictures shiftaudit drew and this run does not are removed (and said); files it did
    not draw are left, and a file at one of the report's picture names that it did not draw is named."""
    from PIL import Image

    out = tmp_path / "report"
    shutil.copytree(layers_report, out)  # as `eval --out R --layers auto` left it
    (out / "notes.txt").write_text("the user's own notes\n")
    Image.new("RGB", (4, 4)).save(out / "consistency.png")  # a report picture name (unlabelled runs), not drawn here
    res = cli(*setup_eval_args(tiny_setup, "--out", out))
    assert res.exit_code == 0, res.output
    wrote = {Path(line.removeprefix("wrote ")).name for line in res.stdout.splitlines() if line.startswith("wrote ")}
    assert {p.name for p in out.iterdir()} == wrote | {"notes.txt", "consistency.png"}
    assert f"removed {out / 'layers.png'}: an earlier run's picture" in res.stdout
    assert f"note: left {out / 'consistency.png'} as it is" in res.stdout
    assert (out / "notes.txt").read_text() == "the user's own notes\n"
    assert not leftovers(tmp_path)


def test_a_failed_run_removes_no_stale_picture(tiny_setup, layers_report, tmp_path, monkeypatch):
    out = tmp_path / "report"
    shutil.copytree(layers_report, out)  # as `eval --out R --layers auto` left it
    before = {p: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr("shiftaudit.report.junit.write_bytes_atomic", disk_full)  # the JUnit file is written last
    res = cli(*setup_eval_args(tiny_setup, "--out", out, "--junit", tmp_path / "j.xml", "--min-consistency", "0"))
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


def _leftovers(folder: Path, name: str) -> list[Path]:
    return list(folder.glob(f".{name}.*"))


def test_failing_serialiser_leaves_the_previous_file_intact(tmp_path):
    dest = tmp_path / "report.json"
    write_json_atomic(dest, {"run": 1})
    before = dest.read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON: the serialiser refuses before anything is replaced
        write_json_atomic(dest, {"run": 2, "value": float("nan")})
    with pytest.raises(TypeError):
        write_json_atomic(dest, {"run": 3, "value": object()})
    assert dest.read_bytes() == before and json.loads(before) == {"run": 1}
    assert not _leftovers(tmp_path, dest.name)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, OSError])
def test_failure_half_way_through_a_write_keeps_the_old_file(tmp_path, error):
    dest = tmp_path / "model.safetensors"
    write_bytes_atomic(dest, b"old and complete")
    raised: type[BaseException] = OutputError if error is OSError else error
    with pytest.raises(raised), atomic_path(dest) as tmp, tmp.open("wb") as f:
        f.write(b"new but only ha")
        f.flush()
        raise error(28, "No space left on device") if error is OSError else error("stop")
    assert dest.read_bytes() == b"old and complete"
    assert not _leftovers(tmp_path, dest.name)


def test_disk_full_is_one_sentence_naming_the_file(tmp_path, monkeypatch):
    dest = tmp_path / "r.json"

    def full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError) as exc:
        write_json_atomic(dest, {"a": 1})
    text = str(exc.value)
    assert "\n" not in text and str(dest) in text and "no space left on device" in text
    assert not dest.exists() and not _leftovers(tmp_path, dest.name)


def test_first_write_that_fails_leaves_no_file_at_all(tmp_path):
    dest = tmp_path / "new.json"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("{")
        raise RuntimeError("serialiser crashed")
    assert not dest.exists() and not _leftovers(tmp_path, dest.name)


@pytest.mark.parametrize("where", ["/proc/x.json", "FILE/x.json", "FILE/deeper/x.json"])
def test_unwritable_destinations_are_output_errors(tmp_path, where):
    (tmp_path / "FILE").write_text("a regular file where a folder should be")
    dest = Path(where.replace("FILE", str(tmp_path / "FILE")))
    with pytest.raises(OutputError) as exc:
        write_json_atomic(dest, {"a": 1})
    assert isinstance(exc.value, ShiftAuditError) and "\n" not in str(exc.value)
