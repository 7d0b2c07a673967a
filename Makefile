# Two commands do everything on a fresh machine with Python 3.11:
#   make book   train the runs the chapters need, execute the chapters, build the site into _build/html
#   make test   run the whole test suite (this is what CI runs)
# make book PRESET=paper uses the seed's full protocol on CIFAR (a GPU box; see the README);
# make paper GPUS=0,1,2,3 does the same with one run per GPU at a time.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
GRID ?= 1
RUN_ROOT ?= runs
DEVICE ?= auto
DATA_ROOT ?= data
STAMP  := $(VENV)/.installed

GPUS ?=
GPUS_PER_RUN ?= 1

.PHONY: book test runs execute site venv clean bench paper vendor chromium publish fashion-mnist map lab fetch-runs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	MPLBACKEND=agg $(PY) -c "import matplotlib.pyplot"   # build the font cache once, not inside a chapter
	touch $(STAMP)

venv: $(STAMP)

runs: $(STAMP) $(if $(filter laptop,$(PRESET)),fashion-mnist)
	SSLNB_GRID=$(GRID) $(PY) -m sslnb.book train --preset $(PRESET) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT) --device $(DEVICE)

execute: runs
	$(PY) -m sslnb.book execute --preset $(PRESET) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT) --device $(DEVICE)

# The site from the chapters already executed into _stage/ (by make book, make execute or make paper),
# without training or executing anything.
site: $(STAMP)
	$(PY) -m sslnb.book build

# Push the built site (_build/html) to the gh-pages branch: how a maintainer publishes the paper-preset
# book from a GPU box (README, "Publishing the book").
publish:
	test -f _build/html/index.html || { echo "no built site: run make book, make paper or make site first"; exit 1; }
	$(PY) -m pip install --quiet ghp-import==2.1.0
	$(VENV)/bin/ghp-import --no-jekyll --push --force --message "book: $$(git rev-parse --short HEAD)" _build/html

book: execute
	$(PY) -m sslnb.book build

# The runs a preset's chapters read, from a published bundle (every site build puts runs-PRESET.tar.gz and its
# .sha256 beside the site): downloaded, verified whole and file by file, and unpacked into RUN_ROOT; a run
# directory already there is never overwritten. URL defaults to GitHub Pages of this clone's origin.
URL ?=
fetch-runs: $(STAMP)
	$(PY) -m sslnb.bundle fetch --preset $(PRESET) --run-root $(RUN_ROOT) $(if $(URL),--url $(URL))

# Read and run the chapters in JupyterLab (pinned in requirements.txt, inside .venv; nothing is installed
# or registered outside it). It serves book/ on 127.0.0.1 and prints the URL with its token; no news or
# update checks (and no question about them), so it works offline. The chapters' kernel is .venv's python3.
LAB_PORT ?= 8888
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: $(STAMP)
	mkdir -p $(LAB_SETTINGS) && echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(LAB_SETTINGS)/overrides.json
	$(VENV)/bin/jupyter-lab --notebook-dir=book --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	  --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
	  --LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP) chromium
	$(PY) -m pytest -q --durations=12

# The site test (tests/test_site.py) drives a headless Chromium; install Debian's when none is there.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$CHROMIUM" ] || \
	  [ "$$SSLNB_SKIP_BROWSER" = 1 ] || { command -v apt-get >/dev/null && \
	  echo "installing Debian's chromium for the site test" && \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "no chromium: install one (or set CHROMIUM=/path/to/chrome, or SSLNB_SKIP_BROWSER=1)"; exit 1; }

# Fashion-MNIST for the BYOL compute map (bench/byol_map.py): Debian's package installs the four idx files
# offline into /usr/share/datasets/fashion-mnist; elsewhere torchvision downloads them into DATA_ROOT.
fashion-mnist:
	@[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -d $(DATA_ROOT)/fashion-mnist ] || \
	  [ -d $(DATA_ROOT)/FashionMNIST/raw ] || { command -v apt-get >/dev/null && \
	  echo "installing Debian's dataset-fashion-mnist" && $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "no apt-get: Fashion-MNIST will be downloaded by torchvision into $(DATA_ROOT) (or put its idx files in $(DATA_ROOT)/fashion-mnist)"

# The BYOL compute map (issue 18): BYOL and SimCLR against training compute; results in bench/byol_map.json
# and bench/RESULTS.md, as each point lands. Run it again to continue; finished runs are kept.
map: $(STAMP) fashion-mnist
	$(PY) bench/byol_map.py --run-root $(RUN_ROOT)/map --data-root $(DATA_ROOT)

# A GPU box: every run of every chapter at the paper preset, one run per GPU at a time (torchrun across
# GPUS_PER_RUN devices when > 1), then the chapters and the site; run it again to continue after a stop.
paper: $(STAMP)
	$(PY) -m sslnb.schedule --preset paper --gpus "$(GPUS)" --gpus-per-run $(GPUS_PER_RUN) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT)

bench: $(STAMP)
	$(PY) -m bench

# Refresh the vendored widget manager and MathJax in _vendor/ from npm (maintainers; needs npm).
vendor:
	_vendor/fetch.sh

clean:
	rm -rf _build _stage
