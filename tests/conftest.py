"""Shared test set-up.

Fuzz budgets (hypothesis profiles): the default run gives every property 200 derandomized examples,
so `make test` is fast and repeatable; `--hypothesis-profile=long` (`make fuzz-long`) gives each
10,000, the budget docs/reliability.md records.
"""

from hypothesis import HealthCheck, settings

_FUZZ = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=200, **_FUZZ)
settings.register_profile("long", max_examples=10_000, **_FUZZ)
settings.load_profile("default")


# In CI (`CI` set, as .ci/run's environment has it) a test that skips because a package is missing
# fails instead: `make test` installs every peer, so such a skip means an install step is broken.
import os  # noqa: E402

import pytest  # noqa: E402

_MISSING_PACKAGE = ("could not import", "not installed")


def _skipped_for_a_missing_package(report) -> bool:
  if not report.skipped:
    return False
  reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  return any(marker in str(reason) for marker in _MISSING_PACKAGE)


def _fail_missing_package_skips(report) -> None:
  if os.environ.get("CI") and _skipped_for_a_missing_package(report):
    report.outcome = "failed"
    report.longrepr = f"skipped in CI for a missing package: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  _fail_missing_package_skips(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  _fail_missing_package_skips(outcome.get_result())


# The programs the tests start as subprocesses (training runs killed and restarted, workflow
# stages, t5x, Beam workers) compile the same small models again and again (a kill-and-resume test
# spent a third of its CPU time on it): they share one persistent XLA compilation cache, made for
# this test session and removed after it. The test processes keep it off: tests read compiled HLO and memory
# analyses, which an executable loaded from the cache need not carry.
_JAX_CACHE = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def pytest_configure(config):
  if not hasattr(config, "workerinput"):  # The session's first process: xdist's workers inherit this.
    import tempfile
    config._jax_cache_dir = tempfile.mkdtemp(prefix="gemma-forge-jax-cache-")
    os.environ.update(_JAX_CACHE, JAX_COMPILATION_CACHE_DIR=config._jax_cache_dir)
  import jax
  jax.config.update("jax_compilation_cache_dir", None)


def pytest_unconfigure(config):
  if getattr(config, "_jax_cache_dir", None):
    import shutil
    shutil.rmtree(config._jax_cache_dir, ignore_errors=True)
