# Two commands do all the set-up on a fresh clone:
#   make run   - bootstrap .venv, then run the main job on the embedded defaults
#   make test  - bootstrap .venv, then run the test suite
# TORCH_SPEC pins the CPU wheel that lies on the CI machines' disk; set it to
# your own (e.g. TORCH_SPEC=torch) to keep a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-gpu lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/varbench run sweeps/quick.yaml

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.peer --spec sweeps/quick.yaml

# on a GPU machine; runs from an uninstalled checkout too (torch only)
bench-gpu:
	bash benchmarks/gpu_check.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
