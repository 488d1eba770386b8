# Quick start (fresh machine):  `make demo`  and  `make test`.
# Everything installs into $(VENV). torch is installed from TORCH_SPEC first (a CPU build by default),
# so that nothing later resolves `torch` to a multi-GB CUDA build. Override, e.g.:
#   make test TORCH_SPEC="torch==2.11.0"     or     make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxseq-installed

.PHONY: install demo test test-slow report bench lint docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[torch,dev,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/word_language.py --quick
	$(VENV)/bin/jaxseq-parity --dtype float32

test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-slow: $(STAMP)
	JAXSEQ_SLOW=1 $(PY) -m pytest -q -n auto

report: $(STAMP)
	$(VENV)/bin/jaxseq-parity

bench: $(STAMP)
	$(PY) -m benchmarks.run

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxseq torch_ref
	$(VENV)/bin/mypy

# The site is built from copies: the README becomes the home page (its links to docs/ rewritten).
docs: $(STAMP)
	rm -rf build/docs-src && mkdir -p build/docs-src
	sed -e 's#](docs/##g' README.md > build/docs-src/index.md
	cp docs/porting.md docs/benchmarks.md docs/api.md CHANGELOG.md LICENSE build/docs-src/
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info build
