# enn_nb - the README's commands: `make demo`, `make test` and `make lab`.
# The environment lives in .venv (or $ENN_NB_VENV); it is created when missing and reinstalled only
# when pyproject.toml or constraints.txt change (a content hash is kept in the venv).

PYTHON ?= python3
VENV := $(if $(ENN_NB_VENV),$(ENN_NB_VENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
OUT ?= $(CURDIR)/out
PYTEST_ARGS ?=

# Caches the project creates stay inside the project's ignored .cache/ folder.
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
# torch writes precompiled C++ headers to the system temp folder whatever the cache dir says.
export TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS := 0
export ENN_NB_CACHE_DIR := $(CURDIR)/.cache/enn_nb
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: env demo test lab benchmarks browser clean

env:
	@bash .ci/env.sh "$(PYTHON)" "$(VENV)"

# Debian's Chromium for the wizard's real-browser test (Playwright must never download a browser).
browser:
	@bash .ci/browser.sh

demo: env
	$(PY) -m enn_nb.surfaces.demo --out "$(OUT)"

# JupyterLab on the example notebooks (the venv's kernel first on the kernel path). LAB_ARGS adds options,
# e.g. `make lab LAB_ARGS="--no-browser --ip=0.0.0.0"` on a remote host. As root (a container), Jupyter
# refuses to start without --allow-root: it is passed then.
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: env
	JUPYTER_PATH="$(VENV)/share/jupyter" $(PY) -m jupyterlab --notebook-dir="$(CURDIR)/notebooks" $(LAB_ROOT) $(LAB_ARGS)

test: env browser
	$(PY) -m pytest $(PYTEST_ARGS)

benchmarks: env
	$(PY) benchmarks/checkpoint_io.py
	$(PY) benchmarks/export.py
	$(PY) benchmarks/load_ext.py
	$(PY) benchmarks/attack_campaign.py
	$(PY) benchmarks/quantize.py

clean:
	rm -rf "$(OUT)" .cache .pytest_cache
