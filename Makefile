# Two commands do everything on a fresh machine with Python 3.11:
#   make book   train the runs the chapters need, execute the chapters, build the site into _build/html
#   make test   run the whole test suite (this is what CI runs)
# make book PRESET=paper uses the seed's full protocol on CIFAR (a GPU box; see the README).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
RUN_ROOT ?= runs
DEVICE ?= auto
DATA_ROOT ?= data
STAMP  := $(VENV)/.installed

.PHONY: book test runs execute site venv clean bench

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	MPLBACKEND=agg $(PY) -c "import matplotlib.pyplot"   # build the font cache once, not inside a chapter
	touch $(STAMP)

venv: $(STAMP)

runs: $(STAMP)
	$(PY) -m sslnb.book train --preset $(PRESET) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT) --device $(DEVICE)

execute: runs
	$(PY) -m sslnb.book execute --preset $(PRESET) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT) --device $(DEVICE)

site: $(STAMP)
	$(PY) -m sslnb.book build

book: execute
	$(PY) -m sslnb.book build

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf _build _stage
