"""The tokenize job in the per-input layout (``--shard_layout=per_input``): the same cache, byte for
byte, shuffled through spill files instead of a Beam GroupByKey.

Why: the default layout groups every serialized Example by ``(task, split, shard)`` in a Beam
shuffle, which Beam's local runner holds in memory, so a local run's peak grows with the input
(docs/scale.md, Memory). Here (pipelines/spill.py is the file format):

1. one DoFn call per input file ``i`` reads its lines (``shardwise.ReadDocShard``: a malformed line
   is a counted reject), encodes them in batches with the default layout's own ``EncodeDocs`` and
   writes *one* spill file holding that file's records: partition = ``(split, shard)``
   (:func:`partition_of`), key = ``task NUL id``, value = ``(source, num_tokens, Example)``
   (:func:`encode_value`); the file's rejects go to one more partition, key = id, value = the
   reject line. It emits the partitions its file holds and its counts, among them the rejects'
   line bytes (:data:`REJECT_BYTES`, what ``common.WriteSortedShards`` sums for its shard count).
2. one DoFn call per partition streams :func:`spill.merge_partition` over the spill files that hold
   it straight into the TFRecord writer (``tokenize.write_shard``, the default layout's writer and
   counts), one task after the other; the rejects partition becomes the default layout's rejects
   shards (``common.write_merged_rows``: their count from the summed bytes, each record streamed
   to its shard's file, all of them open). Nothing holds a shard: a worker holds one input file's
   records in step 1 and one record per spill file in step 2.

The task names come from the documents' sources, so they are only known after encoding; that is
why a partition is a ``(split, shard)`` of every task and the task leads the key, not a partition
per ``(task, split, shard)``. The spill encoding sorts as the default layout's
``(id, source, num_tokens, Example)`` tuples do (:func:`encode_value`), so the merge gives each
shard in the order ``sorted`` gives it, duplicate ids included; ``write_shard`` checks that order,
so a disagreement fails the job instead of writing other bytes.

Ordering of the two steps: step 2's input is step 1's output grouped by partition
(``GroupByKey`` in the global window with the default trigger), which Beam emits only once the
watermark passes the end of the window, i.e. once every step-1 bundle has committed, and a bundle
commits only after its ``process`` call returned, after its spill file and index were written. A
retried step-1 call rewrites the same spill file with the same bytes. The spill files live under
the job's temporary output directory and are deleted when the job succeeds (:meth:`SpillJob.
delete_spills`); a failed job's temporary directory is removed whole.
"""

from __future__ import annotations

import collections
import itertools
import struct
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from pipelines import shardwise
from pipelines import spill
from pipelines import tokenize

SPILL_DIR = "_spill"  # Under the job's temporary output directory, never in the final output.
COUNTS_TAG = "counts"
# A step-1 count that is not a stat: the rejects' line bytes, from which their shard count comes.
REJECT_BYTES = "_reject_bytes"
_NUM_TOKENS = struct.Struct(">Q")


# ----------------------------------------------------------------------------- spill records


def partition_of(split: str, shard: int, shards: dict[str, int]) -> int:
  """Train shards first, then validation shards; :func:`rejects_partition` after them."""
  return shard if split == "train" else shards["train"] + shard


def rejects_partition(shards: dict[str, int]) -> int:
  return shards["train"] + shards["validation"]


def split_and_shard(partition: int, shards: dict[str, int]) -> tuple[str, int]:
  if partition < shards["train"]:
    return "train", partition
  return "validation", partition - shards["train"]


def encode_key(task: str, doc_id: str) -> bytes:
  """``task NUL id``: a task name has no NUL (``tokenize.task_name``), so byte order is
  (task, id) order, and UTF-8 byte order is code point order, as ``str`` sorts."""
  return task.encode("utf-8") + b"\x00" + doc_id.encode("utf-8")


def decode_key(key: bytes) -> tuple[str, str]:
  task, _, doc_id = key.partition(b"\x00")
  return task.decode("utf-8"), doc_id.decode("utf-8")


def encode_value(source: str, num_tokens: int, example: bytes) -> bytes:
  """``(source, num_tokens, Example)`` as bytes that sort as the tuple does: the source as
  :func:`spill.encode_text` (a source sorts before those it is a prefix of), the token count as 8
  big-endian bytes, the Example last, as is."""
  return spill.encode_text(source) + _NUM_TOKENS.pack(num_tokens) + example


def decode_value(value: bytes) -> tuple[str, int, bytes]:
  source, end = spill.decode_text(value)
  (num_tokens,) = _NUM_TOKENS.unpack_from(value, end)
  return source, num_tokens, value[end + _NUM_TOKENS.size:]


