"""Plumbing shared by every Beam job: arguments, record accounting and deterministic, atomic output.

Every stage follows the same contract (see docs/architecture.md):

* input: a directory written by the previous stage (``docs-XXXXX-of-NNNNN.jsonl`` shards and a
  ``_SUCCESS`` marker) or, for ``extract``, WARC files;
* output: kept documents as JSONL shards, rejected documents under ``rejects/`` with their reason,
  and ``stats.json`` with ``in == kept + sum(dropped.values())``;
* the same counts are Beam counters in the namespace of the stage (``in``, ``kept``,
  ``dropped.<reason>``), so they show up in the Dataflow UI;
* shards are sorted by document id and JSON is written with sorted keys, so a rerun gives
  byte-identical files whatever the runner's bundle order;
* everything is written to a temporary directory first and moved into place when the pipeline has
  finished; ``_SUCCESS`` is written last, and readers refuse a directory without it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

SUCCESS_MARKER = "_SUCCESS"
STATS_FILE = "stats.json"
DOCS_PREFIX = "docs"
REJECTS_DIR = "rejects"
REJECTS_TAG = "rejects"

Doc = dict[str, Any]


class StageError(RuntimeError):
  """A stage was given input it cannot use (missing, half written, malformed config)."""


# ----------------------------------------------------------------------------- error policy
#
# One rule for every DoFn and reader (docs/reliability.md): a failure caused by one element (a
# record, a response, a line) becomes a counted reject with a specific reason and the exception's
# type and message in the reject record; only configuration errors (StageError) and failures of
# the machine itself (MemoryError) fail the job. At web scale every kind of malformed input
# occurs, and on Dataflow an exception in a DoFn fails its bundle, then after retries the job.

JOB_ERRORS = (StageError, MemoryError)


def error_text(error: BaseException) -> str:
  """``Type: message`` of an exception, bounded, for reject records and fetch logs."""
  return f"{type(error).__name__}: {error}"[:500]


def per_element(stage: str, reason: str):
  """Decorates a ``DoFn.process``: an exception on one element becomes one ``reason`` reject.

  The outputs of an element are collected before any is emitted, so a failing element yields
  its reject and nothing else: the accounting identity holds whatever the element holds.
  """
  def decorate(process):
    @functools.wraps(process)
    def guarded(self, element, *args, **kwargs):
      try:
        outputs = list(process(self, element, *args, **kwargs) or ())
      except JOB_ERRORS:
        raise
      except Exception as e:  # pylint: disable=broad-except  # The policy above.
        outputs = [reject(stage, reason, element_as_doc(element), error=error_text(e))]
      yield from outputs
    return guarded
  return decorate


def element_as_doc(element: Any) -> Doc:
  """The element as a reject's ``doc``: itself if it is a document that can be written, else a
  bounded ``repr`` (what a reader needs to find the element again)."""
  if isinstance(element, tuple) and element and isinstance(element[0], dict):
    element = element[0]  # (doc, extra) pairs of tag-then-filter steps.
  if isinstance(element, dict):
    try:
      dumps(element).encode("utf-8")
      return element
    except (TypeError, ValueError, RecursionError):
      pass
    doc_id = element.get("id")
    return {"id": doc_id if isinstance(doc_id, str) else "", "raw": ascii(element)[:1000]}
  return {"id": "", "raw": ascii(element)[:1000]}


# ----------------------------------------------------------------------------- arguments


# ``--shard_layout``: how a document stage lays out its output shards.
BY_SIZE = "by_size"  # Shards sized from the data (--target_shard_bytes); documents shuffled by shard.
PER_INPUT = "per_input"  # Output shard i-of-N from input file i, no shuffle (pipelines/shardwise.py).
SHARD_LAYOUTS = (BY_SIZE, PER_INPUT)


def parse_stage_args(
    description: str, argv: Sequence[str] | None, add_args=None, per_input: bool = False
) -> tuple[argparse.Namespace, PipelineOptions]:
  """Parses the stage's own flags; everything else is handed to Beam as pipeline options.

  ``per_input``: whether the stage can run with ``--shard_layout=per_input``. The flag is defined
  for every stage (an unknown flag would reach Beam, which only warns), and a stage that cannot
  run that way refuses it here.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--input", required=True, help="Input directory or file pattern.")
  parser.add_argument("--output_dir", required=True, help="Directory the stage writes.")
  parser.add_argument(
      "--num_shards", type=int, default=0,
      help="Number of output shards of kept documents (default 0: from the data, see "
      "--target_shard_bytes).",
  )
  parser.add_argument(
      "--num_reject_shards", type=int, default=0,
      help="Number of shards of rejected documents (default 0: from the data).",
  )
  parser.add_argument(
      "--target_shard_bytes", type=int, default=DEFAULT_TARGET_SHARD_BYTES,
      help="Bytes of JSON per output shard when the shard count comes from the data.",
  )
  parser.add_argument(
      "--shard_layout", choices=SHARD_LAYOUTS, default=BY_SIZE,
      help=f"{BY_SIZE}: shards sized to --target_shard_bytes, documents shuffled by shard. "
      f"{PER_INPUT}: output shard i-of-N from input file i of N, no shuffle of documents, so a "
      "local run's memory does not grow with the number of input files (docs/scale.md, Memory).",
  )
  if add_args is not None:
    add_args(parser)
  args, beam_args = parser.parse_known_args(argv)
  if args.shard_layout == PER_INPUT and not per_input:
    parser.error(f"--shard_layout={PER_INPUT} is not supported by this stage.")
  return args, PipelineOptions(beam_args)


