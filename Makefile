# gemma-forge: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-slow fuzz-long venv clean

venv: $(STAMP)

# The environment is made from the pinned pyproject.toml + constraints.txt and rebuilt when they
# change. The demo needs the project alone; the tests add the `test` extra (pytest, Faker, and
# transformers/torch and datatrove, the peers of the conformance tests and benchmarks).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

# Real t5x for the tests that drive it. The registry has no usable t5x (a 0.0.0 placeholder), no
# airio, and a jestimator (0.3.3) that fails to import under jax 0.10, so these three come from
# source at pinned commits, without their dependencies (their git pins would replace the project's;
# what they need beside the project's pins is the `t5x` extra). From ../shared/vendor where it
# exists (snapshots of the same commits), else from their public repositories.
VENDOR := ../shared/vendor
T5X_COMMIT := cc342d419ec3e3e9c4bf1df33c82330cafdc1e16
AIRIO_COMMIT := 69897df7d9a427b947a9f7bb4164c7782b43e601
JESTIMATOR_COMMIT := 326824a477feef6d92e6f44175000907a72899ca
ifneq ($(wildcard $(VENDOR)/t5x-*.tar.gz),)
T5X_SOURCES := $(wildcard $(VENDOR)/t5x-*.tar.gz) $(wildcard $(VENDOR)/airio-*.tar.gz) \
	$(wildcard $(VENDOR)/jestimator-*.tar.gz)
else
T5X_SOURCES := "git+https://github.com/google-research/t5x@$(T5X_COMMIT)" \
	"git+https://github.com/google/airio@$(AIRIO_COMMIT)" \
	"git+https://github.com/google-research/jestimator@$(JESTIMATOR_COMMIT)"
endif

# Debian packages the tests read (tools/install_system_packages.sh says why each).
SYSTEM_PACKAGES := chromium python3.11-doc debian-reference-en debian-reference-de \
	debian-reference-fr debian-reference-es debian-reference-it

# kfp (the Vertex AI Pipelines compiler and its local runner) pins requests differently from the
# project, so it lives in its own environment, pinned by constraints-kfp.txt; the tests call it as
# a subprocess (docs/workflow.md).
KFP_STAMP := .venv-kfp/.installed
$(KFP_STAMP): constraints-kfp.txt
	test -x .venv-kfp/bin/python || $(PYTHON) -m venv .venv-kfp
	.venv-kfp/bin/python -m pip install --quiet --upgrade "pip==26.3"
	.venv-kfp/bin/python -m pip install --quiet -c constraints-kfp.txt kfp==2.17.3 \
		google-cloud-pipeline-components==2.22.0
	touch $(KFP_STAMP)

$(TEST_STAMP): $(STAMP) $(KFP_STAMP)
	bash tools/install_system_packages.sh $(SYSTEM_PACKAGES)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(T5X_SOURCES)
	touch $(TEST_STAMP)

# Runs the whole workflow on the bundled sample: WARC -> filtered text -> tokens -> trained Gemma.
demo: $(STAMP)
	$(PY) -m demo --work_dir=out/demo

# Test files run in 2 processes (pytest-xdist); a file stays in one, so its module fixtures are
# built once.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

# Every test but those marked slow (pyproject.toml's markers say which): the default run, 27
# minutes on this project's 2-core machine.
test: $(TEST_STAMP)
	$(PYTEST) -m "not slow"

# The tests marked slow, 14 minutes. CI (.ci/run) runs both commands.
test-slow: $(TEST_STAMP)
	$(PYTEST) -m slow

# The fuzz suites at 10,000 examples per property (docs/reliability.md records the last run).
fuzz-long: $(TEST_STAMP)
	$(PYTEST) --hypothesis-profile=long tests/test_fuzz_crawl.py tests/test_fuzz_extract.py \
		tests/test_fuzz_records.py

clean:
	rm -rf out $(VENV) .venv-kfp
