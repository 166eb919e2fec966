"""Test helper: writes a document-stage directory the way a finished stage does."""

import glob
import json
import os
import shutil

from pipelines import common


def write_stage_dir(path, docs, num_shards: int = 1, extra_lines=(), success: bool = True) -> str:
  """Shards `docs` by id hash, sorted by id, plus raw `extra_lines` (e.g. broken JSON) in shard 0;
  writes `stats.json` (kept = every line written, as a real stage's count would be) and
  `_SUCCESS` unless `success` is False (an unfinished stage)."""
  os.makedirs(path, exist_ok=True)
  shards = [[] for _ in range(num_shards)]
  for doc in docs:
    shards[common.stable_hash(doc["id"]) % num_shards].append(doc)
  for i, shard in enumerate(shards):
    with open(common.shard_path(str(path), common.DOCS_PREFIX, i, num_shards), "w") as f:
      for doc in sorted(shard, key=lambda d: d["id"]):
        f.write(common.dumps(doc) + "\n")
      for line in extra_lines if i == 0 else ():
        f.write(line + "\n")
  lines = len(docs) + len(extra_lines)
  stats = {"stage": "test", "in": lines, "kept": lines, "dropped": {}, "dropped_total": 0}
  with open(os.path.join(path, common.STATS_FILE), "w") as f:
    json.dump(stats, f)
  if success:
    open(os.path.join(path, common.SUCCESS_MARKER), "w").close()
  return str(path)


def read_out(out) -> tuple[list[dict], list[dict]]:
  """The kept documents and the rejects a finished stage wrote to `out`, in file order."""
  def records(pattern):
    return [json.loads(line) for path in sorted(glob.glob(os.path.join(str(out), pattern)))
            for line in open(path).read().splitlines()]
  return records("docs-*.jsonl"), records("rejects/rejects-*.jsonl")


def copy_without_shard(src, dst, shard: int, num_shards: int) -> str:
  """A copy of stage directory `src` at `dst` with docs shard `shard` removed (a lost shard)."""
  shutil.copytree(src, dst)
  os.remove(common.shard_path(str(dst), common.DOCS_PREFIX, shard, num_shards))
  return str(dst)


def copy_with_truncated_shard(src, dst, shard: int, num_shards: int, lines_lost: int = 1) -> str:
  """A copy of stage directory `src` at `dst` whose docs shard `shard` lost its last lines (a
  replaced or half-written shard: fewer lines than its stats.json counts)."""
  shutil.copytree(src, dst)
  path = common.shard_path(str(dst), common.DOCS_PREFIX, shard, num_shards)
  lines = open(path).read().splitlines(keepends=True)
  open(path, "w").write("".join(lines[:-lines_lost]))
  return str(dst)
