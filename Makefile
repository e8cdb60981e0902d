# Two commands: `make demo` runs the embedded default, `make test` runs the test suite.
# Both create .venv if there is none. torch is installed first, pinned to the CPU build
# in constraints.txt: a bare `torch` requirement would otherwise pull several GB of CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
OUT    ?= demo_out
# The suite's files run on this many pytest processes (pytest-xdist), each file whole on one of them
# (its module fixtures built once), the files with integration tests first (tests/conftest.py).
# Each process starts its own local Ray cluster. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install install-dev demo test test-fast ui-check bench bench-search-real bench-serving bench-search-end study-amazon mixing-pays lora-merge-study plan-real every-domain-real measures-real blackbox-real new-domain-real defaults-real constraints clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/signmix demo --out $(OUT)

test: install-dev
	$(PYTEST)

test-fast: install-dev
	$(PYTEST) -m "not integration"

# Issue 30: the MLflow UI on the demo's store in Debian's headless Chromium (`apt-get install -y chromium`):
# the experiment opens on its runs table, the plan run unfolds into its group searches. Runs `make demo`
# first when $(OUT)/mlflow.db is missing. Not part of `make test`.
ui-check: install-dev
	@test -f $(OUT)/mlflow.db || $(MAKE) demo
	$(PY) tests/ui_check.py --store $(OUT)/mlflow.db

# Benchmarks print ratios taken in one run; not part of `make test`.
bench: install-dev
	$(PY) tests/benchmarks/bench_fsd.py
	$(PY) tests/benchmarks/bench_search_efficiency.py
	$(PY) tests/benchmarks/bench_search.py
	$(PY) tests/benchmarks/bench_optimisations.py

# Search efficiency on real adapters: regret against the exhaustive study tables of the 4 Amazon and
# 8 FDU-MTL domains, and the FSD gate. Trains and studies what .bench/realdata lacks (hours the first
# time), then reads the tables from MLflow once into .bench/search-real.
bench-search-real: install-dev
	$(PY) tests/benchmarks/bench_search_real.py

# The paper's experiments on ../shared/data's four Amazon domains (a documented command).
study-amazon: install-dev
	$(PY) tests/benchmarks/amazon_study.py

constraints: install-dev
	{ echo "# The tested set: every package signmix installs, pinned. Regenerate with 'make constraints'."; \
	  $(PIP) freeze --exclude-editable | grep -v -E '^(signmix|torch)==' | sed 's/+cpu//'; echo "$(TORCH)"; } > constraints.txt

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# Issue 9's measurement on the 12 real review domains: does mixing pay? (about an hour on 2 cores)
mixing-pays: install-dev
	$(PY) tests/benchmarks/mixing_pays.py

# Issue 11, item 4: LoRA mixtures merged on ΔW (delta_svd) against averaged factors, on the 4 Amazon domains
lora-merge-study: install-dev
	$(PY) tests/benchmarks/lora_merge_study.py

# Issue 17: serving plans on the 12 real review domains and on those plus the 4 sentence tasks (16):
# per number of bodies, mean test accuracy with intervals against the bound under both head protocols
# (hours on 2 cores the first time: 16 adapters are trained into .bench/plan-real)
plan-real: install-dev
	$(PY) tests/benchmarks/plan_real.py

# Issue 29: is every domain served as well as its own adapter? Fixed plans of the 16 real domains (G = 1, 2, 3
# and the 12 reviews at G = 1), each plain, with output rescalers, EMR masks + rescalers and TALL masks, on
# test (needs the adapters of `make plan-real`; about an hour on 2 quiet cores; results kept per group)
every-domain-real: install-dev
	flock /tmp/signmix-measure.lock $(PY) tests/benchmarks/every_domain_real.py

# Issue 18: which conflict measure predicts a merge's accuracy on the real adapters (the Amazon and
# FDU-MTL in-domain studies, the FDU-MTL serving groups of 2; SIZES="2 3" adds the groups of 3; the FDU
# study takes about 25 minutes the first time), then benchmark 3's regret with the gate on each measure;
# tables in BENCHMARKS.md
SIZES ?= 2
measures-real: install-dev
	$(PY) tests/benchmarks/measures_real.py --parts amazon fdu serving probe-cost --serving-sizes $(SIZES)
	$(PY) tests/benchmarks/bench_search_real.py --collections fdu --measures

# Issue 17: serving N domains from a mixed request stream, N switched adapters against one or G
# merged bodies (examples/s on 2 threads, bytes held), N = 4, 8, 12, 16. Not part of `make test`.
bench-serving: install-dev
	$(PY) tests/benchmarks/bench_serving.py

# Issue 17: the end of a real-data serving search (confirmation, summary) against the search itself.
bench-search-end: install-dev
	$(PY) tests/benchmarks/bench_search_end.py --work .bench/search-end

# Issue 21: clean, FGSM and black-box (word substitution, embedding and WordNet synonyms) accuracy on test
# for books and dvd: own adapter, soup of all, TIES of the Amazon 4 (about 40 minutes on 2 cores;
# needs ../main/.bench/plan-real/adapters from `make plan-real`, and WordNet at /usr/share/wordnet)
EXAMPLES ?= 100
blackbox-real: install-dev
	$(PY) tests/benchmarks/blackbox_real.py --examples $(EXAMPLES)

# Issue 19: a new domain with a few labelled examples, leave one domain out over the 12 real review domains
# (the other 11 adapters the library; 16/32/64/128 examples, 3 seeds); tables in BENCHMARKS.md. Hours on 2
# cores in full: ARGS="--held-out books imdb --seeds 0 --num-mixtures 8" runs a slice.
ARGS ?=
new-domain-real: install-dev
	$(PY) tests/benchmarks/new_domain_real.py $(ARGS)

# Issue 33: the product's defaults on the 4 Amazon domains (one-target searches of each, two-target searches of
# books+dvd and electronics+kitchen; 4 and 12 mixtures): is the exported mixture ever significantly worse on
# test than TIES of all or the soup the same search scored, and how many multi-adapter mixtures score within
# 5 points of chance on validation (needs the adapters of `make plan-real`; 3 to 4 minutes a search of 4 on
# 2 cores). ARGS="--targets books books+dvd --budgets 4" runs a slice.
defaults-real: install-dev
	flock /tmp/signmix-measure.lock $(PY) tests/benchmarks/defaults_real.py $(ARGS)
