"""The built site in headless Chromium with no internet: every page in _toc.yml loads without JavaScript
errors, error outputs or failed requests; each explorer's controls are there, and changing one changes
the figure on screen. Screenshots go to _build/screenshots/ (or $SSLNB_SCREENSHOTS) for a person to look at.

`SSLNB_SITE=_build/html pytest tests/test_site.py` checks a site already built (by `make book`).
Chromium: `make test` installs Debian's package when it is missing (`make chromium`); elsewhere point
$CHROMIUM at a Chrome or Chromium, or set SSLNB_SKIP_BROWSER=1 to skip these tests.
"""

import os
import re
from pathlib import Path

import pytest

from browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["book/intro"] + re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())
# The chapters with explorers (the compute-map page draws a recorded map and has none).
NOTEBOOKS = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists() and "explore(" in (ROOT / f"{p}.ipynb").read_text()]
SHOTS = Path(os.environ.get("SSLNB_SCREENSHOTS", ROOT / "_build" / "screenshots"))

# Widgets the explorers render (ipywidgets 8 class names in the HTML manager's DOM).
VISIBLE_IMAGES = """Array.from(document.querySelectorAll('.widget-image'))
    .filter(i => i.offsetParent !== null && i.getBoundingClientRect().width > 0).map(i => i.src).join('|')"""
SELECTS = "document.querySelectorAll('.widget-dropdown select')"
TOGGLES = "document.querySelectorAll('.widget-toggle-buttons button')"


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("SSLNB_SKIP_BROWSER") == "1":
        pytest.skip("SSLNB_SKIP_BROWSER=1")
    exe = find_chromium()
    if exe is None:
        pytest.fail("no chromium for the site test: run `make chromium` (Debian), set CHROMIUM=/path/to/chrome, "
                    "or SSLNB_SKIP_BROWSER=1", pytrace=False)
    b = Browser(exe)
    yield b
    b.close()


@pytest.fixture(scope="module")
def html(request):
    """The site the smoke build makes (tests/conftest.py), or an already built one named by $SSLNB_SITE
    (`SSLNB_SITE=_build/html pytest tests/test_site.py` checks the site `make book` built)."""
    if os.environ.get("SSLNB_SITE"):
        return Path(os.environ["SSLNB_SITE"]).resolve()
    return request.getfixturevalue("executed")[0] / "_build" / "html"


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_offline_without_errors(html, browser, page):
    browser.goto((html / f"{page}.html").as_uri())
    if page in NOTEBOOKS:  # the explorers render from the saved widget state
        assert browser.wait_for(f"{SELECTS}.length >= 4", timeout=60), f"{page}: the explorers did not render"
    browser.pump(1.0)
    assert not browser.errors, f"{page}: " + "; ".join(browser.errors[:5])
    assert browser.js("document.querySelectorAll('.output.error, .output.traceback').length") == 0
    assert "Traceback (most recent call last)" not in browser.js("document.body.innerText")
    if browser.js("document.querySelector('.math') !== null"):  # the vendored MathJax typeset the page
        assert browser.wait_for("document.querySelectorAll('mjx-container').length > 0", timeout=20), page
    browser.screenshot(SHOTS / f"{Path(page).name}.png")


@pytest.mark.parametrize("page", NOTEBOOKS)
def test_explorer_controls_switch_the_figure(html, browser, page):
    browser.goto((html / f"{page}.html").as_uri())
    assert browser.wait_for(f"{SELECTS}.length >= 4", timeout=60), f"{page}: the explorers did not render"
    labels = browser.js(f"Array.from({TOGGLES}).map(b => b.textContent)")
    assert {"linear", "log", "epoch", "step", "FC", "last conv"} <= set(labels), labels
    assert browser.js("document.querySelectorAll('.widget-hslider, .widget-slider').length") >= 1  # smoothing
    # curve metric, left run, right run, class
    assert not browser.dropdowns_redraw(SELECTS, VISIBLE_IMAGES, timeout=5), f"{page}: a dropdown changed nothing"
    for label in ("log", "step", "FC"):
        before = browser.js(VISIBLE_IMAGES)
        browser.js(f"Array.from({TOGGLES}).find(b => b.textContent === {label!r}).click()")
        assert browser.wait_for(f"{VISIBLE_IMAGES} !== {before!r}", timeout=5), f"{page}: {label!r} changed nothing"
    assert not browser.errors, f"{page}: " + "; ".join(browser.errors[:5])
    browser.js("document.querySelector('.widget-dropdown').scrollIntoView()")
    browser.pump(0.5)
    browser.screenshot(SHOTS / f"{Path(page).name}-explorers.png")


@pytest.mark.parametrize("page", NOTEBOOKS[:2])
def test_rapid_switching_logs_no_errors_and_keeps_working(html, browser, page):
    """A reader clicking faster than the widget manager settles: many switches in one browser task. With
    ipywidgets' Stack this logged dozens of TypeErrors (views disposed while a message to them was
    queued); the Tab-based switches must log none, hide their tab bars, and still follow the controls."""
    browser.goto((html / f"{page}.html").as_uri())
    assert browser.wait_for(f"{SELECTS}.length >= 4", timeout=60), f"{page}: the explorers did not render"
    browser.js(f"""(() => {{
        const toggles = Array.from({TOGGLES});
        for (const label of ['log', 'linear', 'log', 'step', 'epoch', 'FC', 'last conv', 'FC'])
            toggles.find(b => b.textContent === label).click();
        for (const s of {SELECTS}) for (let k = 0; k < 3; k++) {{
            s.selectedIndex = (s.selectedIndex + 1) % s.options.length;
            s.dispatchEvent(new Event('change', {{bubbles: true}}));
        }} }})()""")
    browser.pump(2.0)
    assert not browser.errors, f"{page}: " + "; ".join(browser.errors[:5])
    assert browser.js("Array.from(document.querySelectorAll('.lm-TabBar')).every(b => b.offsetParent === null)")
    settled = browser.js(VISIBLE_IMAGES)
    browser.js(f"Array.from({TOGGLES}).find(b => b.textContent === 'linear').click()")
    assert browser.wait_for(f"{VISIBLE_IMAGES} !== {settled!r}", timeout=5), f"{page}: 'linear' changed nothing"
    browser.js(f"Array.from({TOGGLES}).find(b => b.textContent === 'log').click()")
    assert browser.wait_for(f"{VISIBLE_IMAGES} === {settled!r}", timeout=5), f"{page}: back to 'log', another view"
