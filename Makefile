# One entry point for installs, the demo and the tests. Everything lands in .venv; system tools via apt.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_DIR ?= demo
STAMP := $(VENV)/.mtcc-installed

.PHONY: install sysdeps test-sysdeps demo test test-fast clean models

# ffmpeg/ffprobe decode and encode, espeak-ng voices the sample data, sox checks audio
sysdeps:
	@missing=""; for t in ffmpeg ffprobe espeak-ng sox; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system tools:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg espeak-ng sox >/dev/null; \
	fi

# tests only: tests/test_report.py renders the dataset report in a real headless browser (the report itself
# needs none); tests/test_screen_text.py burns text in with ffmpeg's drawtext, which needs a font
test-sysdeps: sysdeps
	@{ command -v chromium >/dev/null && fc-list | grep -q .; } || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
	  fonts-dejavu-core fontconfig >/dev/null; }

# Reinstalls only when pyproject.toml or this file changed since the last install (the stamp records that).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test]'
	@# the model libraries that pin what would break the rest (opencv-python, another torch, librosa) go in
	@# without their dependencies, their real needs being listed in pyproject.toml: the same command on every
	@# node (pipeline/node.py has the list; the Dockerfile runs it too)
	$(VENV)/bin/mtcc setup-node
	@touch $(STAMP)

install: sysdeps $(STAMP)

# paper-grade weights for configs/mtcc.yaml (needs internet, ~19 GB); copy models/ to the cluster and
# run `mtcc models check models` there before a long run
models: install
	$(VENV)/bin/mtcc models fetch models
	$(VENV)/bin/mtcc models check models

# the offline profile makes its random-weight models on first use (~/.cache/mtcc/tiny, models: "@tiny")
demo: install
	RAY_AUTH_MODE=disabled $(VENV)/bin/mtcc sample-data $(DEMO_DIR)/videos
	RAY_AUTH_MODE=disabled $(VENV)/bin/mtcc run configs/offline.yaml --input $(DEMO_DIR)/videos --output $(DEMO_DIR)/out

# a worker per core and one more, as memory allows (three here), a test module at a time per worker, the
# heaviest modules first (tests/conftest.py); PYTEST_XDIST_AUTO_NUM_WORKERS=N sets the number of workers.
# The 20 slowest tests close the report: where the suite's time goes, at every run
test: install test-sysdeps
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -ra -n auto --dist loadgroup --no-loadscope-reorder --durations=20 tests

test-fast: install test-sysdeps
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -ra -n auto --dist loadgroup --no-loadscope-reorder -m "not slow" tests

clean:
	rm -rf $(DEMO_DIR) build *.egg-info .mtcc
