"""The live way to read the book: JupyterLab (``make lab``) in headless Chromium. A chapter at the smoke
preset is opened, every cell is run by JupyterLab's own "restart and run all" button, no output is an
error, and changing an explorer's controls redraws its figure through the kernel. The server and its
kernel are gone afterwards. Screenshots of the explorer before and after go to _build/screenshots/
(or $SSLNB_SCREENSHOTS). Skipped where the site test is (SSLNB_SKIP_BROWSER=1).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("SSLNB_SCREENSHOTS", ROOT / "_build" / "screenshots"))
CHAPTER = "03_byol.ipynb"
IMAGES = """Array.from(document.querySelectorAll('.jp-Notebook .widget-image'))
    .filter(i => i.getBoundingClientRect().width > 0).map(i => i.src.length + ':' + i.src.slice(-64)).join('|')"""
SELECTS = "document.querySelectorAll('.jp-Notebook .widget-dropdown select')"
PROMPTS = "Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(p => p.textContent.trim())"


def click(browser, selector: str) -> None:
    """A real left click (press and release) at the centre of the element: JupyterLab's toolbar buttons
    act on mouse-down, which a DOM ``click()`` does not send."""
    rect = browser.js(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=rect[0], y=rect[1], button="left", clickCount=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(executed, tmp_path_factory):
    """JupyterLab on a free port with a token, serving a copy of book/ (JupyterLab saves what it runs;
    the sources stay clean), its kernels reading SSLNB_PRESET=smoke and the runs the book fixture made."""
    if os.environ.get("SSLNB_SKIP_BROWSER") == "1":
        pytest.skip("SSLNB_SKIP_BROWSER=1")
    book = tmp_path_factory.mktemp("lab") / "book"
    shutil.copytree(ROOT / "book", book)
    port, token = free_port(), os.urandom(12).hex()
    labconfig = book.parent / "config" / "labconfig"  # no "get Jupyter news?" question over the explorer
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    env = {**os.environ, "SSLNB_PRESET": "smoke", "SSLNB_RUN_ROOT": str(executed[0] / "runs"),
           "JUPYTER_CONFIG_DIR": str(book.parent / "config"), "JUPYTER_RUNTIME_DIR": str(book.parent / "runtime")}
    env.pop("MPLBACKEND", None)
    cmd = [str(Path(sys.executable).parent / "jupyter-lab"), f"--notebook-dir={book}", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.getuid() == 0 else [])
    log = open(book.parent / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("JupyterLab did not start: " + (book.parent / "lab.log").read_text()[-2000:])
            time.sleep(0.5)
    yield base, token, proc
    proc.send_signal(signal.SIGTERM)  # JupyterLab shuts its kernels down
    try:
        proc.wait(timeout=20)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.fail("no chromium for the JupyterLab test: run `make chromium` (Debian), set CHROMIUM=..., or "
                    "SSLNB_SKIP_BROWSER=1", pytrace=False)
    b = Browser(exe, width=1400, height=1800, loopback=True)
    yield b
    b.close()


def test_a_chapter_runs_in_jupyterlab_and_its_explorer_is_live(lab, browser):
    base, token, proc = lab
    browser.goto(f"{base}/lab/tree/{CHAPTER}?token={token}", timeout=120)
    assert browser.wait_for("document.querySelector('.jp-Notebook .jp-CodeCell') !== null", timeout=90), \
        "the notebook did not open"
    idle = "document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]') !== null"
    assert browser.wait_for(idle, timeout=90), "the kernel did not start"
    browser.pump(3.0)  # the notebook's session settles (a click before that is lost)
    click(browser, '[data-command="notebook:restart-run-all"]')
    assert browser.wait_for("document.querySelector('.jp-Dialog .jp-mod-accept') !== null", 20), "no restart dialog"
    browser.pump(0.5)
    click(browser, ".jp-Dialog .jp-mod-accept")
    assert browser.wait_for("document.querySelector('.jp-Dialog') === null", 20), "the dialog did not close"
    done = (f"(() => {{ const p = {PROMPTS}; return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t)); }})()")
    assert browser.wait_for(done, timeout=240), f"not every cell ran: {browser.js(PROMPTS)}"
    text = browser.js("document.querySelector('.jp-Notebook').innerText")
    # the code the chapter teaches shows as code (show_source), not as a raw MyST directive
    assert "{literalinclude}" not in text and ":pyobject:" not in text and "```{" not in text
    assert "Traceback" not in text and "Error" not in browser.js(
        "Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]'))"
        ".map(e => e.innerText).join(' ')")
    assert browser.wait_for(f"{SELECTS}.length >= 4", timeout=60), "the explorers did not render"
    browser.js(f"{SELECTS}[0].scrollIntoView()")
    browser.pump(1.0)
    browser.screenshot(SHOTS / "lab-explorer-before.png")
    # curve metric, left run, right run, class: each redraws through the kernel
    assert not browser.dropdowns_redraw(SELECTS, IMAGES, timeout=30), "a dropdown did not redraw the figure"
    browser.pump(1.0)
    browser.screenshot(SHOTS / "lab-explorer-after.png")
    assert not [e for e in browser.errors if "favicon" not in e], browser.errors[:5]


def test_the_server_and_its_kernel_are_gone_after_shutdown(lab):
    base, token, proc = lab
    kernels = urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5).read()
    assert kernels not in (b"[]", b"")  # the chapter's kernel is running now
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(1)
    left = subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left in JupyterLab's session: {left}"
