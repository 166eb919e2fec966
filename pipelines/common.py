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
import hashlib
import json
import logging
import os
import uuid
from typing import Any, Iterable, Iterator, Sequence

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


# ----------------------------------------------------------------------------- arguments


def parse_stage_args(
    description: str, argv: Sequence[str] | None, add_args=None
) -> tuple[argparse.Namespace, PipelineOptions]:
  """Parses the stage's own flags; everything else is handed to Beam as pipeline options."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--input", required=True, help="Input directory or file pattern.")
  parser.add_argument("--output_dir", required=True, help="Directory the stage writes.")
  parser.add_argument(
      "--num_shards", type=int, default=4, help="Number of output shards of kept documents."
  )
  parser.add_argument(
      "--num_reject_shards", type=int, default=1,
      help="Number of shards of rejected documents; raise it at scale (each shard is written by "
      "one worker).",
  )
  if add_args is not None:
    add_args(parser)
  args, beam_args = parser.parse_known_args(argv)
  return args, PipelineOptions(beam_args)


# ----------------------------------------------------------------------------- JSON lines


def dumps(record: Any) -> str:
  """The one JSON encoding used for every record, so that output bytes are reproducible."""
  return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def stable_hash(text: str) -> int:
  """A 64-bit hash that is the same on every worker and every run (unlike ``hash``)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def stage_input_files(input_path: str) -> list[str]:
  """The document shards of a finished stage directory (or the files matching a pattern)."""
  directory = input_path.rstrip("/")
  # Object stores have no directories: a stage directory is recognised by the files under it.
  is_directory = bool(FileSystems.match([directory + "/*"])[0].metadata_list) or (
      _is_local(directory) and os.path.isdir(directory))
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
  return files


class ReadDocs(beam.PTransform):
  """Reads a stage directory; lines that are not JSON objects with a text are counted as drops.

  Outputs a tagged PCollection: documents on the main output, ``(reason, record)`` on ``rejects``.
  """

  def __init__(self, input_path: str, stage: str):
    super().__init__()
    self._files = stage_input_files(input_path)
    self._stage = stage

  def expand(self, pbegin):
    lines = (
        pbegin
        | "Files" >> beam.Create(self._files)
        | "ReadLines" >> beam.io.ReadAllFromText()
    )
    return lines | "Parse" >> beam.ParDo(_ParseDoc(self._stage)).with_outputs(
        REJECTS_TAG, main="docs"
    )


class _ParseDoc(beam.DoFn):

  def __init__(self, stage: str):
    self._stage = stage

  def process(self, line: str):
    Metrics.counter(self._stage, "in").inc()
    try:
      doc = json.loads(line)
    except json.JSONDecodeError:
      yield reject(self._stage, "bad_json", {"id": "", "raw": line[:1000]})
      return
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or "id" not in doc:
      yield reject(self._stage, "bad_record", {"id": "", "raw": line[:1000]})
      return
    yield doc


def reject(stage: str, reason: str, doc: Doc, **details: Any) -> beam.pvalue.TaggedOutput:
  """Counts a dropped document and routes it to the stage's rejects output."""
  Metrics.counter(stage, f"dropped.{reason}").inc()
  record = {"id": doc.get("id", ""), "reason": reason, "doc": doc}
  if details:
    record["details"] = details
  return beam.pvalue.TaggedOutput(REJECTS_TAG, record)


def keep(stage: str, doc: Doc) -> Doc:
  """Counts a kept document (returns it, for ``yield keep(...)``)."""
  Metrics.counter(stage, "kept").inc()
  return doc


# ----------------------------------------------------------------------------- output


