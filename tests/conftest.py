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
