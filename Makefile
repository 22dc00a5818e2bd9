# pike_stream: the two commands of the README, and the pieces they are made of.
#   make quickstart   environment → embedded S3 → convert a multilingual corpus slice → train with PiKE → weights
#   make test         environment → the test suite (real embedded S3 server, real Composer runs)
# Everything installs into ./.venv from pyproject.toml, pinned by constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= data

.PHONY: install quickstart lint test test-fast bench corpus clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

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

test: lint
	$(BIN)/python -m pytest -q

# The benchmarks (by hand, about 3 hours on 2 cores): each writes JSON to bench/results/; the PiKE reports
# (bench/results/headroom.md, noise.md, corpora.md) are generated from their JSON.
bench: install
	$(BIN)/python bench/bench_convert.py
	$(BIN)/python bench/bench_mixer.py
	$(BIN)/python bench/bench_overhead.py
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/corpora.py headroom $(DATA)/headroom
	$(BIN)/python bench/bench_headroom.py --data $(DATA)/headroom/mds --work $(DATA)/headroom-runs --jobs 2
	$(BIN)/python bench/bench_noise.py --data $(DATA)/headroom/mds --work $(DATA)/noise-runs --jobs 2
	$(BIN)/python bench/corpora.py multilingual $(DATA)/multilingual
	$(BIN)/python bench/corpora.py unequal $(DATA)/unequal
	$(BIN)/python bench/bench_corpora.py --multilingual $(DATA)/multilingual/mds --unequal $(DATA)/unequal/mds \
		--work $(DATA)/corpora-runs --jobs 2

test-fast: lint
	$(BIN)/python -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