class WriteSortedShards(beam.PTransform):
  """Writes records to ``<directory>/<prefix>-XXXXX-of-NNNNN.jsonl``, each shard sorted by id.

  Records go to shard ``stable_hash(id) % num_shards``; empty shards are still written, so the
  set of files depends only on ``num_shards``.
  """

  def __init__(self, directory: str, prefix: str, num_shards: int):
    super().__init__()
    if num_shards < 1:
      raise StageError(f"num_shards must be at least 1, got {num_shards}.")
    self._directory = directory
    self._prefix = prefix
    self._num_shards = num_shards

  def expand(self, records):
    n = self._num_shards
    keyed = records | "KeyByShard" >> beam.Map(
        lambda r: (stable_hash(str(r.get("id", ""))) % n, dumps(r))
    )
    empty = keyed.pipeline | "AllShards" >> beam.Create([(i, None) for i in range(n)])
    return (
        (keyed, empty)
        | "Flatten" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.Map(self._write_shard)
    )

  def _write_shard(self, shard_and_lines):
    shard, lines = shard_and_lines
    rows = sorted((json.loads(line).get("id", ""), line) for line in lines if line is not None)
    path = shard_path(self._directory, self._prefix, shard, self._num_shards)
    with FileSystems.create(path) as f:
      for _, line in rows:
        f.write(line.encode("utf-8") + b"\n")
    return path


def shard_path(directory: str, prefix: str, shard: int, num_shards: int, ext: str = "jsonl") -> str:
  return FileSystems.join(directory, f"{prefix}-{shard:05d}-of-{num_shards:05d}.{ext}")


class WriteStageOutput(beam.PTransform):
  """Writes kept docs, rejects and ``stats.json`` for one stage into ``directory``.

  ``inputs`` is the PCollection of records that entered the stage (parse failures included), so
  the stats file can state the accounting identity from independent counts.
  """

  def __init__(self, directory: str, stage: str, num_shards: int, extra_stats=None,
               num_reject_shards: int = 1):
    super().__init__()
    self._directory = directory
    self._stage = stage
    self._num_shards = num_shards
    self._num_reject_shards = num_reject_shards
    self._extra_stats = extra_stats

  def expand(self, pcolls):
    num_in, kept, rejects = pcolls["in"], pcolls["kept"], pcolls["rejects"]
    kept | "WriteKept" >> WriteSortedShards(self._directory, DOCS_PREFIX, self._num_shards)
    rejects | "WriteRejects" >> WriteSortedShards(
        FileSystems.join(self._directory, REJECTS_DIR), REJECTS_TAG, self._num_reject_shards
    )
    counts = [
        num_in | "CountIn" >> beam.combiners.Count.Globally() | "TagIn" >> beam.Map(lambda n: ("in", n)),
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
    stats = make_stats(self._stage, items)
    with FileSystems.create(FileSystems.join(self._directory, STATS_FILE)) as f:
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
  written last, so a killed job never leaves a directory that the next stage would trust.
  """
  output_dir = output_dir.rstrip("/")
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
) -> dict[str, Any]:
  """Runs a document-in, document-out stage with the standard accounting.

  ``transform_fn(docs)`` takes the PCollection of parsed documents and returns a tagged result
  with a main output ``kept`` and a ``rejects`` output of records made by :func:`reject`.
  """
  logging.info("%s: %s -> %s", stage, args.input, args.output_dir)
  with atomic_output_dir(args.output_dir) as tmp_dir:
    with beam.Pipeline(options=options) as p:
      parsed = p | "Read" >> ReadDocs(args.input, stage)
      inputs = (parsed.docs, parsed[REJECTS_TAG]) | "AllInputs" >> beam.Flatten()
      result = transform_fn(parsed.docs)
      rejects = (parsed[REJECTS_TAG], result[REJECTS_TAG]) | "AllRejects" >> beam.Flatten()
      _ = {"in": inputs, "kept": result.kept, "rejects": rejects} | "Write" >> WriteStageOutput(
          tmp_dir, stage, args.num_shards,
          num_reject_shards=getattr(args, "num_reject_shards", 1),
      )
  stats = read_stats(args.output_dir)
  logging.info("%s: %s", stage, json.dumps(stats, sort_keys=True))
  return stats


def run_dofn_stage(
    stage: str, args: argparse.Namespace, options: PipelineOptions, label: str, dofn: beam.DoFn
) -> dict[str, Any]:
  """:func:`run_doc_stage` for the common case of one DoFn that keeps or rejects each document."""
  return run_doc_stage(
      stage, args, options,
      lambda docs: docs | label >> beam.ParDo(dofn).with_outputs(REJECTS_TAG, main="kept"),
  )
