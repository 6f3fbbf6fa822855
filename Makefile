# Two commands do all the set-up on a fresh machine with only Python 3.11:
#   make demo   # .venv, install, train on the embedded synthetic identities, evaluate, figures
#   make test   # the whole test suite (what CI runs)
#   make app    # the demo page on http://127.0.0.1:7860 (trains the demo model first if needed)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-slow install figures clean app chromium

# The venv is rebuilt when it is missing, and reinstalled when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the `compare` extra: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -e '.[app,test,compare,analysis,export]'
	# insightface (a `compare` reference) without its opencv-python, which would clash with our
	# opencv-python-headless; the compare extra brings what its import needs.
	$(PY) -m pip install -q --no-deps insightface==2.1
	# The MTCNN reference for the tests, without its torch/torchvision pins (they pull CUDA builds).
	$(PY) -m pip install -q --no-deps 'facenet-pytorch==2.6.0'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest tests

# The tests marked slow (deep backbones compiled on a CPU; tens of minutes on 2 cores).
test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow

# Debian's chromium for the page's browser test (Playwright's own browser download is never
# used). Installed when missing and we are root; otherwise that one test is skipped and says why.
chromium:
	@if [ -x /usr/lib/chromium/chromium ] || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo 'installing Debian chromium for the browser test (apt-get, about 90 s, once)'; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo 'no chromium and not root: tests/test_app_browser.py will be skipped'; fi

app: $(STAMP)
	$(PY) -m arcface_jax.app --demo-workdir $(WORKDIR)

# Train and evaluate, then draw the figures from the finished run (analysis is a client of the
# library: the demo command itself never imports it).
demo: $(STAMP)
	$(PY) -m arcface_jax.demo --workdir $(WORKDIR)
	$(PY) -m analysis.logit_curves --out $(WORKDIR)/figures
	$(PY) -m analysis.angles --workdir $(WORKDIR) --out $(WORKDIR)/figures --max_samples 1000 --num_pairs 500

figures: $(STAMP)
	$(PY) -m analysis.toy_figures --out figs/toy

clean:
	rm -rf $(VENV) runs figs