def spill_path(spill_dir: str, index: int, num_files: int) -> str:
  return FileSystems.join(spill_dir, f"spill-{index:05d}-of-{num_files:05d}")


# ----------------------------------------------------------------------------- step 1: spill


class SpillInputFile(beam.DoFn):
  """``(i, path)`` -> input file i's records in one spill file; emits ``(partition, spill path)``
  per partition the file holds, and its ``(name, n)`` counts on ``counts``."""

  def __init__(self, encode: tokenize.EncodeDocs, shards: dict[str, int], spill_dir: str,
               num_files: int, batch_size: int):
    self._read = shardwise.ReadDocShard(tokenize.STAGE)
    self._encode = encode
    self._shards = shards
    self._spill_dir = spill_dir
    self._num_files = num_files
    self._batch_size = batch_size
    self._progress = common.CountProgress(tokenize.STAGE)  # The workflow's progress lines.

  def setup(self):
    self._encode.setup()

  def process(self, indexed_path: tuple[int, str]):
    index, path = indexed_path
    rows: list[spill.Row] = []
    counts: collections.Counter = collections.Counter()
    batch: list[common.Doc] = []
    for item in self._read.process(path):
      counts["in"] += 1
      self._progress.count()
      if isinstance(item, beam.pvalue.TaggedOutput):
        self._add_reject(item, rows, counts)
        continue
      batch.append(item)
      if len(batch) == self._batch_size:
        self._encode_batch(batch, rows, counts)
        batch = []
    if batch:
      self._encode_batch(batch, rows, counts)
    target = spill_path(self._spill_dir, index, self._num_files)
    spill_index = spill.write(target, rows)
    del rows
    for partition in sorted(spill_index["partitions"], key=int):
      yield int(partition), target
    for name, n in sorted(counts.items()):
      yield beam.pvalue.TaggedOutput(COUNTS_TAG, (name, n))

  def _encode_batch(self, batch: list[common.Doc], rows: list, counts: collections.Counter) -> None:
    for output in self._encode.process(batch):
      if isinstance(output, beam.pvalue.TaggedOutput):
        self._add_reject(output, rows, counts)
        continue
      (task, split, shard), group = output
      partition = partition_of(split, shard, self._shards)
      counts["kept"] += len(group)
      rows.extend((partition, encode_key(task, doc_id), encode_value(source, num_tokens, example))
                  for doc_id, source, num_tokens, example in group)

  def _add_reject(self, output: beam.pvalue.TaggedOutput, rows: list, counts: collections.Counter):
    if output.tag != common.REJECTS_TAG:
      raise common.StageError(f"Unknown output tag {output.tag!r} in the tokenize job.")
    doc_id, line = common.encode_row(output.value)
    rows.append((rejects_partition(self._shards), doc_id.encode("utf-8"), line.encode("utf-8")))
    counts["dropped." + output.value["reason"]] += 1
    counts[REJECT_BYTES] += common.line_bytes(line)

  def finish_bundle(self):
    self._progress.finish_bundle()

  def teardown(self):
    self._encode.teardown()
    self._progress.teardown()


# ----------------------------------------------------------------------------- step 2: merge


