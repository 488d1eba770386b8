# Quick start (fresh machine):  `make demo`  and  `make test`.
# Everything installs into $(VENV). torch is installed from TORCH_SPEC first (a CPU build by default),
# so that nothing later resolves `torch` to a multi-GB CUDA build. Override, e.g.:
#   make test TORCH_SPEC="torch==2.11.0"     or     make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxseq-installed

.PHONY: install demo test test-slow report bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[torch,dev,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/word_language.py --quick
	$(PY) -m parity_tests.report --dtype float32

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	JAXSEQ_SLOW=1 $(PY) -m pytest -q

report: $(STAMP)
	$(PY) -m parity_tests.report

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
