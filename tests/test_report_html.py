"""The HTML report: self-contained, escaped, and opened in a real headless Chromium with every picture loaded.

The browser check reads the page as Chromium rendered it: a copy of report.html with a small probe script appended
(the report itself has no script) records each <img>'s load state and natural size into the DOM, which
``--dump-dom`` prints. A screenshot of the unmodified page must not be blank. Skipped only where no Chromium is
installed (CI installs Debian's ``chromium`` in .ci/run).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.report.html import render_html, write_html_report
from tests.helpers import assert_real_png, synthetic_result

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None
)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed (apt-get install chromium); the browser check needs one"
)
PICTURES = {"adversarial.png", "variation.png", "accuracy_map.png", "flips.png"}

PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    out.push({alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight});
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "report"
    res = CliRunner().invoke(app, ["demo", "--images", "32", "--max-shift", "4", "--device", "cpu", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={user_dir}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def img_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


@pytest.mark.slow
def test_demo_out_leaves_pictures_and_page(demo_report):
    names = {p.name for p in demo_report.iterdir()}
    assert PICTURES | {"report.json", "report.html"} <= names
    for name in PICTURES:
        assert_real_png(demo_report / name)
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"


@pytest.mark.slow
def test_page_is_self_contained_and_pictures_are_valid_pngs(demo_report):
    page = (demo_report / "report.html").read_text(encoding="utf-8")
    sources = img_sources(page)
    assert len(sources) == len(PICTURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            img.verify()
    assert not re.search(r"\b(src|href)\s*=\s*\"(https?:)?//", page), "the page must not fetch anything"
    assert "<script" not in page and "<link" not in page
    for section in (
        "Summary",
        "Pictures",
        "Settings",
        "Consistency (exact, all shifts)",
        "Shift set",
        "Seed",
        "Versions",
        "torch",
    ):
        assert section in page


def test_user_text_is_escaped():
    r = synthetic_result(gate=True)
    r.model["arch"] = '<script>alert("x")</script>'
    r.data["description"] = 'data & "quotes" <b>'
    r.notes.append("<img src=x onerror=alert(1)>")
    page = render_html(r)
    assert "<script" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "data &amp; &quot;quotes&quot; &lt;b&gt;" in page
    assert "Gate FAILED: 1 of 3 checks" in page and "--min-accuracy 0.95" in page


@needs_browser
@pytest.mark.slow
def test_every_image_loads_in_headless_chromium(demo_report, tmp_path):
    page = (demo_report / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    res = chromium("--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri(), user_dir=tmp_path / "profile")
    match = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert match, f"chromium gave no DOM (exit {res.returncode}): {res.stderr[-2000:]}"
    images = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert {f"{i['alt']}.png" for i in images} == PICTURES
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
        with Image.open(demo_report / f"{img['alt']}.png") as png:
            assert (img["width"], img["height"]) == png.size  # decoded to the very picture on disk


@needs_browser
@pytest.mark.slow
def test_screenshot_of_the_page_is_not_blank(demo_report, tmp_path):
    shot = tmp_path / "shot.png"
    res = chromium(
        "--virtual-time-budget=5000",
        "--window-size=1200,2000",
        f"--screenshot={shot}",
        (demo_report / "report.html").resolve().as_uri(),
        user_dir=tmp_path / "profile",
    )
    assert shot.is_file(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        rgb = np.asarray(img.convert("RGB"), dtype=float)
    assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200


def test_write_html_report_is_atomic_and_takes_captions(tmp_path):
    r = synthetic_result()
    from shiftaudit.report.figures import plot_adversarial_curve

    png = plot_adversarial_curve(r, tmp_path / "a.png")
    assert png is not None
    path = write_html_report(r, tmp_path / "page.html", [("My <caption>", png)])
    page = path.read_text(encoding="utf-8")
    assert "My &lt;caption&gt;" in page and len(img_sources(page)) == 1
    assert not list(tmp_path.glob(".*"))


# -- issue 24: control characters are shown, escaped, never written raw -------------------------------------------
NASTY = "\x1b[31m\r\n\x07\x85\x9b\u202e[bold]<script>"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")  # all but "\n"


def test_control_characters_in_user_strings_are_shown_escaped_in_the_page():
    """A folder, file or class name with an escape sequence, a newline or a bidi override: the page holds it escaped
    (``\\x1b``, ``\\u202e``, as on the terminal) and HTML-escaped, never raw (a raw U+202E reverses the rest of its line)."""
    from html.parser import HTMLParser

    r = synthetic_result()
    r.model["source"] = f"/models/{NASTY}.pt"
    r.data["description"] = f"ImageFolder d{NASTY}: 40 images"
    r.notes.append(f"1 unreadable image skipped: bro{NASTY}ken.png")
    page = render_html(r)
    found = RAW_CONTROL.search(page)
    assert found is None, page[max(0, found.start() - 60) : found.end() + 20]
    shown = "\\x1b[31m\\r\\n\\x07\\x85\\x9b\\u202e[bold]&lt;script&gt;"
    assert f"/models/{shown}.pt" in page and f"ImageFolder d{shown}" in page and f"bro{shown}ken.png" in page
    assert "<script>" not in page
    HTMLParser().feed(page)