# ----------------------------------------------------------------------------- JSON lines


def dumps(record: Any) -> str:
  """The one JSON encoding used for every record, so that output bytes are reproducible."""
  return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def stable_hash(text: str) -> int:
  """A 64-bit hash that is the same on every worker and every run (unlike ``hash``)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


_SHARD_RE = re.compile(r"(.*)-(\d{5,})-of-(\d{5,})\.([a-z0-9.]+)$")


def check_shards_complete(files: Sequence[str], what: str, sep: str = "-") -> None:
  """Raises StageError unless every shard named by the files' ``-of-NNNNN`` is among them.

  A marker says the writer finished; it does not prove that every shard survived a copy or a
  partial delete. Files that do not follow the shard naming are refused too, and so is a shard
  index at or past its count. ``sep`` is what separates the prefix from the index: ``-`` for
  :func:`shard_path`'s names, ``.`` for the crawl's WARC files (``<prefix>.XXXXX-of-NNNNN.warc.gz``).
  """
  shard_re = _SHARD_RE if sep == "-" else re.compile(
      rf"(.*){re.escape(sep)}(\d{{5,}})-of-(\d{{5,}})\.([a-z0-9.]+)$")
  groups: dict[tuple[str, str, int], set[int]] = {}
  for path in files:
    match = shard_re.match(path)
    if not match:
      raise StageError(f"{what}: {path} is not named <prefix>{sep}XXXXX-of-NNNNN.<ext>.")
    prefix, index, total, ext = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if index >= total:
      raise StageError(f"{what}: {path} has shard index {index} >= its shard count {total}.")
    groups.setdefault((prefix, ext, total), set()).add(index)
  if len({(prefix, ext) for prefix, ext, _ in groups}) != len(groups):
    counts = sorted({total for _, _, total in groups})
    raise StageError(f"{what}: shards of different counts {counts} are mixed in one directory.")
  missing = [f"{prefix}{sep}{i:05d}-of-{total:05d}.{ext}"
             for (prefix, ext, total), present in sorted(groups.items())
             for i in range(total) if i not in present]
  if missing:
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    raise StageError(f"{what}: {len(missing)} shard(s) missing: {shown}.")


def stage_input_files(input_path: str) -> list[str]:
  """The document shards of a finished stage directory (or the files matching a pattern).

  A stage directory must hold ``_SUCCESS`` and every shard its ``-of-NNNNN`` names
  (:func:`check_shards_complete`); :class:`ReadDocs` also checks the line count against the
  ``kept`` of its ``stats.json``.
  """
  directory = input_path.rstrip("/")
  # Object stores have no directories: a stage directory is recognised by the files under it.
  is_directory = is_stage_directory(directory)
  marker = FileSystems.join(directory, SUCCESS_MARKER)
  if is_directory:
    if not FileSystems.exists(marker):
      raise StageError(
          f"{input_path} has no {SUCCESS_MARKER} marker: the stage that writes it did not finish."
      )
    pattern = FileSystems.join(directory, f"{DOCS_PREFIX}-*.jsonl")
  else:
    pattern = input_path  # A single file or a glob.
  files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not files:
    raise StageError(f"No input files match {pattern}.")
  if is_directory:
    check_shards_complete(files, input_path)
  return files


def is_stage_directory(path: str) -> bool:
  directory = path.rstrip("/")
  return bool(FileSystems.match([directory + "/*"])[0].metadata_list) or (
      _is_local(directory) and os.path.isdir(directory))


def expected_kept(input_path: str) -> int | None:
  """``kept`` of a stage directory's ``stats.json`` (None without one: a hand-made directory)."""
  directory = input_path.rstrip("/")
  if not is_stage_directory(directory) or not FileSystems.exists(
      FileSystems.join(directory, STATS_FILE)):
    return None
  try:
    kept = read_stats(directory)["kept"]
  except (ValueError, KeyError, TypeError) as e:
    raise StageError(f"{directory}/{STATS_FILE} is unreadable: {error_text(e)}") from None
  if not isinstance(kept, int):
    raise StageError(f"{directory}/{STATS_FILE} has a non-integer kept: {kept!r}")
  return kept


