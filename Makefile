# Two commands on a fresh machine: `make demo` (the main job end to end) and `make test`.
# Both create .venv and install the project into it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
PHOTO_PACKAGES := gnome-backgrounds mate-backgrounds sway-backgrounds desktop-base

.PHONY: demo test test-slow test-gpu test-all lint bench dataset clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian (offline data for the demo and the data-dependent tests), and Debian's
# wallpapers: real multi-megapixel JPEG/PNG/WebP photos for imgclust.data.photos (photo tests, benchmarks).
dataset:
	@if [ ! -f $(FASHION) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "dataset-fashion-mnist is not installed and this is not root: the demo uses scikit-learn digits"; fi; \
	fi
	@missing=""; for p in $(PHOTO_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "wallpaper packages missing:$$missing (not root, or no apt-get): the photo tests skip;" \
	    "install them with: apt-get install -y$$missing"; fi; \
	fi

demo: $(STAMP) dataset
	$(VENV)/bin/imgclust demo --out demo

test: $(STAMP) dataset
	$(PY) -m pytest

test-slow: $(STAMP) dataset
	$(PY) -m pytest -m slow

test-gpu: $(STAMP) dataset
	$(PY) -m pytest -m gpu

test-all: $(STAMP) dataset
	$(PY) -m pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check imgclust imgclust_cli flows tasks tests benchmarks
	$(VENV)/bin/mypy

# The quick, CPU benchmarks; the long ones (auto_label.py ~30 min, load.py --n 100000 ~1 h, quality.py,
# pca_scale.py, sample_fit.py --split all) and extract_gpu.py (GPU machine) run by their own commands:
# see BENCHMARKS.md and docs/scaling.md.
bench: $(STAMP) dataset
	$(PY) benchmarks/kmeans.py
	$(PY) benchmarks/ipca_memory.py
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/stage_scaling.py
	$(PY) benchmarks/plan_shards.py

clean:
	rm -rf demo .imgclust
