# minigpt: one command to set up and run each job.
#
#   make demo     create .venv, install, train the shakespeare-cpu preset for ~1 minute, print a sample
#   make test     create .venv, install, run the test suite and the notebooks in fast mode
#   make lint     ruff check
#   make bench    benchmarks (long: ~30 min; see bench/README.md), make bench-quick for a smoke run
#   make student  write student versions of the notebooks into student/
#   make annotate give the notebooks' cells their nbgrader metadata (run after editing a notebook)
#
# Needs Python 3.11+ as `python3` (or: make demo PYTHON=python3.12).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minigpt-installed
SHARED_DATA := ../shared/data/tinyshakespeare.txt

.PHONY: setup demo test lint bench bench-quick student annotate data clean

setup: $(STAMP)

# Reinstall only when the pins or the package metadata change.
# torch comes first and alone, pinned: the CI-tested version (see requirements.txt). On this
# project's machines pip finds the CPU wheel locally; elsewhere, to skip the multi-GB CUDA build on
# a CPU-only laptop, install it first with
#   $(BIN)/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"minigpt needs Python 3.11+, found {v.major}.{v.minor}: run make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -e . --no-deps
	@touch $@

# Use the shared copy of tiny Shakespeare when there is one (offline machines, CI); otherwise
# minigpt downloads it on first use and checks its sha256.
data:
	@mkdir -p data
	@if [ -f $(SHARED_DATA) ] && [ ! -f data/tinyshakespeare.txt ]; then cp $(SHARED_DATA) data/; fi

demo: setup data
	$(BIN)/minigpt train --preset shakespeare-cpu --max-time 60 --out-dir out/demo
	$(BIN)/minigpt generate --checkpoint out/demo --prompt "ROMEO:" --length 300 --seed 1

# nbgrader (tests/test_nbgrader.py) runs `alembic` from the environment's bin folder: keep it on PATH.
test: setup data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests
	MINIGPT_FAST=1 $(BIN)/python -m pytest --nbmake notebooks

lint: setup
	$(BIN)/ruff check .

bench: setup data
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/time_to_loss.py
	$(BIN)/python bench/tokenizer_bpe.py

bench-quick: setup data
	$(BIN)/python bench/train_throughput.py --quick
	$(BIN)/python bench/generation.py --quick
	$(BIN)/python bench/time_to_loss.py --quick
	$(BIN)/python bench/tokenizer_bpe.py --quick

student: setup
	$(BIN)/minigpt course student --src notebooks --out student

annotate: setup
	$(BIN)/minigpt course annotate notebooks/*.ipynb

clean:
	rm -rf out student bench/results
