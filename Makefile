# Two commands do all the set-up on a fresh machine with only Python 3.11:
#   make demo   # .venv, install, train on the embedded synthetic identities, evaluate, figures
#   make test   # the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test install figures clean

# The venv is rebuilt when it is missing, and reinstalled when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the `compare` extra: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -e '.[test,compare,analysis]'
	# The MTCNN reference for the tests, without its torch/torchvision pins (they pull CUDA builds).
	$(PY) -m pip install -q --no-deps 'facenet-pytorch==2.6.0'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) -m arcface_jax.demo --workdir $(WORKDIR)

figures: $(STAMP)
	$(PY) -m analysis.toy_figures --out figs/toy

clean:
	rm -rf $(VENV) runs figs
