# Two commands for a fresh machine: `make train` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
SHARED ?= ../shared
CONFIG ?= configs/mobilenet.py
ARGS ?=
# Stops XLA:CPU from page-faulting its temporaries on every step (~40% faster training
# on CPU; see cxr_jax/tools/malloc_tuning.py, whose TUNABLES these must equal).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296

.PHONY: train test setup link-shared clean-venv

setup: $(STAMP) link-shared

# The packages are byte-compiled after the install, on every core: pip compiles one file
# at a time (37 s of a 65 s install on a 2-core Zen 5; 22 s this way).
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m compileall -q -j 0 $(VENV)/lib
	rm -f $(VENV)/.installed-*
	touch $@

# Link ../shared's data and weights into the project's default locations, never
# overwriting a real folder a user put there (e.g. their own Kaggle download).
link-shared:
	@if [ -d "$(SHARED)/data" ]; then \
	  mkdir -p data; \
	  for d in "$(SHARED)"/data/*/; do \
	    name=$$(basename "$$d"); \
	    [ -e "data/$$name" ] || ln -s "$$(cd "$$d" && pwd)" "data/$$name"; \
	  done; \
	fi
	@if [ -d "$(SHARED)/weights" ]; then \
	  mkdir -p weights; \
	  for f in "$(SHARED)"/weights/*.h5; do \
	    [ -e "weights/$$(basename "$$f")" ] || ln -s "$$(cd "$$(dirname "$$f")" && pwd)/$$(basename "$$f")" weights/; \
	  done; \
	fi

train: setup
	$(PY) launch.py --config=$(CONFIG) $(ARGS)

# tests/test_browser.py drives the page in Debian's headless chromium: installed here when
# missing and root may install it (without its recommended packages: 20 instead of 108,
# 8 s instead of 16; the headless browser needs none of them); otherwise that test skips,
# saying why.
# Two pytest-xdist workers (alone the suite keeps ~1.3 of 2 cores busy); --dist loadfile keeps
# each file on one worker (its module fixtures are made once) and, with
# --no-loadscope-reorder, takes files in the order of tests/conftest.py, which starts the two
# longest first, one per worker; tests/conftest.py gives the session one XLA compilation
# cache. TEST_WORKERS=0 runs the tests in this process, one after another.
TEST_WORKERS ?= 2
# The suite starts ~70 Python processes: each would compile the project's modules anew
# (0.5 s of CPU) where PYTHONDONTWRITEBYTECODE is set, so it is emptied for the tests.
# The install and chromium's are made side by side (-j2): pip keeps one core busy, apt the other.
test: export PYTHONDONTWRITEBYTECODE =
test:
	@$(MAKE) --no-print-directory -j2 setup browser-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

.PHONY: browser-deps
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else \
	  echo "note: chromium/chromedriver missing and not root: tests/test_browser.py will skip" \
	       "(apt-get install chromium chromium-driver)"; \
	fi

clean-venv:
	rm -rf $(VENV)

# The comparison report of every trained workdir (see cxr_jax/report/):
#   make report EXTERNAL="hospital_b=/data/hospital_b"   (trains missing workdirs first;
#   REPORT_ARGS= reports only on those that exist)
WORKDIRS ?= workdirs
REPORT_DIR ?= reports/latest
EXTERNAL ?=
REPORT_ARGS ?= --train_missing

.PHONY: report
report: setup
	$(PY) -m cxr_jax.tools.report --workdirs=$(WORKDIRS) --output=$(REPORT_DIR) \
	  $(foreach e,$(EXTERNAL),--external=$(e)) $(REPORT_ARGS)

# The seed study: 3 seeds of each of the five models, mean +- std of every metric
# (workdirs/sweeps/study/SWEEP.md), then the report of their seed-0 workdirs.
SEEDS ?= 0,1,2
STUDY_ROOT ?= workdirs/sweeps/study
STUDY_CONFIGS ?= configs/pca_logreg.py configs/cnn_baseline.py configs/cnn_v2.py \
  configs/cnn_v3.py configs/mobilenet.py

.PHONY: study
study: setup
	$(PY) -m cxr_lab.tools.sweep $(foreach c,$(STUDY_CONFIGS),--config=$(c)) --seeds=$(SEEDS) \
	  --root=$(STUDY_ROOT)
	$(PY) -m cxr_jax.tools.report --workdirs=$(STUDY_ROOT) --seed=0 \
	  --output=$(STUDY_ROOT)/report $(foreach e,$(EXTERNAL),--external=$(e))

# A trained workdir in users' hands: export, the local page, and the page in a real
# browser (installs Debian's chromium and chromedriver, and selenium, first; selenium
# 4.52 needs a certifi release newer than the package index here has).
WORKDIR ?= workdirs/mobilenet_v2

.PHONY: export serve browser-check
export: setup
	$(PY) -m cxr_jax.tools.export --workdir=$(WORKDIR) $(ARGS)

serve: setup
	$(PY) -m cxr_jax.tools.serve --workdir=$(WORKDIR) $(ARGS)

browser-check: setup browser-deps
	$(PY) -m pip install --quiet selenium==4.51.0
	$(PY) -m cxr_jax.tools.browser_check --workdir=$(WORKDIR) \
	  --xray=$$(ls data/chest_xray/test/PNEUMONIA/* | head -1) \
	  --photo=$$(ls data/imagenet_photos/*.jp* | head -1) --screenshot=docs/serve_screenshot.png
