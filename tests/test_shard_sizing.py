"""Output shard counts follow the data (a target size per shard), unless a count is given."""

import glob
import json
import os

import pytest

from pipelines import common, pii
from tests.stage_dirs import write_stage_dir


def _docs(n: int):
  words = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat".split()
  return [{"id": f"doc-{i:04d}", "source": "test", "url": f"https://example.com/{i}",
           "text": "\n".join(" ".join(words[(i + j) % len(words):] + words[:(i + j) % len(words)])
                             + "." for j in range(12))}
          for i in range(n)]


def test_shards_for_rounds_up_and_never_gives_zero():
  assert common.shards_for(0, 100) == 1
  assert common.shards_for(100, 100) == 1
  assert common.shards_for(101, 100) == 2
  assert common.shards_for(10**12, 128 * 2**20) == 7451


@pytest.fixture(scope="module")
def stage_input(tmp_path_factory):
  return write_stage_dir(tmp_path_factory.mktemp("in"), _docs(60), num_shards=3)


def _shards(out):
  return sorted(glob.glob(os.path.join(out, "docs-*.jsonl")))


def test_shard_count_comes_from_the_bytes_written(stage_input, tmp_path):
  out = str(tmp_path / "out")
  stats = pii.main([f"--input={stage_input}", f"--output_dir={out}", "--target_shard_bytes=4000"])
  files = _shards(out)
  total = sum(os.path.getsize(f) for f in files)
  assert stats["kept"] > 0
  expected = -(-total // 4000)
  assert len(files) == expected > 1
  assert all(f.endswith(f"-of-{expected:05d}.jsonl") for f in files)
  ids = []
  for f in files:
    shard_ids = [json.loads(line)["id"] for line in open(f)]
    assert shard_ids == sorted(shard_ids)  # Each shard sorted by id.
    ids += shard_ids
  assert len(ids) == len(set(ids)) == stats["kept"]


def test_explicit_shard_count_wins_and_default_is_one_shard_for_small_data(stage_input, tmp_path):
  pii.main([f"--input={stage_input}", f"--output_dir={tmp_path / 'fixed'}", "--num_shards=5"])
  assert len(_shards(str(tmp_path / "fixed"))) == 5
  pii.main([f"--input={stage_input}", f"--output_dir={tmp_path / 'default'}"])
  assert [os.path.basename(f) for f in _shards(str(tmp_path / "default"))] == [
      "docs-00000-of-00001.jsonl"]


def test_bad_shard_settings_are_refused(stage_input, tmp_path):
  with pytest.raises(common.StageError, match="target_shard_bytes"):
    pii.main([f"--input={stage_input}", f"--output_dir={tmp_path / 'x'}",
                  "--target_shard_bytes=0"])


class _NoParsing:
  """Stands in for ``json`` inside pipelines.common: encoding works, any parse fails the test."""
  dumps = staticmethod(json.dumps)

  @staticmethod
  def loads(*_args, **_kwargs):
    raise AssertionError("the shard writer parsed a JSON line")


def test_the_shard_writer_sorts_encoded_lines_without_parsing_them(tmp_path, monkeypatch):
  import apache_beam as beam

  docs = _docs(40)
  monkeypatch.setattr(common, "json", _NoParsing)
  with beam.Pipeline() as p:
    _ = p | beam.Create(docs) | common.WriteSortedShards(str(tmp_path), "docs", 3)
  monkeypatch.undo()
  files = _shards(str(tmp_path))
  assert len(files) == 3
  by_id = {d["id"]: d for d in docs}
  seen = []
  for f in files:
    rows = [json.loads(line) for line in open(f)]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert all(r == by_id[r["id"]] for r in rows)
    seen += [r["id"] for r in rows]
  assert sorted(seen) == sorted(by_id)
