"""The fused filter job against the separate stage jobs, and the stage jobs under other Beam runners.

One small WARC (a slice of the bundled sample with every kind of planted page) goes through
extract -> quality -> pii -> toxicity -> dedupe twice: as five separate jobs and as one fused job.
Every stage's stats and rejects must be byte-identical, and so must the kept documents.
"""

import filecmp
import glob
import os

import pytest

from pipelines import common, dedupe, extract, filter as fused, pii, quality, toxicity
from tests.sample_slice import slice_sample
from beam_runners import OTHER_RUNNERS

CHAIN = ("extract", "quality", "pii", "toxicity", "dedupe")
MODULES = {"extract": extract, "quality": quality, "pii": pii, "toxicity": toxicity, "dedupe": dedupe}


@pytest.fixture(scope="module")
def small_warc(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("warc") / "slice.warc.gz")
  taken = slice_sample(path)
  assert {"real", "toxic", "exact_dup", "forum", "boilerplate"} <= set(taken), taken
  return path


def _run_chain(warc: str, out: str, beam_args=()) -> dict[str, str]:
  dirs, previous = {}, warc
  for stage in CHAIN:
    dirs[stage] = os.path.join(out, stage)
    flags = ["--languages=en"] if stage == "extract" else []
    MODULES[stage].main([f"--input={previous}", f"--output_dir={dirs[stage]}", *flags, *beam_args])
    previous = dirs[stage]
  return dirs


@pytest.fixture(scope="module")
def chained(small_warc, tmp_path_factory):
  return _run_chain(small_warc, str(tmp_path_factory.mktemp("chained")))


@pytest.fixture(scope="module")
def fused_run(small_warc, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("fused") / "filter")
  stats = fused.main([f"--input={small_warc}", f"--output_dir={out}", "--languages=en",
                      "--dedupe=true"])
  return out, stats


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(p, directory)
                for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
                if os.path.isfile(p))


def _same_files(a: str, b: str, names) -> None:
  for name in names:
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name


def test_fused_job_keeps_every_stage_accounting_byte_for_byte(chained, fused_run):
  out, _ = fused_run
  for stage in CHAIN:
    stage_out = fused.stage_dir(out, stage)
    separate = [f for f in _files(chained[stage])
                if not f.startswith(common.DOCS_PREFIX) and f != common.SUCCESS_MARKER]
    assert _files(stage_out) == separate, stage  # stats.json and rejects/*
    _same_files(chained[stage], stage_out, separate)
  # The slice makes every stage but PII (which mostly redacts) drop something, so the comparison
  # covers real rejects.
  for stage in ("extract", "quality", "toxicity", "dedupe"):
    assert common.read_stats(chained[stage])["dropped_total"] > 0, stage


def test_fused_job_writes_the_kept_documents_once(chained, fused_run):
  out, stats = fused_run
  kept_files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "docs-*.jsonl")))
  assert kept_files == sorted(os.path.basename(p)
                              for p in glob.glob(os.path.join(chained["dedupe"], "docs-*.jsonl")))
  _same_files(chained["dedupe"], out, kept_files)
  # The job's own stats: what entered extract = what dedupe kept + every stage's drops.
  stage_stats = [common.read_stats(chained[s]) for s in CHAIN]
  assert stats["in"] == stage_stats[0]["in"]
  assert stats["kept"] == stage_stats[-1]["kept"]
  assert stats["dropped"] == {f"{s['stage']}.{reason}": n
                              for s in stage_stats for reason, n in s["dropped"].items()}
  assert os.path.exists(os.path.join(out, common.SUCCESS_MARKER))
  # No intermediate copy of the documents: only the last stage's kept shards hold documents.
  assert not glob.glob(os.path.join(out, fused.STAGES_DIR, "*", "docs-*.jsonl"))


def test_fused_job_refuses_bad_stage_settings_before_running(small_warc, tmp_path):
  out = str(tmp_path / "filter")
  with pytest.raises(common.StageError, match="LSH"):
    fused.main([f"--input={small_warc}", f"--output_dir={out}", "--dedupe=true", "--num_bands=0"])
  assert not os.path.exists(out)


@pytest.mark.parametrize("runner_args", list(OTHER_RUNNERS.values()), ids=list(OTHER_RUNNERS))
def test_stage_jobs_are_byte_identical_under_other_runners(small_warc, chained, fused_run,
                                                           tmp_path, runner_args):
  other = _run_chain(small_warc, str(tmp_path / "chain"), runner_args)
  for stage in CHAIN:
    names = [f for f in _files(chained[stage]) if f != common.SUCCESS_MARKER]
    assert _files(other[stage]) == _files(chained[stage]), stage
    _same_files(chained[stage], other[stage], names)
  out = str(tmp_path / "filter")
  fused.main([f"--input={small_warc}", f"--output_dir={out}", "--languages=en", "--dedupe=true",
              *runner_args])
  _same_files(fused_run[0], out, [f for f in _files(fused_run[0]) if f != common.SUCCESS_MARKER])
