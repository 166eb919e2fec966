"""The Beam jobs after dedupe give byte-identical outputs under the other runners.

tests/test_filter.py covers extract .. dedupe and the fused filter job; this covers the rest:
decontaminate, train_tokenizer (with sampling), tokenize (its seqio cache files and info) and
chat_data, each on a tiny input, once with the default DirectRunner (a module fixture) and then
with ``--direct_running_mode=multi_processing --direct_num_workers=2`` and with the portable
runner. Every file of every output directory must be the same, byte for byte, and the progress
lines of the workers must add up to each job's ``in``.
"""

import filecmp
import os
import shutil

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import chat_data, decontaminate, tokenize, train_tokenizer
from stage_dirs import write_stage_dir
from tests import chat_fixtures
from test_decontaminate import _docs as contaminated_docs
from test_progress import progress_counts
from test_tokenize import input_docs
from test_tokenizer import MAX_WHITESPACE_RUN, VOCAB_SIZE, make_docs
from beam_runners import OTHER_RUNNERS

JOBS = ("decontaminate", "train_tokenizer", "tokenize", "chat_data")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  chat = root / "chat"
  chat.mkdir()
  for name in ("instructions.jsonl", "preferences.jsonl"):
    with open(os.path.join(chat_fixtures.CHAT_DIR, name)) as f:
      (chat / name).write_text("".join(f.readlines()[:12]))
  return {
      "decontaminate": write_stage_dir(root / "decontaminate", contaminated_docs(),
                                       extra_lines=["not json"]),
      "train_tokenizer": write_stage_dir(root / "train_tokenizer", make_docs(60), num_shards=2,
                                         extra_lines=["{broken"]),
      "tokenize": write_stage_dir(root / "tokenize", input_docs(), num_shards=2,
                                  extra_lines=["{broken"]),
      "chat_data": str(chat / "*.jsonl"),
      "chat_tokenizer": chat_fixtures.train_chat_tokenizer(str(root)),
  }


def run_jobs(inputs: dict, out: str, beam_args=(), capfd=None) -> tuple[dict[str, str], dict[str, int]]:
  """Every job once, into ``out/<job>``; tokenize encodes with the tokenizer trained here.

  With ``capfd``, also returns per job reading a stage directory the documents its progress
  lines report (the latest count of each worker, summed, as workflow.progress does) minus its
  ``in``: 0 when every worker's share was reported.
  """
  dirs = {job: os.path.join(out, job) for job in JOBS}
  options = PipelineOptions(list(beam_args))
  unreported = {}

  def check_progress(stage, stats):
    if capfd is not None:
      counts = progress_counts(capfd.readouterr().err, stage)
      unreported[stage] = sum(seen[-1] for seen in counts.values()) - stats["in"]

  if capfd is not None:
    capfd.readouterr()
  check_progress(decontaminate.STAGE, decontaminate.main([
      f"--input={inputs['decontaminate']}", f"--output_dir={dirs['decontaminate']}", "--num_shards=2",
      *beam_args]))
  check_progress(train_tokenizer.STAGE, train_tokenizer.train_tokenizer(
      inputs["train_tokenizer"], dirs["train_tokenizer"], VOCAB_SIZE, sample_docs=40,
      max_whitespace_run=MAX_WHITESPACE_RUN, options=options))
  check_progress(tokenize.STAGE, tokenize.tokenize(
      inputs["tokenize"], os.path.join(dirs["train_tokenizer"], train_tokenizer.MODEL_FILE),
      dirs["tokenize"], num_shards=3, validation_fraction=0.2, options=options))
  chat_data.chat_data(inputs["chat_data"], inputs["chat_tokenizer"], dirs["chat_data"], max_length=64,
                      options=options)
  return dirs, unreported


@pytest.fixture(scope="module")
def default_runs(inputs, tmp_path_factory):
  return run_jobs(inputs, str(tmp_path_factory.mktemp("default")))[0]


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, name), directory)
                for d, _, names in os.walk(directory) for name in names)


@pytest.mark.parametrize("runner", sorted(OTHER_RUNNERS))
def test_jobs_are_byte_identical_under_other_runners(inputs, default_runs, tmp_path, runner, capfd):
  other, unreported = run_jobs(inputs, str(tmp_path), OTHER_RUNNERS[runner], capfd)
  # Each worker reported its own share of the documents read (pipelines.common.count_progress).
  assert unreported == {decontaminate.STAGE: 0, train_tokenizer.STAGE: 0, tokenize.STAGE: 0}
  for job in JOBS:
    names = _files(default_runs[job])
    assert _files(other[job]) == names, job
    different = [n for n in names if not filecmp.cmp(os.path.join(default_runs[job], n),
                                                      os.path.join(other[job], n), shallow=False)]
    assert not different, (job, different)
  # The comparison covers real content: rejects, a sampled tokenizer, cache shards of both kinds.
  assert any(n.startswith("rejects/") for n in _files(other["decontaminate"]))
  assert "tokenizer.model" in _files(other["train_tokenizer"])
  assert any(".tfrecord-" in n for n in _files(other["tokenize"]))
  assert any(".tfrecord-" in n for n in _files(other["chat_data"]))
  shutil.rmtree(str(tmp_path), ignore_errors=True)
