# pike_stream: the two commands of the README, and the pieces they are made of.
#   make quickstart   environment → embedded S3 → convert a multilingual corpus slice → train with PiKE → weights
#   make test         environment → the test suite (real embedded S3 server, real Composer runs), then the
#                     llm-foundry plug-in's test in its own environment
# Everything installs into ./.venv from pyproject.toml, pinned by constraints.txt. The llm-foundry plug-in
# (the `foundry` extra) installs into ./.venv-foundry, pinned by constraints-foundry.txt: llm-foundry 0.22
# needs mosaicml-streaming 0.12 and transformers 4.51, older than constraints.txt's.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FVENV  := .venv-foundry
FBIN   := $(FVENV)/bin
FSTAMP := $(FVENV)/.installed-stamp
DATA   ?= data

.PHONY: install install-foundry quickstart lint test test-fast test-foundry bench corpus clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# The llm-foundry plug-in's environment (2-3 minutes with a warm pip cache; about 7 GB on disk, its own torch
# included, beside .venv's 7 GB).
install-foundry: $(FSTAMP)

$(FSTAMP): pyproject.toml constraints-foundry.txt
	@test -x $(FBIN)/python || $(PYTHON) -m venv $(FVENV)
	$(FBIN)/python -m pip install --quiet --upgrade pip
	$(FBIN)/python -m pip install --quiet -c constraints-foundry.txt -e '.[foundry]' pytest
	@touch $(FSTAMP)

# The quickstart: the embedded S3 server (reused if running), a 0.3 MB-per-domain slice of the benchmark
# corpus (Debian man pages in five languages + Python's standard library), converted to MDS on S3, then a
# short PiKE run of yamls/quickstart.yaml whose checkpoints go to S3 too. Rerunning resumes (autoresume).
# QUICKSTART_ARGS: extra `key=value` overrides for the training run (tests use a shorter one).
S3ENV = eval "$$($(BIN)/pike-stream s3 env)"
QUICKSTART_ARGS ?=

quickstart: install
	$(BIN)/pike-stream s3 start --bucket pike-quickstart
	$(BIN)/pike-stream corpus build $(DATA)/corpus --small
	$(S3ENV) && $(BIN)/pike-stream corpus convert $(DATA)/corpus --seq-len 128 --dest s3://pike-quickstart/mds --overwrite
	$(S3ENV) && $(BIN)/pike-stream train yamls/quickstart.yaml $(QUICKSTART_ARGS)

# Lint (ruff, then pyright in basic mode; both configured in pyproject.toml) runs first: a lint or type
# error fails the test command.
lint: install
	$(BIN)/ruff check .
	$(BIN)/pyright

# The main suite runs on two pytest-xdist workers: many tests wait on subprocesses (a CLI's imports, weed's
# start, a launcher) with a core idle, so two workers take about three quarters of the serial time here.
test: lint install-foundry
	$(BIN)/python -m pytest -q -n 2
	$(FBIN)/python -m pytest -q tests/test_foundry.py tests/test_wandb.py

# The plug-in's test alone: llm-foundry's train command with the mixer and PiKE, killed and resumed (~3 min).
test-foundry: install-foundry
	$(FBIN)/python -m pytest -q tests/test_foundry.py tests/test_wandb.py

# The benchmarks (by hand, many hours on 2 cores; the README gives each one's time): each writes JSON to bench/results/; the PiKE reports
# (bench/results/headroom.md, noise.md, corpora.md, metric.md, …) are generated from their JSON.
bench: install
	$(BIN)/python bench/bench_convert.py
	$(BIN)/python bench/bench_mixer.py
	$(BIN)/python bench/bench_cache.py --shuffle-block-size 512 --compute-ms 20
	$(BIN)/python bench/bench_cache.py --shuffle-block-size 512 --out bench/results/cache_loader.json
	$(BIN)/python bench/bench_cache.py --compute-ms 20 --steps 1000 --out bench/results/cache_default_block.json
	$(BIN)/python bench/bench_overhead.py
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/bench_nodes.py
	$(BIN)/python bench/corpora.py headroom $(DATA)/headroom
	$(BIN)/python bench/bench_headroom.py --data $(DATA)/headroom/mds --work $(DATA)/headroom-runs --jobs 2
	$(BIN)/python bench/bench_spread.py --data $(DATA)/headroom/mds --work $(DATA)/spread-runs --jobs 2
	$(BIN)/python bench/bench_noise.py --data $(DATA)/headroom/mds --work $(DATA)/noise-runs --jobs 2
	$(BIN)/python bench/corpora.py multilingual $(DATA)/multilingual
	$(BIN)/python bench/corpora.py unequal $(DATA)/unequal
	$(BIN)/python bench/bench_corpora.py --multilingual $(DATA)/multilingual/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/corpora-runs --jobs 2
	$(BIN)/python bench/bench_corpora.py --unequal $(DATA)/unequal/mds --lr 6e-3 --seeds 40,41,42 \
		--name unequal_lr0.006 --work $(DATA)/unequal-lr-runs --jobs 2
	$(BIN)/python bench/bench_variant.py metric --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/variant-runs --jobs 2
	$(BIN)/python bench/bench_variant.py cross_terms --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/variant-runs --jobs 2
	$(BIN)/python bench/bench_null.py --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/null-runs --jobs 2
	$(BIN)/python bench/bench_null.py --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/null-x3-runs --jobs 2 --steps-scale 3 --corpora noise,headroom --seeds 60,61,62,63 --name null_x3
	$(BIN)/python bench/bench_adopt.py cross_terms --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/adopt-runs --jobs 2
	$(BIN)/python bench/bench_long.py --headroom $(DATA)/headroom/mds --work $(DATA)/long-runs --jobs 2
	$(BIN)/python bench/bench_long_corpora.py unequal --data $(DATA)/unequal/mds --work $(DATA)/long-unequal-runs --jobs 2
	$(BIN)/python bench/bench_long_corpora.py multilingual --data $(DATA)/multilingual/mds --work $(DATA)/long-multilingual-runs \
		--jobs 2
	$(BIN)/python bench/bench_long_variance.py --headroom $(DATA)/headroom/mds --work $(DATA)/long-variance-runs --jobs 2
	$(BIN)/python bench/bench_adopt.py zeta2_0 --headroom $(DATA)/headroom/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/adopt-runs --jobs 2

test-fast: lint
	$(BIN)/python -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) $(FVENV) build *.egg-info .pytest_cache
