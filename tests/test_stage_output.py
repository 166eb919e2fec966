"""atomic_output_dir: what killed jobs leave behind is removed by the next job for that output."""

import os

from pipelines import common


def test_leftover_tmp_dirs_of_killed_jobs_are_removed(tmp_path):
  out = str(tmp_path / "quality")
  stale = [f"{out}.tmp-0123abcd", f"{out}.tmp-deadbeef"]
  for path in stale:
    os.makedirs(os.path.join(path, "rejects"))
    open(os.path.join(path, "docs-00000-of-00001.jsonl"), "w").close()
  other = str(tmp_path / "quality2.tmp-0123abcd")  # Another output's: not ours to remove.
  os.makedirs(other)
  assert common.stale_tmp_dirs(out) == stale
  with common.atomic_output_dir(out) as tmp_dir:
    assert not any(os.path.exists(p) for p in stale)
    open(os.path.join(tmp_dir, "stats.json"), "w").close()
  assert sorted(os.listdir(tmp_path)) == ["quality", "quality2.tmp-0123abcd"]
  assert sorted(os.listdir(out)) == [common.SUCCESS_MARKER, "stats.json"]


def test_a_failed_job_leaves_nothing_and_keeps_the_previous_output(tmp_path):
  out = str(tmp_path / "pii")
  with common.atomic_output_dir(out) as tmp_dir:
    open(os.path.join(tmp_dir, "stats.json"), "w").write("old")
  try:
    with common.atomic_output_dir(out) as tmp_dir:
      open(os.path.join(tmp_dir, "stats.json"), "w").write("new")
      raise RuntimeError("killed")
  except RuntimeError:
    pass
  assert sorted(os.listdir(tmp_path)) == ["pii"]
  assert open(os.path.join(out, "stats.json")).read() == "old"