class MergePartition(beam.DoFn):
  """``(partition, spill paths)`` -> the partition's TFRecord shards (one per task), emitting
  ``(task, shard counts)`` as ``tokenize.WriteShard`` does; or the rejects shards, whose count is
  ``num_reject_shards`` or (0) from ``reject_bytes``, the side input of :func:`split_reject_bytes`."""

  def __init__(self, cache_dir: str, rejects_dir: str, shards: dict[str, int],
               num_reject_shards: int = 0,
               target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES):
    self._cache_dir = cache_dir
    self._rejects_dir = rejects_dir
    self._shards = shards
    self._num_reject_shards = num_reject_shards
    self._target_shard_bytes = target_shard_bytes

  def process(self, element: tuple[int, Any], reject_bytes: int | None = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    partition, paths = element
    paths = sorted({path for path in paths if path is not None})
    merged = spill.merge_partition(paths, partition)
    if partition == rejects_partition(self._shards):
      self._write_rejects(merged, reject_bytes)
      return
    split, shard = split_and_shard(partition, self._shards)
    records = (_shard_record(key, value) for key, value in merged)
    for task, task_records in itertools.groupby(records, key=lambda r: r[0]):
      yield task, tokenize.write_shard(self._cache_dir, task, split, shard, self._shards[split],
                                       (record for _, record in task_records))

  def _write_rejects(self, merged: Iterator[tuple[bytes, bytes]], reject_bytes: int | None) -> None:
    """The default layout's rejects shards (``common.WriteSortedShards``): the same count from the
    same bytes, and rows in (id, line) order, which the merge's (key, value) order is."""
    if not self._num_reject_shards and reject_bytes is None:
      raise common.StageError("The rejects partition needs the rejects' bytes (or a fixed count) "
                              "for its shard count.")
    num_shards = self._num_reject_shards or common.shards_for(reject_bytes, self._target_shard_bytes)
    common.write_merged_rows(self._rejects_dir, common.REJECTS_TAG, num_shards,
                             ((key.decode("utf-8"), line) for key, line in merged))


def split_reject_bytes(counts):
  """Summed ``(name, n)`` counts -> ``(the stats' counts, the rejects' line bytes as a singleton
  side input)``: :data:`REJECT_BYTES` is not a stat (the default layout has none)."""
  stats = counts | "StatCounts" >> beam.Filter(lambda item: item[0] != REJECT_BYTES)
  total = (counts
           | "RejectBytes" >> beam.Filter(lambda item: item[0] == REJECT_BYTES)
           | "RejectByteValues" >> beam.Values()
           | "TotalRejectBytes" >> beam.CombineGlobally(sum))
  return stats, beam.pvalue.AsSingleton(total)


def _shard_record(key: bytes, value: bytes) -> tuple[str, tokenize.ShardRecord]:
  task, doc_id = decode_key(key)
  return task, (doc_id, *decode_value(value))


# ----------------------------------------------------------------------------- the job


class SpillJob:
  """Builds the per-input layout's half of ``tokenize.tokenize`` and removes its spill files."""

  def __init__(self, input_path: str, tmp_dir: str, shards: dict[str, int],
               encode: tokenize.EncodeDocs, batch_size: int, num_reject_shards: int = 0,
               target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES):
    self._input_path = input_path
    self._files = common.stage_input_files(input_path)  # Every promised shard present.
    self._expected = common.expected_kept(input_path)
    self._tmp_dir = tmp_dir
    self._spill_dir = FileSystems.join(tmp_dir, SPILL_DIR)
    self._shards = shards
    self._encode = encode
    self._batch_size = batch_size
    self._num_reject_shards = num_reject_shards
    self._target_shard_bytes = target_shard_bytes

  def expand(self, p):
    """``(written, counts)`` as ``tokenize._encode_and_write`` returns them; writes the rejects."""
    FileSystems.mkdirs(self._spill_dir)
    spilled = (
        p
        | "Files" >> beam.Create(list(enumerate(self._files)))
        # Without it a runner fuses Create with the next step, and one worker reads every file.
        | "SpreadFiles" >> beam.Reshuffle()
        | "SpillInputFile" >> beam.ParDo(SpillInputFile(
            self._encode, self._shards, self._spill_dir, len(self._files), self._batch_size,
        )).with_outputs(COUNTS_TAG, main="partitions")
    )
    counts, reject_bytes = split_reject_bytes(
        spilled[COUNTS_TAG] | "SumCounts" >> beam.CombinePerKey(sum))
    # The rejects shards are written even when no file has a reject, as in the default layout.
    always = p | "RejectsPartition" >> beam.Create([(rejects_partition(self._shards), None)])
    written = (
        (spilled.partitions, always)
        | "AllPartitions" >> beam.Flatten()
        # Fires once every SpillInputFile bundle has committed (module docstring).
        | "SpillsByPartition" >> beam.GroupByKey()
        | "MergePartition" >> beam.ParDo(MergePartition(
            FileSystems.join(self._tmp_dir, tokenize.CACHE_DIR),
            FileSystems.join(self._tmp_dir, common.REJECTS_DIR), self._shards,
            self._num_reject_shards, self._target_shard_bytes), reject_bytes=reject_bytes)
    )
    if self._expected is not None:  # A truncated or replaced input shard (the default reader's check).
      _ = (counts
           | "CountsForCheck" >> beam.combiners.ToList()
           | "CheckCount" >> beam.Map(lambda items, expected, path: common.check_line_count(
               dict(items).get("in", 0), path, expected), self._expected, self._input_path))
    return written, [counts]

  def delete_spills(self) -> None:
    n = len(self._files)
    spill.delete(spill_path(self._spill_dir, i, n) for i in range(n))
    if FileSystems.exists(self._spill_dir):
      FileSystems.delete([self._spill_dir])