def check_line_count(count: int, input_path: str, kept: int) -> None:
  if count != kept:
    raise StageError(
        f"{input_path}: {count} document lines, but its {STATS_FILE} says the stage kept {kept}; "
        "a shard is truncated or was replaced."
    )


class ReadDocs(beam.PTransform):
  """Reads a stage directory; lines that are not valid documents are counted as drops.

  Outputs a tagged PCollection: documents on the main output, reject records on ``rejects``.
  Lines are read as bytes, so invalid UTF-8 is one ``bad_record``, not a failed reader.
  """

  def __init__(self, input_path: str, stage: str):
    super().__init__()
    self._input_path = input_path
    self._files = stage_input_files(input_path)
    self._expected = expected_kept(input_path)
    self._stage = stage

  def expand(self, pbegin):
    lines = (
        pbegin
        | "Files" >> beam.Create(self._files)
        | "ReadLines" >> beam.io.ReadAllFromText(coder=beam.coders.BytesCoder())
    )
    if self._expected is not None:
      _ = (lines
           | "CountLines" >> beam.combiners.Count.Globally()
           | "CheckCount" >> beam.Map(check_line_count, self._input_path, self._expected))
    return lines | "Parse" >> beam.ParDo(_ParseDoc(self._stage)).with_outputs(
        REJECTS_TAG, main="docs"
    )


def parse_doc(line: bytes | str) -> tuple[Doc | None, str, str]:
  """``(doc, "", "")`` for a valid document line, else ``(None, reason, error)``.

  Valid: a JSON object with a string ``id`` and ``text``, ``scores``/``pii`` (if present) JSON
  objects, and nothing that cannot be written back as UTF-8 (a lone surrogate escape).
  """
  try:
    text = line.decode("utf-8") if isinstance(line, bytes) else line
  except UnicodeDecodeError as e:
    return None, "bad_record", error_text(e)
  try:
    doc = json.loads(text)
  except (ValueError, RecursionError) as e:
    return None, "bad_json", error_text(e)
  if not isinstance(doc, dict):
    return None, "bad_record", f"a JSON {type(doc).__name__}, not an object"
  for field in ("id", "text"):
    if not isinstance(doc.get(field), str):
      return None, "bad_record", f"{field!r} is {type(doc.get(field)).__name__}, not a string"
  for field in ("scores", "pii"):
    if field in doc and not isinstance(doc[field], dict):
      return None, "bad_record", f"{field!r} is {type(doc[field]).__name__}, not an object"
  # Strings decoded from valid UTF-8 hold a lone surrogate only through a JSON "\uD8xx" escape,
  # and only deep nesting makes encoding recurse: lines with neither (nearly all) skip re-encoding,
  # which cost as much as the parse (docs/benchmarks.md, tokenize section).
  if "\\u" in text or text.count("[") + text.count("{") > _NESTING_CHECKED_ABOVE:
    try:
      dumps(doc).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as e:
      return None, "bad_record", error_text(e)
  return doc, "", ""


