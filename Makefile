# gemma-forge: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

# The environment is made from the pinned pyproject.toml + constraints.txt and rebuilt when they
# change. The demo needs the project alone; the tests add the `test` extra (pytest, Faker, and
# transformers/torch and datatrove, the peers of the conformance tests and benchmarks).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(TEST_STAMP)

# Runs the whole workflow on the bundled sample: WARC -> filtered text -> tokens -> trained Gemma.
demo: $(STAMP)
	$(PY) -m demo --work_dir=out/demo

# Every test, the end-to-end run of the demo included (about 15 minutes on 2 cores).
test: $(TEST_STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow (the end-to-end demo run).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf out $(VENV)
