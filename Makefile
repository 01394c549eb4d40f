# lora-ens-rs developer commands. `make help` lists them; CI runs `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
FIXTURES := tests/fixtures/tiny
export LORA_ENS_RS_FIXTURES := $(abspath $(FIXTURES))

.PHONY: help
help:  ## List the targets with what they do
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "maturin>=1.7,<2"

.PHONY: setup
setup: $(PY)  ## Create .venv, build the engine (release) and install the package with every extra
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/maturin develop --release --extras test
	$(BIN)/lora-ens-rs fetch-model

.PHONY: build
build: $(PY)  ## Rebuild the engine into .venv after a Rust change (release)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/maturin develop --release --skip-install

.PHONY: build-cuda
build-cuda:  ## Check the engine builds with --features cuda (CUDA 13.0 from PyPI wheels; ~30 min cold)
	bash scripts/build-cuda.sh

.PHONY: gpu-check
gpu-check:  ## Build the CUDA-vs-CPU parity and throughput check for a GPU machine into dist/gpu-check/ (~30 min cold)
	bash scripts/build-gpu-check.sh

.PHONY: fixtures
fixtures:  ## Write the tiny random LLaMA (GGUF + HF) and a 3-member LoRA ensemble of it into tests/fixtures/tiny
	$(PY) scripts/make_tiny_llama.py --out $(FIXTURES)
	$(PY) scripts/make_tiny_ensemble.py --fixtures $(FIXTURES)

.PHONY: lint
lint:  ## cargo fmt --check, clippy -D warnings, ruff check and ruff format --check
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check python tests scripts benches
	$(BIN)/ruff format --check python tests scripts benches

.PHONY: fmt
fmt:  ## Format Rust and Python sources in place
	cargo fmt --all
	$(BIN)/ruff format python tests scripts benches
	$(BIN)/ruff check --fix python tests scripts benches

.PHONY: test-rust
test-rust:  ## Rust unit, integration and doc tests of the engine and CLI crates
	cargo test --workspace --exclude lora-ens-py

.PHONY: test-py
test-py:  ## pytest: Python API, CLI, parity with transformers / PEFT (slow tests included)
	$(BIN)/pytest

.PHONY: test
test: setup fixtures lint test-rust test-py  ## Install everything, then run every lint and test

.PHONY: fuzz
FUZZ_SECS ?= 60
FUZZ_SEED ?= 1
fuzz:  ## Fuzz the adapter, adapter-config, manifest and GGUF readers for FUZZ_SECS seconds each (release)
	LORA_ENS_RS_FUZZ_ITERS=1000000000 LORA_ENS_RS_FUZZ_SECS=$(FUZZ_SECS) LORA_ENS_RS_FUZZ_SEED=$(FUZZ_SEED) \
		cargo test --release -p lora-ens --test fuzz -- --test-threads=1 --nocapture
	LORA_ENS_RS_FUZZ_ITERS=1000000000 LORA_ENS_RS_FUZZ_SECS=$(FUZZ_SECS) \
		cargo test --release -p lora-ens --lib gguf::tests::random_mutations -- --test-threads=1 --nocapture

.PHONY: demo
DEMO_DATA := python/lora_ens_rs/datasets/commonsenseqa
DEMO_RUN := runs/demo
DEMO_REPORT := reports/demo
demo: setup  ## Install everything, then train a 5-member LoRA ensemble on CommonsenseQA, evaluate it against its members, temperature scaling and the base, and run infer (~7 min after setup)
	@echo "== 1/3 train: 5 LoRA members (top 4 layers, q/v/up/down, r=8), 3 epochs at lr 1e-3 on 300 CommonsenseQA training questions =="
	$(BIN)/lora-ens-rs train $(DEMO_DATA)/train.jsonl --limit 300 --members 5 --layers top4 \
		--targets q_proj,v_proj,up_proj,down_proj --scoring choices --normalization per_token \
		--epochs 3 --lr 1e-3 --batch-size 4 --out $(DEMO_RUN) --overwrite
	@echo "== 2/3 eval: 250 CommonsenseQA dev questions, 50 to fit each member's temperature, 200 to test ensemble vs members vs base =="
	$(BIN)/lora-ens-rs eval --data $(DEMO_DATA)/dev.jsonl --limit 250 --val-fraction 0.2 \
		--adapters $(DEMO_RUN) --report $(DEMO_REPORT)
	@echo "== 3/3 infer: per-question probabilities and uncertainty of the ensemble =="
	$(BIN)/lora-ens-rs infer $(DEMO_DATA)/dev.jsonl --adapters $(DEMO_RUN) --limit 5
	@echo "== report with plots: $(DEMO_REPORT)/report.md; ensemble (PEFT members + ensemble.json): $(DEMO_RUN) =="

.PHONY: bench
bench:  ## Side-by-side benchmarks against transformers, llama.cpp and PEFT (see benches/README.md)
	OMP_WAIT_POLICY=passive $(PY) benches/bench_scoring.py
	OMP_WAIT_POLICY=passive $(PY) benches/bench_ensemble.py
	OMP_WAIT_POLICY=passive $(PY) benches/bench_training.py

.PHONY: clean
clean:  ## Remove build outputs, the virtual environment and generated fixtures
	cargo clean
	rm -rf $(VENV) $(FIXTURES) tests/fixtures/arch