_NESTING_CHECKED_ABOVE = 64  # Brackets in a line above which parse_doc re-encodes it to check.


# ----------------------------------------------------------------------------- progress
#
# A stage's documents done, while it runs, for the workflow (workflow/progress.py): each worker
# process prints ``progress <stage> docs <n> worker <pid>`` lines, ``n`` the documents that process
# has read so far, at most one per PROGRESS_INTERVAL_S within a bundle and one when it ends. A
# worker counts only its own share (DirectRunner threads or processes, portable-runner workers);
# the reader sums the latest count of each worker. On Dataflow the lines only reach the worker
# logs: there the ``in`` counter (a Beam metric) is what the UI shows.

PROGRESS_INTERVAL_S = 5.0
_progress_lock = threading.Lock()
# (stage, job) -> [documents read in this process, count last shown, when shown]; ``job`` tells
# apart the jobs that one process runs (tests, the DirectRunner in a notebook).
_progress: dict[tuple[str, str], list] = {}


def progress_line(stage: str, docs: int, worker: int | str | None = None) -> str:
  return f"progress {stage} docs {docs} worker {os.getpid() if worker is None else worker}"


def count_progress(stage: str, job: str, docs: int, final: bool = False) -> None:
  """Adds ``docs`` to this process's count of ``stage`` in ``job``; prints it when due (or
  ``final``)."""
  with _progress_lock:
    entry = _progress.setdefault((stage, job), [0, 0, time.monotonic()])
    entry[0] += docs
    now = time.monotonic()
    if entry[0] == entry[1] or not (final or now - entry[2] >= PROGRESS_INTERVAL_S):
      return
    entry[1], entry[2] = entry[0], now
    line = progress_line(stage, entry[0])
  sys.stderr.write(line + "\n")  # One write: worker processes share the job's stderr.
  sys.stderr.flush()


class CountProgress(beam.DoFn):
  """Counts the elements going through for :func:`count_progress`, passing them on unchanged.

  Counts in a local variable and hands them on every PROGRESS_BATCH elements, so that the lock
  and clock cost nothing per element; the count is printed at the end of every bundle (batch
  runners make few, large bundles), so the last line is out before the job ends.
  """

  PROGRESS_BATCH = 64

  def __init__(self, stage: str):
    self._stage = stage
    self._job = uuid.uuid4().hex  # Made once, at pipeline construction: the same on every worker.
    self._pending = 0

  def count(self) -> None:
    self._pending += 1
    if self._pending >= self.PROGRESS_BATCH:
      count_progress(self._stage, self._job, self._pending)
      self._pending = 0

  def process(self, element):
    self.count()
    yield element

  def finish_bundle(self):  # Not throttled: the portable runner tears DoFns down after the job.
    count_progress(self._stage, self._job, self._pending, final=True)
    self._pending = 0

  def teardown(self):
    count_progress(self._stage, self._job, self._pending, final=True)
    self._pending = 0


class _ParseDoc(CountProgress):
  """Parses one line; counts it for progress (the reader's own counting step)."""

  def __init__(self, stage: str):
    super().__init__(stage)
    self._in = Metrics.counter(stage, "in")

  def process(self, line: bytes):
    self._in.inc()
    self.count()
    yield parse_line(self._stage, line)


def parse_line(stage: str, line: bytes | str) -> Doc | beam.pvalue.TaggedOutput:
  """A line of a stage shard as a document, or as a counted reject (:func:`parse_doc`'s reason)."""
  doc, reason, error = parse_doc(line)
  if doc is None:
    raw = line.decode("utf-8", "backslashreplace") if isinstance(line, bytes) else line
    return reject(stage, reason, {"id": "", "raw": raw[:1000]}, error=error)
  return doc


