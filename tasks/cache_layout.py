"""The files of a tokenized data directory, shared by its writer and its readers, and their checks.

``pipelines.tokenize`` writes, and ``tasks.registry`` / ``tasks.eval_tasks`` / ``model.data`` read::

  <data_dir>/sources.json  tokenizer.model  _SUCCESS
  <data_dir>/cache/<task>/<split>.tfrecord-XXXXX-of-NNNNN   info.<split>.json   stats.<split>.json
  <data_dir>/cache/<task>/COMPLETED

The per-task names are seqio's own (``seqio.utils.get_cached_*``), so ``Task.get_dataset(
use_cached=True)`` reads the cache. seqio trusts a directory that has ``COMPLETED`` and reads
whatever shard files match its glob: a lost shard would silently drop its documents. So every
reader first calls ``check_split_complete``, which compares the files with the shard count that
``info.<split>.json`` declares and that every file name carries (``-of-NNNNN``), and names each
missing file. A TFRecord that is cut short or corrupt fails inside tf.data with an offset but no
file name; ``find_unreadable_files`` says which file it is.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Optional

import tensorflow as tf
from seqio import utils as seqio_utils

CACHE_DIR = "cache"
SOURCES_FILE = "sources.json"
TOKENIZER_FILE = "tokenizer.model"
COMPLETED_FILE = "COMPLETED"
SUCCESS_MARKER = "_SUCCESS"  # pipelines.common.SUCCESS_MARKER, written last by every stage.


class CacheIncompleteError(ValueError):
  """A task cache with missing or inconsistent files (names them)."""


class CorruptCacheError(ValueError):
  """A cache TFRecord that is truncated or corrupt (names the file and the record offset)."""


def shard_file(task_dir: str, split: str, shard: int, num_shards: int) -> str:
  """``<task_dir>/<split>.tfrecord-XXXXX-of-NNNNN``, the name seqio's cache writer gives a shard."""
  return f"{seqio_utils.get_cached_tfrecord_prefix(task_dir, split)}-{shard:05d}-of-{num_shards:05d}"


def info_file(task_dir: str, split: str) -> str:
  return seqio_utils.get_cached_info_path(task_dir, split)


def stats_file(task_dir: str, split: str) -> str:
  return seqio_utils.get_cached_stats_path(task_dir, split)


def _read_json(path: str, what: str) -> dict:
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except tf.errors.NotFoundError:
    raise CacheIncompleteError(f"{what}: {path} is missing.") from None
  except (ValueError, tf.errors.OpError) as e:
    raise CacheIncompleteError(f"{what}: {path} is not readable JSON: {e}") from e


def check_split_complete(task_dir: str, split: str, expected_shards: Optional[int] = None) -> list[str]:
  """The split's shard files, sorted, after checking that the cache holds every one of them.

  Checks ``COMPLETED``, ``info.<split>.json`` and ``stats.<split>.json``; that the shard count in
  ``info.<split>.json``, in every file name (``-of-NNNNN``) and ``expected_shards`` (the count
  ``sources.json`` records, if given) agree; and that every shard ``0 .. N-1`` is present.
  Raises ``CacheIncompleteError`` listing the missing or stray files.
  """
  where = f"Cache {task_dir} (split {split!r})"
  if not tf.io.gfile.exists(os.path.join(task_dir, COMPLETED_FILE)):
    raise CacheIncompleteError(f"{where} has no {COMPLETED_FILE}: the job that wrote it did not finish.")
  info = _read_json(info_file(task_dir, split), where)
  _read_json(stats_file(task_dir, split), where)
  num_shards = info.get("num_shards")
  if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
    raise CacheIncompleteError(f"{where}: {info_file(task_dir, split)} has no valid num_shards "
                               f"(got {num_shards!r}).")
  if expected_shards is not None and expected_shards != num_shards:
    raise CacheIncompleteError(f"{where}: {info_file(task_dir, split)} declares {num_shards} shards "
                               f"but sources.json records {expected_shards}.")
  prefix = os.path.basename(seqio_utils.get_cached_tfrecord_prefix(task_dir, split))
  pattern = re.compile(re.escape(prefix) + r"-(\d{5,})-of-(\d{5,})$")
  present, stray = set(), []
  for path in tf.io.gfile.glob(seqio_utils.get_cached_tfrecord_prefix(task_dir, split) + "-*"):
    match = pattern.match(os.path.basename(path))
    if match and int(match.group(2)) == num_shards and int(match.group(1)) < num_shards:
      present.add(int(match.group(1)))
    else:
      stray.append(path)
  missing = [shard_file(task_dir, split, i, num_shards) for i in range(num_shards) if i not in present]
  if missing or stray:
    problems = []
    if missing:
      problems.append(f"{len(missing)} of its {num_shards} shards are missing: {', '.join(missing)}")
    if stray:
      problems.append(f"files that are not one of its {num_shards} shards: {', '.join(sorted(stray))}")
    raise CacheIncompleteError(
        f"{where} is incomplete; {'; '.join(problems)}. Rerun pipelines.tokenize for this data "
        "directory (seqio would read the rest and lose those documents silently).")
  return [shard_file(task_dir, split, i, num_shards) for i in range(num_shards)]


def find_unreadable_files(paths: Iterable[str]) -> list[str]:
  """``"<path>: <tf.data's message, with the record offset>"`` for every TFRecord file of
  ``paths`` that cannot be read to its end (truncated, or a checksum that does not match)."""
  problems = []
  for path in paths:
    try:
      for _ in tf.data.TFRecordDataset([path]).as_numpy_iterator():
        pass
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
      message = str(e.message if hasattr(e, "message") else e)
      found = re.search(r"(truncated|corrupted) record at (\d+)", message)
      detail = (f"{found.group(1)} record at byte offset {found.group(2)}" if found
                else message.strip().splitlines()[0])
      problems.append(f"{path}: {detail}")
  return problems


def corrupt_cache_error(error: Exception, paths: Iterable[str], cache: bool = True
                        ) -> CorruptCacheError:
  """A ``CorruptCacheError`` for a DataLossError raised while reading the TFRecords ``paths``
  (``cache``: all of them are token cache files, which pipelines.tokenize can rewrite)."""
  what, fix = (("the token cache", " Rerun pipelines.tokenize for this data directory.") if cache
               else ("TFRecord input", ""))
  problems = find_unreadable_files(sorted(set(paths)))
  if problems:
    return CorruptCacheError(f"Cannot read {what}: " + "; ".join(problems) + "." + fix)
  return CorruptCacheError(f"Cannot read {what} ({error}); every file of "
                           f"{len(set(paths))} checked reads to its end.")
