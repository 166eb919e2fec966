"""Progress of Beam stages while they run: the jobs' progress lines, the workflow's reading of
them (documents done / total, ETA) and `status` of a run in progress."""

import io
import os
import sys
import threading
import time

from pipelines import common, dedupe
from stage_dirs import write_stage_dir
from test_tokenizer import make_docs
from workflow import progress as progress_lib
from workflow import runner
from workflow import status as status_lib


def progress_counts(text: str, stage: str) -> dict[str, list[int]]:
  """Every count each worker reported for ``stage``, in order."""
  counts: dict[str, list[int]] = {}
  for line in text.splitlines():
    match = progress_lib.DOCS_LINE.search(line)
    if match and match.group(1) == stage:
      counts.setdefault(match.group(3), []).append(int(match.group(2)))
  return counts


def test_beam_stage_prints_increasing_counts_that_sum_to_its_in(tmp_path, capfd, monkeypatch):
  monkeypatch.setattr(common, "PROGRESS_INTERVAL_S", 0.0)  # Every hand-on is due.
  monkeypatch.setattr(common.CountProgress, "PROGRESS_BATCH", 8)
  stage = write_stage_dir(tmp_path / "in", make_docs(50), extra_lines=["not json"])
  stats = dedupe.main([f"--input={stage}", f"--output_dir={tmp_path / 'out'}", "--num_shards=1"])
  counts = progress_counts(capfd.readouterr().err, dedupe.STAGE)
  assert list(counts) == [str(os.getpid())]  # The in-memory runner: this process is the worker.
  seen = counts[str(os.getpid())]
  assert len(seen) >= 5 and seen == sorted(set(seen)), seen  # Increasing, one line per 8 docs.
  assert seen[-1] == stats["in"] == 51  # The last line: every line read, the bad one included.
  reader = progress_lib.StageProgress(dedupe.STAGE, "docs", 51, None, stream=io.StringIO(),
                                      use_bar=False)
  for line in (f"noise {common.progress_line(dedupe.STAGE, n)}" for n in seen):
    reader.feed(line)
  assert reader.done == 51


def test_workflow_sums_the_latest_count_of_each_worker_and_gives_an_eta(monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(progress_lib.time, "time", lambda: clock[0])
  out = io.StringIO()
  progress = progress_lib.StageProgress("tokenize", "docs", 400, None, stream=out, use_bar=False)
  clock[0] += 10
  for line in [common.progress_line("tokenize", 30, worker=11),
               common.progress_line("tokenize", 50, worker=12),
               "step 3 of something else",
               common.progress_line("tokenize", 70, worker=11),  # replaces worker 11's 30
               common.progress_line("quality", 999, worker=11)]:  # another stage: ignored
    progress.feed(line + "\n")
  snapshot = progress.snapshot()
  assert snapshot["done"] == 120 and snapshot["total"] == 400
  assert snapshot["elapsed_s"] == 10.0
  assert snapshot["eta_s"] == round(10.0 / 120 * 280, 1)  # the rate so far, on what is left
  clock[0] += progress_lib.PLAIN_INTERVAL_S  # Plain lines are throttled; one is due now.
  progress.feed(common.progress_line("tokenize", 50, worker=12))
  assert "120/400 docs (30%)" in out.getvalue().splitlines()[-1]


def test_status_of_a_running_stage_shows_documents_done(tmp_path):
  """A stage's output goes through the runner's pipe into its state file, which `status` reads."""
  run_dir = str(tmp_path / "run")
  lock = runner.RunLock(run_dir).acquire("test.yaml")
  release = tmp_path / "release"
  lines = [common.progress_line("tokenize", 25, worker=7), common.progress_line("tokenize", 15, worker=8)]
  child = ("import os, sys, time\n"
           "print('\\n'.join(sys.argv[2:]), flush=True)\n"
           "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n")
  state = {"stage": "tokenize", "status": "running", "started": time.time()}
  runner.write_state(run_dir, "tokenize", state)
  progress = progress_lib.StageProgress(
      "tokenize", "docs", 160, None, stream=io.StringIO(), use_bar=False,
      on_update=lambda snapshot: runner.write_state(run_dir, "tokenize", {**state, "progress": snapshot}))
  seen = []

  def poll_status():  # While the stage runs; then lets it finish.
    deadline = time.time() + 30
    while time.time() < deadline:
      seen.append(status_lib.format_status(status_lib.collect(run_dir)))
      if "40/160 docs" in seen[-1]:
        break
      time.sleep(0.1)
    release.touch()

  poller = threading.Thread(target=poll_status)
  poller.start()
  try:  # In the main thread: the runner installs signal handlers.
    runner._run_command([sys.executable, "-c", child, str(release), *lines],
                        str(tmp_path / "tokenize.log"), progress)
  finally:
    release.touch()
    poller.join(timeout=60)
    lock.release()
  text = seen[-1]
  assert "RUNNING" in text.splitlines()[0], text
  row = next(line for line in text.splitlines() if line.split()[:2] == ["tokenize", "running"])
  assert "40/160 docs, ETA" in row, text
