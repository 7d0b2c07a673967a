"""A small Sphinx extension for the book's site (listed in ``_config.yml``, ``extra_extensions``).

jupyter-book 1.x runs sphinx-thebe's set-up twice per build, so each page declared ``const THEBE_JS_URL``
twice and the browser threw a SyntaxError on every page. The book does not use thebe; this drops
repeated script tags (same file, same inline body; one copy has filename None, the other "") from each page so the pages load without errors.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
