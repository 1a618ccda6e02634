"""What the CLI prints and the exit code it ends with, whatever happens around it.

- ``--json -`` is stdout (the tables go to stderr); ``-`` for any other output is refused.
- A model whose forward raises SystemExit(0) or another BaseException fails the run (exit 2): a CI gate never passes
  without a report.
- Rich markup, newlines, escape sequences and other control characters in user strings are printed literally and
  escaped, each message on one line.
- A reader that leaves (``| head -1``) or a closed stdout costs no file, keeps the run's exit code (141 when the
  report itself was for stdout) and is never blamed on the model.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from shiftaudit.errors import one_line
from tests.helpers import (
    REPO,
    TINY_SETUP_MODULE,
    assert_clean_error,
    cli,
    examples,
    leftovers,
    setup_eval_args,
    write_image_folder,
    write_images,
)

# a FIFO opened by mistake blocks forever: fail, never hang (ten times longer under `make fuzz`, with ten times the examples)
pytestmark = pytest.mark.timeout(60 * examples(1))


@pytest.mark.parametrize("name", ["eval", "demo", "patch", "compare"])
def test_json_dash_is_stdout_with_the_tables_on_stderr_and_no_file_named_dash(tiny_setup, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    root, ckpt, data, reports = tiny_setup
    args = {
        "eval": setup_eval_args(tiny_setup, "--json", "-"),
        "demo": ["demo", "--images", "4", "--max-shift", "1", "--device", "cpu", "--json", "-"],
        "patch": ["patch", ckpt, "--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16", "--json", "-"],
        "compare": ["compare", *reports, "--json", "-"],
    }[name]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is the JSON and nothing else
    assert report["schema"].startswith("shiftaudit/")
    assert "wrote" not in res.output
    assert not list(tmp_path.iterdir()), "a file named '-' (or another) appeared"


@pytest.mark.parametrize("flag", ["--junit", "--out", "--resume"])
def test_dash_for_any_other_output_is_refused(tiny_setup, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    res = cli(*setup_eval_args(tiny_setup, flag, "-", "--min-consistency", "0"))
    assert_clean_error(res, flag, "'-'")
    assert not list(tmp_path.iterdir())


def test_patch_output_dash_is_refused(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("patch", tiny_setup[1], "--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16", "-o", "-")
    assert_clean_error(res, "--output", "'-'")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "factory, said", [("exit_zero", "SystemExit(0)"), ("generator_exit", "GeneratorExit"), ("model_bail", "ModelBail")]
)
def test_a_model_raising_an_exit_fails_the_gate_with_no_report(tiny_setup, tmp_path, factory, said):
    res = cli(
        *setup_eval_args(
            tiny_setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", "--json", tmp_path / "r.json", factory=factory
        )
    )
    assert_clean_error(res, "The model failed", said)
    assert not list(tmp_path.iterdir()), "a report or a JUnit file was written"


@pytest.mark.slow  # a real process (~8 s); the in-process test above holds the exit code
def test_a_model_raising_systemexit_zero_fails_in_a_real_process(tiny_setup, tmp_path):
    root = tiny_setup[0]
    args = [
        str(a) for a in setup_eval_args(tiny_setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", factory="exit_zero")
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "shiftaudit", *args], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "SystemExit(0)" in proc.stderr and not (tmp_path / "j.xml").exists()


def test_an_exit_while_building_the_model_is_a_failure_not_a_pass(tiny_setup, tmp_path):
    res = cli(*setup_eval_args(tiny_setup, "--min-consistency", "0", "--junit", tmp_path / "j.xml", factory="exit_on_build"))
    assert_clean_error(res, "SystemExit(0)", "failure")
    assert not (tmp_path / "j.xml").exists()


@pytest.mark.parametrize("name", ["inspect", "patch --dry-run", "patch --eval"])
def test_other_commands_running_the_model_fail_on_its_exit_too(tiny_setup, tmp_path, name):
    root, ckpt, data, _ = tiny_setup
    arch = ["--arch", f"{TINY_SETUP_MODULE}:exit_zero", "--size", "16"]
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


def test_markup_in_folder_and_file_names_is_printed_literally(tiny_setup, tmp_path):
    _, ckpt, data, _ = tiny_setup
    weird = tmp_path / "[bold]data[" / "]"  # a path holding "[/]"
    write_image_folder(weird, classes=3, per_class=1)
    (tmp_path / "ck[").mkdir()
    model = tmp_path / "ck[" / "]pt[red].pt"
    model.write_bytes(ckpt.read_bytes())
    report = tmp_path / "[/]" / "r[bold].json"
    res = cli(
        "eval",
        model,
        "--arch",
        f"{TINY_SETUP_MODULE}:tiny",
        "--data",
        weird,
        "--size",
        "16",
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        report,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["model"]["source"].endswith("ck[/]pt[red].pt")
    assert f"wrote {report}" in res.stdout.splitlines()
    title = "".join(res.stdout.split())  # the title wraps at the table's width, at a space or inside a word
    assert "[bold]data[/]:3images" in title and "(" + str(model) + ")" in title


def test_markup_and_emoji_codes_in_an_error_are_literal(tmp_path):
    res = cli("eval", tmp_path / "[/]missing :smile:.pt", "--data", tmp_path)
    assert_clean_error(res, "[/]missing :smile:.pt")


@pytest.mark.parametrize(
    "name, shown",
    [("bad\nname.pt", "bad\\nname.pt"), ("esc\x1b[31mred.pt", "esc\\x1b[31mred.pt"), ("cr\rname.pt", "cr\\rname.pt")],
)
def test_control_characters_in_a_file_name_keep_the_error_on_one_line(tmp_path, name, shown):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint at all")
    res = cli("eval", path, "--data", tmp_path)
    line = assert_clean_error(res, shown)
    assert "\x1b" not in res.stderr and "\r" not in res.stderr, line


def test_a_newline_in_an_output_name_keeps_the_wrote_line_whole(tiny_setup, tmp_path):
    report = tmp_path / "two\nlines.json"
    res = cli(*setup_eval_args(tiny_setup, "--json", report))
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


def shiftaudit_process(
    tiny_setup,
    args: list[object],
    *,
    stdout: object = subprocess.PIPE,
    stderr: object = subprocess.PIPE,
    close_stdout: bool = False,
    shell_tail: str = "",
) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, with the test models importable. ``close_stdout``: started with descriptor 1
    closed (``>&-``); ``shell_tail``: run by bash with this after the command (``| head -1``), the exit status being
    the CLI's own."""
    root = tiny_setup[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shiftaudit", *map(str, args)]
    if shell_tail:
        cmd = ["bash", "-c", f'"$@" {shell_tail}; exit "${{PIPESTATUS[0]}}"', "bash", *cmd]
    return subprocess.run(
        cmd,
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=env,
        timeout=150,
        preexec_fn=(lambda: os.close(1)) if close_stdout else None,
    )


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


@pytest.mark.slow  # a whole audit in a real process each (~10 s); the closed-stdout and --version tests below are fast
@pytest.mark.parametrize(
    "how, gate, code",
    [
        pytest.param("reader gone", GATE_PASSES, 0, id="reader gone-gate passes"),
        pytest.param("reader gone", GATE_FAILS, 1, id="reader gone-gate fails"),
        pytest.param("| head -1", GATE_PASSES, 0, id="head -1"),
        pytest.param("stdout closed", GATE_PASSES, 0, id="stdout closed"),
        pytest.param("stderr reader gone", GATE_FAILS, 1, id="stderr reader gone-gate fails"),
    ],
)
@pytest.mark.timeout(180)  # a whole audit in a real process: minutes on a loaded 2-core machine
def test_a_reader_that_leaves_costs_no_file_and_keeps_the_runs_exit_code(tiny_setup, tmp_path, how, gate, code):
    """`shiftaudit eval ... | head -1`: rich used to raise SystemExit(1) on the broken pipe, which the run took for
    the model's exit (exit 2, "the model's code stopped the run") and the report files, written after the table, were
    lost. Now the table is cut, the files are written whole and the exit code is the run's own (the gate's verdict)."""
    args = setup_eval_args(
        tiny_setup, "--json", tmp_path / "r.json", "--out", tmp_path / "report", "--junit", tmp_path / "j.xml", *gate
    )
    if how == "reader gone":
        with reader_gone() as pipe:
            proc = shiftaudit_process(tiny_setup, args, stdout=pipe)
    elif how == "| head -1":
        proc = shiftaudit_process(tiny_setup, args, shell_tail="| head -1")
    elif how == "stdout closed":
        proc = shiftaudit_process(tiny_setup, args, close_stdout=True)
    else:
        with reader_gone() as pipe:
            proc = shiftaudit_process(tiny_setup, args, stderr=pipe)
    assert proc.returncode == code, proc.stderr
    assert_no_blame(proc.stderr)
    assert_all_outputs_whole(tmp_path)


@pytest.mark.slow  # a whole audit in a real process each (~10 s); the 141 itself is held by the --version test below
@pytest.mark.parametrize("how", ["reader gone", "stdout closed"])
@pytest.mark.timeout(180)
def test_json_to_a_stdout_nobody_reads_ends_141_after_every_file_is_written(tiny_setup, tmp_path, how):
    """`--json -` with its reader gone, or stdout closed: the files were written first (stdout comes last in a run),
    and the run ends like a writer killed by SIGPIPE, 141, with no traceback (it was exit 3, "internal error")."""
    args = setup_eval_args(
        tiny_setup, "--json", "-", "--out", tmp_path / "report", "--junit", tmp_path / "j.xml", "--min-consistency", "0"
    )
    if how == "reader gone":
        with reader_gone() as pipe:
            proc = shiftaudit_process(tiny_setup, args, stdout=pipe)
    else:
        proc = shiftaudit_process(tiny_setup, args, close_stdout=True)
    assert proc.returncode == 141, proc.stderr
    assert_no_blame(proc.stderr)
    ET.parse(tmp_path / "j.xml")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["schema"].startswith("shiftaudit/")
    assert not leftovers(tmp_path)


def test_a_closed_stdout_is_held_by_dev_null_so_no_file_takes_its_number(tiny_setup):
    """Started with descriptor 1 closed (`>&-`), the next file opened would be number 1, and anything a library writes
    to "stdout" would land in it (a report being written, say). The CLI holds /dev/null there first."""
    code = (
        "import os, sys\nfrom shiftaudit.cli import main\nsys.argv = ['shiftaudit', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nos.write(2, str(os.open(os.devnull, os.O_RDONLY)).encode())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, preexec_fn=lambda: os.close(1)
    )
    assert proc.returncode == 0 and proc.stderr == "3", proc.stderr


def test_version_to_a_reader_that_left_is_141_and_silent(tiny_setup):
    with reader_gone() as pipe:
        proc = shiftaudit_process(tiny_setup, ["--version"], stdout=pipe)
    assert (proc.returncode, proc.stderr) == (141, "")


# ESC sequences, carriage return, newline, bell, C1 NEL and CSI, a bidi override, rich markup
NASTY = "\x1b[31m\r\n\x07\x85\x9b\u202e[bold]"


RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")  # all but "\n"


def assert_no_raw_control(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"raw {found.group()!r} at {found.start()}: {text[max(0, found.start() - 80) : found.end() + 40]!r}"


def test_control_characters_in_every_user_string_are_escaped_in_every_printed_line(tiny_setup, tmp_path):
    """Folder, class and file names, notes, table titles, "wrote" lines and gate lines: rich strips some controls
    (BEL, CR) and passes the rest (ESC, CSI, a bidi override) straight to the terminal; the HTML page and the JUnit
    file held them raw (the JUnit file did not parse)."""
    data = tmp_path / f"data{NASTY}"
    for i, name in enumerate(["c\x1b[32mat", "do\rg\n", f"b\x9bird{NASTY}"]):
        write_images(data / name, 1, seed=i)
    (data / "c\x1b[32mat" / "bro\x1bken\u202e.png").write_bytes(b"not an image")  # skipped, named in a note
    out, report, junit = tmp_path / f"out{NASTY}", tmp_path / f"r{NASTY}.json", tmp_path / f"j{NASTY}.xml"
    _, ckpt, _, _ = tiny_setup
    res = cli(
        "eval",
        ckpt,
        "--arch",
        f"{TINY_SETUP_MODULE}:tiny",
        "--data",
        data,
        "--size",
        "16",
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        report,
        "--out",
        out,
        "--junit",
        junit,
        "--min-consistency",
        "0",
    )
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


def test_control_characters_in_compared_report_names_are_escaped(tiny_setup, tmp_path):
    """Run names come from the report files' names: table headers, caption and notes show them escaped."""
    _, _, _, reports = tiny_setup
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
