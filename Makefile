# Two commands do everything on a fresh machine with Python 3.11:
#   make book   train the runs the chapters need, execute the chapters, build the site into _build/html
#   make test   run the whole test suite (this is what CI runs)
# make book PRESET=paper uses the seed's full protocol on CIFAR (a GPU box; see the README);
# make paper GPUS=0,1,2,3 does the same with one run per GPU at a time.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
RUN_ROOT ?= runs
DEVICE ?= auto
DATA_ROOT ?= data
STAMP  := $(VENV)/.installed

GPUS ?=
GPUS_PER_RUN ?= 1

.PHONY: book test runs execute site venv clean bench paper

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

# A GPU box: every run of every chapter at the paper preset, one run per GPU at a time (torchrun across
# GPUS_PER_RUN devices when > 1), then the chapters and the site; run it again to continue after a stop.
paper: $(STAMP)
	$(PY) -m sslnb.schedule --preset paper --gpus "$(GPUS)" --gpus-per-run $(GPUS_PER_RUN) --run-root $(RUN_ROOT) --data-root $(DATA_ROOT)

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf _build _stage