def reject(stage: str, reason: str, doc: Doc, **details: Any) -> beam.pvalue.TaggedOutput:
  """Counts a dropped document and routes it to the stage's rejects output."""
  Metrics.counter(stage, f"dropped.{reason}").inc()
  doc_id = doc.get("id", "")
  record = {"id": doc_id if isinstance(doc_id, str) else "", "reason": reason, "doc": doc}
  if details:
    record["details"] = details
  try:
    dumps(record).encode("utf-8")
  except (UnicodeEncodeError, TypeError, ValueError, RecursionError):
    record = _writable(record)  # A reject must never fail the writer (docs/reliability.md).
  return beam.pvalue.TaggedOutput(REJECTS_TAG, record)


def _writable(value: Any, depth: int = 0) -> Any:
  """A copy of a reject record that can be written: lone surrogates escaped as ``\\udXXX``,
  anything that is not JSON as its ``ascii`` repr, nesting bounded."""
  if isinstance(value, str):
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
  if value is None or isinstance(value, (bool, int, float)):
    return value
  if depth > 20:
    return ascii(value)[:1000]
  if isinstance(value, dict):
    return {_writable(str(k)): _writable(v, depth + 1) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_writable(v, depth + 1) for v in value]
  return ascii(value)[:1000]


def keep(stage: str, doc: Doc) -> Doc:
  """Counts a kept document (returns it, for ``yield keep(...)``)."""
  Metrics.counter(stage, "kept").inc()
  return doc


# ----------------------------------------------------------------------------- output


# Output shards follow the data: ~128 MiB of JSON each unless a count is given. Small enough for
# one worker to sort one shard in memory, large enough that a Common Crawl snapshot is thousands
# of files, not millions.
DEFAULT_TARGET_SHARD_BYTES = 128 * 2**20


def total_bytes(paths: Sequence[str]) -> int:
  """The summed size of files (or patterns), from the filesystem's metadata."""
  return sum(metadata.size_in_bytes for result in FileSystems.match(list(paths))
             for metadata in result.metadata_list)


