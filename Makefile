# Two commands do all the set-up on a fresh machine with only Python 3.11:
#   make demo   # .venv, install, train on the embedded synthetic identities, evaluate, figures
#   make test   # lint, format and type checks, then the test suite (what CI runs)
# and for contributors:
#   make test-fast  # the quick tier (no training runs, deep models or page): under 2 minutes
#   make check      # ruff lint, ruff format --check, mypy
#   make bench      # every benchmark at its quick setting; rewrites docs/benchmarks.md's table
#   make app        # the demo page on http://127.0.0.1:7860 (trains the demo model first if needed)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What using a model needs (no torch: the page, the demo, export)...
BASE := $(VENV)/.installed-base
# ...and what testing and benchmarking add: the reference implementations (torch CPU) and tools.
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast test-slow check bench install install-base figures clean app chromium

# The venv is rebuilt when it is missing, and reinstalled when the package metadata changes.
$(BASE): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[app,analysis,export]'
	touch $(BASE)

$(STAMP): $(BASE)
	# torch is pinned in the `compare` extra: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -e '.[app,analysis,export,test,compare,lint]'
	# insightface (a `compare` reference) without its opencv-python, which would clash with our
	# opencv-python-headless; the compare extra brings what its import needs.
	$(PY) -m pip install -q --no-deps insightface==2.1
	# The MTCNN reference for the tests, without its torch/torchvision pins (they pull CUDA builds).
	$(PY) -m pip install -q --no-deps 'facenet-pytorch==2.6.0'
	touch $(STAMP)

install-base: $(BASE)
install: $(STAMP)

# Two pytest workers (one per core): most of a test's time is single-threaded XLA compilation.
# Whole files go to one worker, so a module's trained-run fixture is built once.
PYTEST := $(PY) -m pytest tests -n 2 --dist loadfile

# --durations: the slowest tests are named at the end of every run (the suite's time budget).
test: $(STAMP) chromium check
	$(PYTEST) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest tests -n 2 -m 'not slow and not heavy'

# The tests marked slow (deep backbones compiled on a CPU; tens of minutes on 2 cores).
test-slow: $(STAMP)
	$(PYTEST) -m slow

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Debian's chromium for the page's browser test (Playwright's own browser download is never
# used). Installed when missing and we are root; otherwise that one test is skipped and says why.
chromium:
	@if [ -x /usr/lib/chromium/chromium ] || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo 'installing Debian chromium for the browser test (apt-get, about 90 s, once)'; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo 'no chromium and not root: tests/test_app_browser.py will be skipped'; fi

app: $(BASE)
	$(PY) -m arcface_jax.app --demo-workdir $(WORKDIR)

# Train and evaluate, then draw the figures from the finished run (analysis is a client of the
# library: the demo command itself never imports it).
demo: $(BASE)
	$(PY) -m arcface_jax.demo --workdir $(WORKDIR)
	$(PY) -m analysis.logit_curves --out $(WORKDIR)/figures
	$(PY) -m analysis.angles --workdir $(WORKDIR) --out $(WORKDIR)/figures --max_samples 1000 --num_pairs 500

figures: $(BASE)
	$(PY) -m analysis.toy_figures --out figs/toy

clean:
	rm -rf $(VENV) runs figs
