PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-fuzz venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m dgmlang.demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	DGM_SLOW=1 $(PY) -m pytest -m slow

# The CLI fuzzer of tests/test_cli_fuzz.py at CI size (make test runs 300 of these cases).
.PHONY: test-cli-fuzz
test-cli-fuzz: $(STAMP)
	DGM_CLI_FUZZ_CASES=$${DGM_CLI_FUZZ_CASES:-2000} $(PY) -m pytest tests/test_cli_fuzz.py

# The mutation fuzzer at CI size (tests/fuzzing/mutate.py): DGM_FUZZ_MUTANTS mutants compiled,
# DGM_FUZZ_RUNS of the accepted ones run.
DGM_FUZZ_MUTANTS ?= 10000
DGM_FUZZ_RUNS    ?= 300
test-fuzz: $(STAMP)
	DGM_FUZZ_MUTANTS=$(DGM_FUZZ_MUTANTS) DGM_FUZZ_RUNS=$(DGM_FUZZ_RUNS) \
	  $(PY) -m pytest -p no:cacheprovider -rxs tests/test_mutation_fuzz.py

# The GPU checks (docs/scaling.md, "Devices"): the cuda-marked tests, then step_time.py and
# digits_ll.py on the GPU, printing their figures; exits non-zero where there is no GPU. In
# the venv make builds (on Linux, PyPI's torch 2.13.0 wheel is the CUDA build), or with a
# Python that already has torch with CUDA: `make gpu-check PY=python3`. Offline, WHEELS=DIR
# first installs the wheels in DIR (pyro-ppl, pyro-api, lark) into $(GPU_SITE).
GPU_SITE := .gpu-site
.PHONY: gpu-check
gpu-check: $(if $(filter command line,$(origin PY)),,$(STAMP))
ifneq ($(WHEELS),)
	$(PY) -m pip install --quiet --no-index --no-deps --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl
endif
	PYTHONPATH="$(CURDIR)$(if $(WHEELS),:$(CURDIR)/$(GPU_SITE))" $(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(GPU_SITE) build *.egg-info
