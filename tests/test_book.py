"""Every chapter executes under papermill with the smoke preset, and the book builds with -W."""

import json
import re
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
        # a MyST directive shows as raw text in JupyterLab: the chapters show code with plots.show_source
        raw = [c.source[:60] for c in nb.cells if c.cell_type == "markdown" and "```{" in c.source]
        assert not raw, f"{nb_path.name}: a MyST directive reads differently in JupyterLab: {raw}"
        # nbformat 4.5 cells need unique ids (nbformat only warns today; it will refuse them later)
        ids = [c.get("id") for c in json.loads(nb_path.read_text())["cells"]]  # as committed, not as read
        assert None not in ids and len(set(ids)) == len(ids), f"{nb_path.name}: a cell id is missing or repeated"


def test_chapters_execute_with_smoke_preset(executed):
    tmp, outs, _ = executed
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
    tmp, _, _ = executed
    html = tmp / "_build" / "html"
    assert (html / "index.html").exists()
    intro = (html / "book" / "intro.html").read_text()
    assert re.search(r"executed at the .{0,120}smoke.{0,40} preset", intro), "the intro names the preset it was executed at"
    for nb_path in CHAPTERS:
        page = (html / "book" / f"{nb_path.stem}.html").read_text()
        assert "<img" in page and "Traceback (most recent call last)" not in page


def test_batch_command_trained_on_both_fake_devices_and_summarised(executed):
    import json

    from sslnb.experiments import all_runs
    from sslnb.runs import find_runs

    tmp, _, stdout = executed
    runs = find_runs(tmp / "runs")
    assert len(runs) == len(all_runs("smoke"))
    assert {r.provenance["visible_devices"] for r in runs} == {"0", "1"}
    events = [json.loads(line) for line in (tmp / "runs" / "schedule.jsonl").read_text().splitlines()]
    busy = set()
    for e in events:  # a device is never given to two runs at once
        if e["event"] == "start":
            assert not busy & set(e["devices"])
            busy |= set(e["devices"])
        else:
            busy -= set(e["devices"])
    table = stdout[stdout.index("| run | status"):]
    assert table.count("| done |") == len(runs)


def test_parameter_typo_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sslnb.book", "execute", "--preset", "smoke", "--run-root",
                        str(tmp_path), "-p", "presett", "cpu"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no parameter 'presett'" in r.stderr


def _fake_papermill(monkeypatch, failures):
    """papermill.execute_notebook that raises ``failures`` in turn, then writes the notebook unchanged."""
    import papermill

    calls = []

    def execute(src, out, **kwargs):
        calls.append(src)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def test_a_kernel_that_dies_at_start_is_started_again_and_nothing_else_is(tmp_path, monkeypatch):
    monkeypatch.delenv("SSLNB_STATIC_WIDGETS", raising=False)  # _execute_one sets it: restored after the test
    nb, out = CHAPTERS[0], tmp_path / "out.ipynb"
    died = RuntimeError("Kernel died before replying to kernel_info")
    calls = _fake_papermill(monkeypatch, [died, died])
    assert book._execute_one(nb, out, {}, 60) is None and len(calls) == 3 and out.exists()
    calls = _fake_papermill(monkeypatch, [died] * book.KERNEL_START_TRIES)
    with pytest.raises(RuntimeError, match="kernel_info"):
        book._execute_one(nb, out, {}, 60)
    assert len(calls) == book.KERNEL_START_TRIES
    calls = _fake_papermill(monkeypatch, [RuntimeError("something else")])
    with pytest.raises(RuntimeError, match="something else"):
        book._execute_one(nb, out, {}, 60)
    assert len(calls) == 1


def test_every_command_the_deploy_workflow_runs_exists():
    """The workflow runs only on GitHub: a renamed make target or CLI flag would break the published site
    without failing any test here. Each `make` target and variable it uses must be in the Makefile, and each
    `python -m sslnb.book` command must parse."""
    import yaml

    root = Path(book.ROOT)
    workflow = yaml.safe_load((root / ".github" / "workflows" / "deploy-book.yml").read_text())
    makefile = (root / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, re.M))
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert any("PRESET=laptop" in r for r in runs), "the workflow publishes the laptop book"
    checked = 0
    for text in runs:
        for command in re.split(r"&&|\|\||[;|\n()]", text.replace("$(", "(")):
            words = command.split()
            if not words:
                continue
            if words[0] == "make":
                for word in words[1:]:
                    if "=" in word:
                        assert f"$({word.split('=')[0]})" in makefile, f"make variable {word} is not used"
                    else:
                        assert word in targets, f"make target {word!r} is not in the Makefile"
                checked += 1
            elif words[:3] == [".venv/bin/python", "-m", "sslnb.book"]:
                book.parser().parse_args(words[3:])  # exits (fails the test) on an unknown step or flag
                checked += 1
    assert checked >= 3
