"""Every chapter executes under papermill with the smoke preset, and the book builds with -W."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sslnb import book

CHAPTERS = book.chapters()


def test_every_chapter_is_listed_in_the_toc_and_clean():
    toc = (book.ROOT / "_toc.yml").read_text()
    for nb_path in CHAPTERS:
        assert f"book/{nb_path.stem}" in toc
        nb = nbformat.read(nb_path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs are not committed"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    params = {"preset": "smoke", "run_root": str(tmp / "runs"), "devices": "cpu"}
    outs = book.execute(params, stage_dir=tmp / "stage", timeout=600)
    return tmp, outs


def test_chapters_execute_with_smoke_preset(executed):
    tmp, outs = executed
    assert [o.name for o in outs] == [c.name for c in CHAPTERS]
    for out in outs:
        nb = nbformat.read(out, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "remove-cell" in injected[0].metadata["tags"]
        text = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells for o in c.get("outputs", []))
        assert "smoke" in text  # every page says which preset made its numbers


def test_book_builds_strictly_from_executed_chapters(executed):
    tmp, _ = executed
    index = book.build(stage_dir=tmp / "stage", out_dir=tmp, quiet=True)
    html = tmp / "_build" / "html"
    assert index.exists()
    for nb_path in CHAPTERS:
        page = (html / "book" / f"{nb_path.stem}.html").read_text()
        assert "<img" in page and "Traceback" not in page


def test_parameter_typo_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sslnb.book", "execute", "--preset", "smoke", "--run-root",
                        str(tmp_path), "-p", "presett", "cpu"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no parameter 'presett'" in r.stderr