def shards_for(total_bytes: int, target_shard_bytes: int) -> int:
  """The shard count that keeps every shard near ``target_shard_bytes`` (at least 1)."""
  return max(1, -(-total_bytes // target_shard_bytes))


class ShardCount(beam.PTransform):
  """Records -> a one-element PCollection, their shard count: ``num_shards``, or with 0 the count
  that keeps every shard near ``target_shard_bytes`` of the records' ``size`` (:func:`shards_for`
  over their sum). The one rule behind every shard count from the data."""

  def __init__(self, num_shards: int, target_shard_bytes: int, size: Callable[[Any], int]):
    super().__init__()
    if num_shards < 0:
      raise StageError(f"num_shards must be at least 1 (or 0: from the data), got {num_shards}.")
    if target_shard_bytes < 1:
      raise StageError(f"target_shard_bytes must be positive, got {target_shard_bytes}.")
    self._num_shards = num_shards
    self._target_shard_bytes = target_shard_bytes
    self._size = size

  def expand(self, records):
    if self._num_shards:
      return records.pipeline | "FixedCount" >> beam.Create([self._num_shards])
    return (records
            | "Bytes" >> beam.Map(self._size)
            | "TotalBytes" >> beam.CombineGlobally(sum)
            | "ShardCount" >> beam.Map(shards_for, self._target_shard_bytes))


class WriteSortedShards(beam.PTransform):
  """Writes records to ``<directory>/<prefix>-XXXXX-of-NNNNN.jsonl``, each shard sorted by id.

  ``num_shards`` fixes the count; 0 derives it from the encoded size of the records
  (:func:`shards_for` over :func:`line_bytes`). Records go to shard :func:`row_shard`
  (``stable_hash(id) % num_shards``); empty shards are still written, so the set of files depends
  only on the count. A worker holds one shard at a time, as (id, line) pairs: lines are encoded
  once and never parsed again to be sorted. :func:`write_merged_rows` writes the same files from
  rows already in order.
  """

  def __init__(self, directory: str, prefix: str, num_shards: int = 0,
               target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES):
    super().__init__()
    self._count = ShardCount(num_shards, target_shard_bytes, lambda row: line_bytes(row[1]))
    self._directory = directory
    self._prefix = prefix

  def expand(self, records):
    rows = records | "Encode" >> beam.Map(encode_row)
    count = rows | "Count" >> self._count
    n = beam.pvalue.AsSingleton(count)
    keyed = rows | "KeyByShard" >> beam.Map(lambda row, n: (row_shard(row[0], n), row), n)
    empty = count | "AllShards" >> beam.FlatMap(lambda n: [(i, None) for i in range(n)])
    return (
        (keyed, empty)
        | "Flatten" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.Map(self._write_shard, n)
    )

  def _write_shard(self, shard_and_rows, num_shards: int):
    shard, rows = shard_and_rows
    path = shard_path(self._directory, self._prefix, shard, num_shards)
    return write_sorted_rows(path, [row for row in rows if row is not None])


def encode_row(record: dict[str, Any]) -> tuple[str, str]:
  """``(id, line)``: a record encoded once, with the key its shard is sorted by."""
  return str(record.get("id", "")), dumps(record)


def line_bytes(line: str) -> int:
  """The bytes a row's line takes in its shard, newline included: what a shard count from the data
  (:class:`WriteSortedShards`, and the per-input layouts' rejects) sums."""
  return len(line.encode("utf-8")) + 1


def row_shard(record_id: str, num_shards: int) -> int:
  """The shard of a row among :class:`WriteSortedShards`' ``num_shards`` (one rule for every
  writer of that layout)."""
  return stable_hash(record_id) % num_shards


def write_merged_rows(directory: str, prefix: str, num_shards: int,
                      rows: Iterable[tuple[str, bytes]]) -> list[str]:
  """Writes :class:`WriteSortedShards`' files (the same bytes) from ``(id, line)`` rows that come
  already in (id, line) order, e.g. from a merge of spill files: one pass, every shard's file open,
  nothing held. Rows out of order are a StageError, not other bytes. Open files (each with its
  upload buffer on an object store) grow with ``num_shards``: at the default 128 MiB per shard, 80
  files hold 10 GiB, which is why it serves the rejects, a small share of a stage's output."""
  paths = [shard_path(directory, prefix, shard, num_shards) for shard in range(num_shards)]
  with contextlib.ExitStack() as stack:
    files = [stack.enter_context(FileSystems.create(path)) for path in paths]
    previous = None
    for row in rows:
      if previous is not None and row < previous:
        raise StageError(f"{directory}: row {row[0]!r} after {previous[0]!r}, out of (id, line) order.")
      previous = row
      files[row_shard(row[0], num_shards)].write(row[1] + b"\n")
  return paths


def write_sorted_rows(path: str, rows: list[tuple[str, str]]) -> str:
  """Writes the lines of ``(id, line)`` rows sorted by id (then line): one shard's bytes, the same
  whatever order the rows came in."""
  rows.sort()
  with FileSystems.create(path) as f:
    for _, line in rows:
      f.write(line.encode("utf-8") + b"\n")
  return path


def shard_path(directory: str, prefix: str, shard: int, num_shards: int, ext: str = "jsonl") -> str:
  return FileSystems.join(directory, f"{prefix}-{shard:05d}-of-{num_shards:05d}.{ext}")


class WriteStageOutput(beam.PTransform):
  """Writes kept docs, rejects and ``stats.json`` for one stage into ``directory``.

  ``inputs`` is the PCollection (or a tuple of PCollections, see :class:`CountAll`) of records
  that entered the stage (parse failures included), so the stats file can state the accounting
  identity from independent counts.
  """

  def __init__(self, directory: str, stage: str, num_shards: int = 0, extra_stats=None,
               num_reject_shards: int = 0, write_kept: bool = True,
               target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES):
    super().__init__()
    self._target_shard_bytes = target_shard_bytes
    self._write_kept = write_kept  # False inside the fused filter job: kept docs flow on unwritten.
    self._directory = directory
    self._stage = stage
    self._num_shards = num_shards
    self._num_reject_shards = num_reject_shards
    self._extra_stats = extra_stats

  def expand(self, pcolls):
    num_in, kept, rejects = pcolls["in"], pcolls["kept"], pcolls["rejects"]
    if self._write_kept:
      kept | "WriteKept" >> WriteSortedShards(self._directory, DOCS_PREFIX, self._num_shards,
                                              self._target_shard_bytes)
    rejects | "WriteRejects" >> WriteSortedShards(
        FileSystems.join(self._directory, REJECTS_DIR), REJECTS_TAG, self._num_reject_shards,
        self._target_shard_bytes)
    counts = [
        num_in | "CountIn" >> CountAll() | "TagIn" >> beam.Map(lambda n: ("in", n)),
        kept | "CountKept" >> beam.combiners.Count.Globally() | "TagKept" >> beam.Map(lambda n: ("kept", n)),
        rejects
        | "Reason" >> beam.Map(lambda r: ("dropped." + r["reason"], 1))
        | "CountReasons" >> beam.CombinePerKey(sum),
    ]
    if self._extra_stats is not None:
      counts.append(self._extra_stats)
    stats = (
        counts
        | "FlattenCounts" >> beam.Flatten()
        | "AllCounts" >> beam.combiners.ToList()
        | "WriteStats" >> beam.Map(self._write_stats)
    )
    return stats

  def _write_stats(self, items):
    return write_stats(self._directory, make_stats(self._stage, items))


class CountAll(beam.PTransform):
  """The number of elements of a PCollection or of a tuple of them, without flattening them.

  A Flatten of the reader's documents and its rejects just to count them makes the DirectRunner
  encode every document into a buffer and decode it again (the Flatten is not fused); counting
  each input apart and adding the counts costs a combiner step per element.
  """

  def expand(self, pcolls):
    parts = list(pcolls) if isinstance(pcolls, (tuple, list)) else [pcolls]
    counts = [part | f"Count{i}" >> beam.combiners.Count.Globally() for i, part in enumerate(parts)]
    return counts | "Counts" >> beam.Flatten() | "Sum" >> beam.CombineGlobally(sum)


def write_stats(directory: str, stats: dict[str, Any]) -> dict[str, Any]:
  """Writes ``<directory>/stats.json`` (the one format of every stage's stats file)."""
  with FileSystems.create(FileSystems.join(directory, STATS_FILE)) as f:
    f.write((json.dumps(stats, sort_keys=True, indent=2) + "\n").encode("utf-8"))
  return stats


def make_stats(stage: str, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
  """Builds the stats record and checks that no record went missing."""
  stats: dict[str, Any] = {"stage": stage, "in": 0, "kept": 0, "dropped": {}}
  for key, value in items:
    if key.startswith("dropped."):
      stats["dropped"][key[len("dropped."):]] = value
    else:
      stats[key] = value
  stats["dropped_total"] = sum(stats["dropped"].values())
  if stats["in"] != stats["kept"] + stats["dropped_total"]:
    raise StageError(
        f"{stage}: accounting mismatch, in={stats['in']} kept={stats['kept']} "
        f"dropped={stats['dropped']}"
    )
  return stats


@contextlib.contextmanager
def atomic_output_dir(output_dir: str) -> Iterator[str]:
  """Yields a temporary directory and, if the body succeeds, moves it onto ``output_dir``.

  The previous output (if any) is removed only after the new one is complete, and ``_SUCCESS`` is
  written last, so a killed job never leaves a directory that the next stage would trust. What a
  killed job did leave (``<output_dir>.tmp-*``) is removed when the next job for the same output
  starts: one output directory is written by one job at a time (the workflow locks its run).
  """
  output_dir = output_dir.rstrip("/")
  for stale in stale_tmp_dirs(output_dir):
    logging.warning("Removing %s, left by a job that did not finish.", stale)
    _delete_tree(stale)
  tmp_dir = f"{output_dir}.tmp-{uuid.uuid4().hex[:8]}"
  FileSystems.mkdirs(tmp_dir)
  try:
    yield tmp_dir
  except BaseException:
    _delete_tree(tmp_dir)
    raise
  _delete_tree(output_dir)
  if _is_local(output_dir):
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    os.rename(tmp_dir, output_dir)
  else:
    sources = sorted(m.path for m in FileSystems.match([tmp_dir + "/**"])[0].metadata_list)
    FileSystems.rename(sources, [output_dir + s[len(tmp_dir):] for s in sources])
    _delete_tree(tmp_dir)
  with FileSystems.create(FileSystems.join(output_dir, SUCCESS_MARKER)) as f:
    f.write(b"")


def stale_tmp_dirs(output_dir: str) -> list[str]:
  """The temporary directories that unfinished jobs writing ``output_dir`` left behind."""
  pattern = re.compile(re.escape(output_dir) + r"\.tmp-[0-9a-f]{8}$")
  if _is_local(output_dir):
    parent = os.path.dirname(os.path.abspath(output_dir))
    names = os.listdir(parent) if os.path.isdir(parent) else []
    candidates = [os.path.join(os.path.dirname(output_dir), name) for name in names]
  else:  # Object stores: the files under <output_dir>.tmp-*/, grouped by directory.
    found = FileSystems.match([output_dir + ".tmp-*/**"])[0].metadata_list
    candidates = {m.path[:len(output_dir) + 13] for m in found}
  return sorted(path for path in candidates if pattern.match(path))


def _is_local(path: str) -> bool:
  return "://" not in path


def _delete_tree(path: str) -> None:
  if FileSystems.exists(path):
    FileSystems.delete([path])


def read_stats(stage_dir: str) -> dict[str, Any]:
  with FileSystems.open(FileSystems.join(stage_dir, STATS_FILE)) as f:
    return json.loads(f.read().decode("utf-8"))


def run_doc_stage(
    stage: str,
    args: argparse.Namespace,
    options: PipelineOptions,
    transform_fn,
    steps: Sequence[beam.DoFn] | None = None,
) -> dict[str, Any]:
  """Runs a document-in, document-out stage with the standard accounting.

  ``transform_fn(docs)`` takes the PCollection of parsed documents and returns a tagged result
  with a main output ``kept`` and a ``rejects`` output of records made by :func:`reject`.
  ``steps`` are the stage's DoFns in order, what ``--shard_layout=per_input`` runs on each input
  file instead (pipelines/shardwise.py); the two must be the same DoFns.
  """
  if getattr(args, "shard_layout", BY_SIZE) == PER_INPUT:
    if steps is None:
      raise StageError(f"{stage}: --shard_layout={PER_INPUT} is not supported by this stage.")
    from pipelines import shardwise  # pylint: disable=import-outside-toplevel  # It imports this.
    return shardwise.run_doc_stage(stage, args, options, steps)
  logging.info("%s: %s -> %s", stage, args.input, args.output_dir)
  with atomic_output_dir(args.output_dir) as tmp_dir:
    with beam.Pipeline(options=options) as p:
      parsed = p | "Read" >> ReadDocs(args.input, stage)
      inputs = (parsed.docs, parsed[REJECTS_TAG])  # Counted apart: CountAll.
      result = transform_fn(parsed.docs)
      rejects = (parsed[REJECTS_TAG], result[REJECTS_TAG]) | "AllRejects" >> beam.Flatten()
      _ = {"in": inputs, "kept": result["kept"], "rejects": rejects} | "Write" >> WriteStageOutput(
          tmp_dir, stage, args.num_shards,
          num_reject_shards=getattr(args, "num_reject_shards", 0),
          target_shard_bytes=getattr(args, "target_shard_bytes", DEFAULT_TARGET_SHARD_BYTES),
      )
  stats = read_stats(args.output_dir)
  logging.info("%s: %s", stage, json.dumps(stats, sort_keys=True))
  return stats


def dofn_transform(label: str, dofn: beam.DoFn):
  """The ``transform_fn`` of a stage that is one DoFn keeping or rejecting each document."""
  return lambda docs: docs | label >> beam.ParDo(dofn).with_outputs(REJECTS_TAG, main="kept")
