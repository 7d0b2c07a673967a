#!/usr/bin/env bash
# Refresh the vendored JavaScript from the npm registry (`make vendor`). The site loads these from
# _static/ instead of a CDN, so the built book works with no internet:
#   require.js + embed-amd.js (+ icon fonts)   the ipywidgets HTML manager that renders the explorers' saved widget state
#   mathjax/                    MathJax 3 (tex-chtml, its woff-v2 fonts and the TeX extensions it autoloads)
set -euo pipefail
cd "$(dirname "$0")"
# static/ is served as _static/; extra/ is copied into the site root. The widget manager loads its icon
# fonts from the folder of the AMD module that asks for them, resolved against the page: either
# @jupyter-widgets/ or @jupyter-widgets/html-manager/dist/ next to the page (the chapters are in book/).
# Git stores the two identical copies once.
HTML_MANAGER=1.0.6   # the version myst-nb's nb_ipywidgets_js default loads; it bundles ipywidgets 8 controls
REQUIREJS=2.3.4
MATHJAX=3.2.2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@jupyter-widgets/html-manager@$HTML_MANAGER" "requirejs@$REQUIREJS" "mathjax@$MATHJAX" >/dev/null)
for f in "$tmp"/*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
hm="$tmp/jupyter-widgets-html-manager-$HTML_MANAGER/package"
mj="$tmp/mathjax-$MATHJAX/package"
fonts=extra/book/@jupyter-widgets/html-manager/dist
rm -rf static/mathjax static/licenses extra
mkdir -p static/mathjax/output/chtml/fonts static/mathjax/input/tex "$fonts" static/licenses
cp "$hm/dist/embed-amd.js" static/embed-amd.js
cp "$hm"/dist/*.woff2 "$fonts"/
cp "$hm"/dist/*.woff2 extra/book/@jupyter-widgets/
cp "$tmp/requirejs-$REQUIREJS/package/require.js" static/require.js
cp "$mj/es5/tex-chtml.js" static/mathjax/
cp -r "$mj/es5/output/chtml/fonts/woff-v2" static/mathjax/output/chtml/fonts/
cp -r "$mj/es5/input/tex/extensions" static/mathjax/input/tex/
cp "$hm/LICENSE" static/licenses/html-manager.LICENSE
cp "$mj/LICENSE" static/licenses/mathjax.LICENSE
du -sh .
