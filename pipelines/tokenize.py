"""Tokenizes the deduplicated documents into seqio's cache layout, one cached Task per source.

    python -m pipelines.tokenize --input=<dedupe dir> --tokenizer=<tokenizer.model> \
        --output_dir=<data_dir> [--validation_fraction=0.05] [--num_shards=N] \
        [--num_validation_shards=N] [--num_reject_shards=N] [--target_shard_bytes=B] \
        [--shard_multiple=4] [--shard_layout=by_size|per_input]

For each source ``S`` the job writes ``<data_dir>/cache/gf_<S>/`` exactly as seqio's
``cache_tasks_main`` does, so ``seqio.Task.get_dataset(use_cached=True)`` reads it:

* ``<split>.tfrecord-XXXXX-of-NNNNN``: ``tf.train.Example`` with an int64 list ``targets`` (the
  document's tokens, no BOS/EOS: the Task adds EOS to a document's last chunk, the feature
  converter puts BOS in front of every segment's inputs) and a bytes ``id`` (the document id, for
  provenance; seqio passes extra features through and mixtures drop them);
* ``info.<split>.json`` (features, dtypes, number of shards) and ``stats.<split>.json``
  (``examples``, ``targets_tokens``, ``targets_max_tokens``), the same keys as seqio's
  ``beam_utils.GetInfo``/``GetStats``;
* ``COMPLETED``, which seqio looks for before it trusts a cache directory.

A document goes to the validation split when ``stable_hash("split/" + id)`` falls below
``validation_fraction`` of the hash range, and to shard ``stable_hash("shard/" + id) % N``: both
depend only on the id, so reruns, added sources and other documents never move a document. Hashing
balances the *number of documents* per shard, not their tokens: a shard's token total varies with
the lengths of the documents it happens to get (relative spread about ``cv / sqrt(documents per
shard)``, ``cv`` the coefficient of variation of document lengths), which is large for small data
(the demo's train shards hold 8.7k-23k tokens) and small at scale. ``sources.json`` reports
``max_shard_tokens``/``min_shard_tokens`` per split. Every shard is written even if empty, sorted by
id, so the files are byte-identical on rerun.

``<data_dir>`` also gets a copy of the tokenizer (``tokenizer.model``), ``sources.json`` (per
source: task name, quality tier, documents, tokens and ``chunks`` per split; the mixture rates come
from it), ``stats.json`` (``in == kept + dropped``), ``rejects/`` and ``_SUCCESS``.

``chunks`` maps a chunk length ``c`` to the number of examples the split yields when every document
is cut into chunks of at most ``c`` tokens, ``sum(ceil(n / c))`` over its documents, for
``c = L - 1`` with ``L`` in ``STANDARD_SEQUENCE_LENGTHS`` (room for EOS, as the Tasks cut them:
``tasks.preprocessors.chunk_length``). seqio mixes *examples*, so ``tasks.mixtures`` needs it to turn token shares into exact rates
at the training sequence length without reading the cache.

``--shard_layout`` changes how documents reach their shard, never what is written: every file is
byte-identical in both layouts (tests/test_tokenize_per_input.py). ``by_size`` (the default) groups
the serialized Examples by ``(task, split, shard)`` in a Beam shuffle, which Beam's local runner
holds in memory, so a local run's peak grows with the input. ``per_input``
(pipelines/tokenize_shardwise.py) encodes each input file in one DoFn call into one spill file
(pipelines/spill.py), then writes each shard from a streaming merge of the spill files, so a worker
holds one input file's records, not the input (docs/scale.md, Memory). Both write a shard's records
in the order of their ``(id, source, num_tokens, Example)`` tuples (:data:`ShardRecord`,
:func:`write_shard`, which checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
from typing import Any, Iterable, Sequence

import apache_beam as beam
import sentencepiece as spm
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common
from pipelines import train_tokenizer
from tasks import cache_layout
from tasks import preprocessors
from tasks import special_tokens

STAGE = "tokenize"
CACHE_DIR = cache_layout.CACHE_DIR
SOURCES_FILE = cache_layout.SOURCES_FILE
TOKENIZER_FILE = cache_layout.TOKENIZER_FILE
COMPLETED_FILE = cache_layout.COMPLETED_FILE
TASK_PREFIX = "gf_"
SPLITS = ("train", "validation")
DEFAULT_TIERS = {"docs": "high"}
DEFAULT_TIER = "standard"
# The version of the cache format we write; seqio reads it from info.<split>.json.
SEQIO_CACHE_VERSION = "0.0.20"
# Sequence lengths whose chunk counts sources.json records (chunk length = L - 1, see above).
STANDARD_SEQUENCE_LENGTHS = tuple(2**k for k in range(5, 16))  # 32 .. 32768
STANDARD_CHUNK_LENGTHS = tuple(preprocessors.chunk_length({"targets": length}, None)
                               for length in STANDARD_SEQUENCE_LENGTHS)
FEATURES_INFO = {
    "id": {"dtype": "string", "shape": []},
    "targets": {"dtype": "int32", "shape": [None]},
}


def task_name(source: str) -> str:
  """The seqio Task name of a source: ``gf_`` + the name with characters seqio rejects as ``_``."""
  return TASK_PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", source)


def assign_split(doc_id: str, validation_fraction: float) -> str:
  return "validation" if common.stable_hash("split/" + doc_id) < validation_fraction * 2**64 else "train"


def assign_shard(doc_id: str, num_shards: int) -> int:
  return common.stable_hash("shard/" + doc_id) % num_shards


def count_chunks(lengths: Iterable[int], chunk_lengths: Sequence[int] = STANDARD_CHUNK_LENGTHS) -> dict[str, int]:
  """``{str(c): sum(ceil(n / c))}``: examples that documents of ``lengths`` tokens give at chunk length c."""
  lengths = list(lengths)
  return {str(c): sum(-(-n // c) for n in lengths) for c in chunk_lengths}


def cache_file(task_dir: str, split: str, shard: int, num_shards: int) -> str:
  return cache_layout.shard_file(task_dir, split, shard, num_shards)


def parse_tiers(spec: str) -> dict[str, str]:
  """Parses ``source=tier,source=tier`` into a dict; an empty string gives ``{}``."""
  tiers = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    source, sep, tier = item.partition("=")
    if not sep or not source.strip() or not tier.strip():
      raise common.StageError(f"--tiers: expected source=tier, got {item!r}.")
    tiers[source.strip()] = tier.strip()
  return tiers


# ----------------------------------------------------------------------------- encoding


class EncodeDocs(beam.DoFn):
  """Encodes a batch of documents with one ``sp.encode`` call; groups them by (task, split, shard).

  Emits ``((task, split, shard), [(id, source, num_tokens, serialized tf.train.Example), ...])``,
  one element per shard the batch touches: the shuffle then moves a few lists per batch instead of
  one element per document (per-element runner overhead is most of what the job adds to raw
  encoding, docs/benchmarks.md). Documents without a source or with no tokens go to the rejects
  output with their reason. ``num_threads`` is SentencePiece's batch-encoding threads (-1: one per
  core, its default). Counters are incremented once per batch: a ``Metrics`` call per document
  costs as much as building its Example.
  """

  def __init__(
      self, model_proto: bytes, validation_fraction: float, num_shards: dict[str, int], num_threads: int = -1
  ):
    self._model_proto = model_proto
    self._validation_fraction = validation_fraction
    self._num_shards = num_shards
    self._num_threads = num_threads
    self._sp = None

  def setup(self):
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(self._model_proto)
    self._to_example = ExampleSerializer()
    self._tokens = Metrics.counter(STAGE, "tokens")
    self._kept = Metrics.counter(STAGE, "kept")
    self._task_names: dict[str, str] = {}

  def process(self, batch: list[common.Doc]):
    docs = []
    for doc in batch:
      source = doc.get("source")
      if not isinstance(source, str) or not source:
        yield common.reject(STAGE, "no_source", doc)
      else:
        docs.append(doc)
    groups: dict[tuple[str, str, int], list] = {}
    num_tokens = 0
    for doc, tokens in zip(docs, self._sp.encode([d["text"] for d in docs], num_threads=self._num_threads)):
      if not tokens:
        yield common.reject(STAGE, "empty_after_tokenize", doc)
        continue
      doc_id, source = str(doc["id"]), doc["source"]
      task = self._task_names.get(source) or self._task_names.setdefault(source, task_name(source))
      split = assign_split(doc_id, self._validation_fraction)
      key = (task, split, assign_shard(doc_id, self._num_shards[split]))
      num_tokens += len(tokens)
      # The Example is serialized here so that only bytes travel through the shuffle.
      groups.setdefault(key, []).append((doc_id, source, len(tokens), self._to_example(doc_id, tokens)))
    self._kept.inc(sum(len(group) for group in groups.values()))
    self._tokens.inc(num_tokens)
    yield from groups.items()


def _concat_groups(key_and_groups):
  """``(shard key, [list, list, ...])`` after the shuffle -> ``(shard key, one list)`` for WriteShard."""
  key, groups = key_and_groups
  return key, [record for group in groups for record in group]


# ----------------------------------------------------------------------------- writing


class ExampleSerializer:
  """Serializes ``(id, tokens)`` as a ``tf.train.Example``, refilling one prebuilt message.

  Refilling is ~2.5x faster than building a new message per document. Serialization is
  ``deterministic``: without it the protobuf runtime writes the ``feature`` map in an order that
  changes from process to process, so reruns could give different bytes. With it the entries are
  sorted by key (``id``, then ``targets``). Not thread-safe: each DoFn instance owns one.
  """

  def __init__(self):
    self._example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b""])),
                "targets": tf.train.Feature(int64_list=tf.train.Int64List()),
            }
        )
    )
    self._id = self._example.features.feature["id"].bytes_list.value
    self._targets = self._example.features.feature["targets"].int64_list.value

  def __call__(self, doc_id: str, tokens: Sequence[int]) -> bytes:
    self._id[0] = doc_id.encode("utf-8")
    self._targets[:] = tokens
    return self._example.SerializeToString(deterministic=True)


def to_example(doc_id: str, tokens: Sequence[int]) -> bytes:
  """One document's serialized Example (``ExampleSerializer`` for many)."""
  return ExampleSerializer()(doc_id, tokens)


def write_tfrecord(path: str, records: Iterable[bytes]) -> None:
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


class WriteShard(beam.DoFn):
  """Writes one (task, split, shard) TFRecord file sorted by id; emits its counts per task.

  The counts include the shard's chunk counts (``count_chunks``), summed per split by ``FinishTask``.
  """

  def __init__(self, cache_dir: str, num_shards: dict[str, int]):
    self._cache_dir = cache_dir
    self._num_shards = num_shards

  def process(self, element):
    (task, split, shard), docs = element
    yield task, write_shard(self._cache_dir, task, split, shard, self._num_shards[split], sorted(docs))


# A shard's records are ``(id, source, num_tokens, serialized Example)`` tuples, written in tuple
# order: by id, then (duplicate ids) source, tokens and bytes. The one ordering rule of both
# layouts: the per-input layout's spill encoding (pipelines/tokenize_shardwise.py) sorts as these
# tuples do, and write_shard refuses records out of this order.
ShardRecord = tuple[str, str, int, bytes]


def write_shard(cache_dir: str, task: str, split: str, shard: int, num_shards: int,
                records: Iterable[ShardRecord]) -> dict[str, Any]:
  """Writes one shard's TFRecord file from ``records`` in tuple order, streamed; returns its counts.

  Streamed so that the per-input layout can write a shard straight from a merge of spill files
  without holding it; the order is checked, so a merge that disagreed with ``sorted`` would fail
  the job rather than write different bytes.
  """
  task_dir = FileSystems.join(cache_dir, task)
  tf.io.gfile.makedirs(task_dir)
  tally = _ShardTally()

  def examples():
    previous = None
    for record in records:
      if previous is not None and record < previous:
        raise common.StageError(f"{task} {split} shard {shard}: record {record[0]!r} after "
                                f"{previous[0]!r}, out of the shard's order.")
      previous = record
      tally.add(record[1], record[2])
      yield record[3]

  write_tfrecord(cache_file(task_dir, split, shard, num_shards), examples())
  return tally.counts(split, shard)


class _ShardTally:
  """The counts of a shard's records as they stream past (what ``FinishTask`` sums): the sources
  seen and one token count per document, from which the rest is derived."""

  def __init__(self):
    self._sources: set[str] = set()
    self._lengths: list[int] = []

  def add(self, source: str, num_tokens: int) -> None:
    self._sources.add(source)
    self._lengths.append(num_tokens)

  def counts(self, split: str, shard: int) -> dict[str, Any]:
    if not self._lengths:
      raise common.StageError(f"{split} shard {shard}: an empty shard has no counts (FinishTask "
                              "writes empty shards).")
    return {
        "sources": sorted(self._sources),
        "split": split,
        "shard": shard,
        "documents": len(self._lengths),
        "tokens": sum(self._lengths),
        "max_tokens": max(self._lengths),
        "chunks": count_chunks(self._lengths),
    }


class FinishTask(beam.DoFn):
  """Completes a task's cache directory once all its non-empty shards are written.

  Writes the missing (empty) shards, ``info.<split>.json``, ``stats.<split>.json`` and
  ``COMPLETED``; emits the task's ``sources.json`` entry.
  """

  def __init__(self, cache_dir: str, num_shards: dict[str, int], tiers: dict[str, str], default_tier: str,
               features_info: dict[str, Any] = FEATURES_INFO):
    self._cache_dir = cache_dir
    self._num_shards = num_shards
    self._tiers = tiers
    self._default_tier = default_tier
    self._features_info = features_info  # The Examples' features (pipelines.chat_data writes others).

  def process(self, element):
    task, shards = element
    shards = list(shards)
    sources = sorted({s for shard in shards for s in shard["sources"]})
    if len(sources) != 1:
      raise common.StageError(
          f"Sources {sources} all map to the task name {task}; rename them so they differ in "
          "letters, digits or underscores."
      )
    source = sources[0]
    task_dir = FileSystems.join(self._cache_dir, task)
    splits = {}
    for split in SPLITS:
      num_shards = self._num_shards[split]
      mine = [s for s in shards if s["split"] == split]
      written = {s["shard"] for s in mine}
      for shard in range(num_shards):
        if shard not in written:
          write_tfrecord(cache_file(task_dir, split, shard, num_shards), [])
      shard_tokens = [0] * num_shards
      for s in mine:
        shard_tokens[s["shard"]] = s["tokens"]
      stats = {
          "examples": sum(s["documents"] for s in mine),
          "targets_tokens": sum(shard_tokens),
          "targets_max_tokens": max((s["max_tokens"] for s in mine), default=0),
      }
      info = {"features": self._features_info, "num_shards": num_shards, "seqio_version": SEQIO_CACHE_VERSION}
      _write_json(cache_layout.info_file(task_dir, split), info)
      _write_json(cache_layout.stats_file(task_dir, split), stats)
      chunks = {str(c): sum(s["chunks"][str(c)] for s in mine) for c in STANDARD_CHUNK_LENGTHS}
      splits[split] = {
          "chunks": chunks,
          "documents": stats["examples"],
          "tokens": stats["targets_tokens"],
          "max_tokens": stats["targets_max_tokens"],
          "num_shards": num_shards,
          "max_shard_tokens": max(shard_tokens),
          "min_shard_tokens": min(shard_tokens),
          # max / mean tokens per shard: what the busiest host of a mesh reads relative to the
          # average when hosts take equal numbers of shards (1.0 is perfect balance).
          "shard_token_imbalance": round(max(shard_tokens) * num_shards / sum(shard_tokens), 4)
                                   if sum(shard_tokens) else 1.0,
      }
    with FileSystems.create(FileSystems.join(task_dir, COMPLETED_FILE)) as f:
      f.write(b"")
    yield {
        "source": source,
        "task": task,
        "tier": self._tiers.get(source, self._default_tier),
        "splits": splits,
    }


def _write_json(path: str, record: Any) -> None:
  """Writes JSON the way seqio's WriteJson does (sorted keys, indent 2) plus a newline."""
  with FileSystems.create(path) as f:
    f.write((json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- pipeline


def tokenize(
    input_path: str,
    tokenizer: str,
    output_dir: str,
    validation_fraction: float = 0.05,
    num_shards: int = 0,
    num_validation_shards: int = 0,
    num_reject_shards: int = 0,
    target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES,
    shard_multiple: int = 4,
    tiers: dict[str, str] | None = None,
    default_tier: str = DEFAULT_TIER,
    batch_size: int = 256,
    num_threads: int = -1,
    options: PipelineOptions | None = None,
    shard_layout: str = common.BY_SIZE,
) -> dict[str, Any]:
  """Runs the job and returns its stats.json record.

  ``num_threads`` is SentencePiece's threads per batch-encode call (-1: one per core).
  ``num_shards=0`` derives the train shard count from the input: :func:`train_shard_count`;
  ``num_validation_shards=0`` the validation one (:func:`validation_shard_count`) and
  ``num_reject_shards=0`` the rejects' (from their bytes, as ``common.WriteSortedShards`` does).
  ``shard_layout``: how documents reach their shard, not what is written (the same bytes either
  way): ``by_size`` through a Beam shuffle, ``per_input`` through spill files
  (pipelines/tokenize_shardwise.py), so a local run's memory does not grow with the input.
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise common.StageError(f"--validation_fraction must be in [0, 1), got {validation_fraction}.")
  if min(num_shards, num_validation_shards, num_reject_shards) < 0 or shard_multiple < 1:
    raise common.StageError("--num_shards, --num_validation_shards and --num_reject_shards must be "
                            "at least 1 (or 0: from the data), --shard_multiple at least 1.")
  if shard_layout not in common.SHARD_LAYOUTS:
    raise common.StageError(
        f"--shard_layout must be one of {common.SHARD_LAYOUTS}, got {shard_layout!r}.")
  if target_shard_bytes < 1:
    raise common.StageError(f"--target_shard_bytes must be positive, got {target_shard_bytes}.")
  if not num_shards or not num_validation_shards:
    files = common.stage_input_files(input_path)
    num_shards = num_shards or train_shard_count(files, target_shard_bytes, shard_multiple)
    num_validation_shards = num_validation_shards or validation_shard_count(
        files, validation_fraction, target_shard_bytes)
  tiers = DEFAULT_TIERS if tiers is None else tiers
  model_proto = train_tokenizer.read_tokenizer(tokenizer)
  try:  # Decoding, chat and the Tasks need every special piece: refuse before any work.
    special_tokens.special_tokens(model_proto)
  except special_tokens.SpecialTokensError as e:
    raise train_tokenizer.TokenizerError(f"{tokenizer}: {e}") from e
  shards = {"train": num_shards, "validation": num_validation_shards}
  encode = EncodeDocs(model_proto, validation_fraction, shards, num_threads)
  logging.info("%s: %s -> %s (%s layout)", STAGE, input_path, output_dir, shard_layout)

  with common.atomic_output_dir(output_dir) as tmp_dir:
    cache_dir = FileSystems.join(tmp_dir, CACHE_DIR)
    FileSystems.mkdirs(cache_dir)
    with FileSystems.create(FileSystems.join(tmp_dir, TOKENIZER_FILE)) as f:
      f.write(model_proto)
    spills = None
    if shard_layout == common.PER_INPUT:
      from pipelines import tokenize_shardwise  # pylint: disable=import-outside-toplevel
      spills = tokenize_shardwise.SpillJob(input_path, tmp_dir, shards, encode, batch_size,
                                           num_reject_shards, target_shard_bytes)
    with beam.Pipeline(options=options or PipelineOptions()) as p:
      if spills is None:
        written, counts = _encode_and_write(p, input_path, tmp_dir, shards, encode, batch_size,
                                            num_reject_shards, target_shard_bytes)
      else:
        written, counts = spills.expand(p)
      _finish(written, counts, tmp_dir, shards, model_proto, validation_fraction, tiers, default_tier)
    if spills is not None:
      spills.delete_spills()  # Only once the job succeeded: a failed one's tmp_dir goes whole.
  stats = common.read_stats(output_dir)
  logging.info("%s: %s", STAGE, json.dumps(stats, sort_keys=True))
  return stats


def _encode_and_write(p, input_path: str, tmp_dir: str, shards: dict[str, int], encode: EncodeDocs,
                      batch_size: int, num_reject_shards: int, target_shard_bytes: int):
  """The default layout: documents grouped by (task, split, shard) through a Beam shuffle.

  Returns ``WriteShard``'s ``(task, shard counts)`` and the job's ``(name, n)`` count PCollections
  (``in``, ``kept``, ``dropped.<reason>``); writes the rejects (``num_reject_shards``, 0: from
  their bytes).
  """
  cache_dir = FileSystems.join(tmp_dir, CACHE_DIR)
  parsed = p | "Read" >> common.ReadDocs(input_path, STAGE)
  inputs = (parsed.docs, parsed[common.REJECTS_TAG])  # Counted apart: common.CountAll.
  encoded = (
      parsed.docs
      | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
      | "Encode" >> beam.ParDo(encode).with_outputs(common.REJECTS_TAG, main="kept")
  )
  rejects = (parsed[common.REJECTS_TAG], encoded[common.REJECTS_TAG]) | "AllRejects" >> beam.Flatten()
  _ = rejects | "WriteRejects" >> common.WriteSortedShards(
      FileSystems.join(tmp_dir, common.REJECTS_DIR), common.REJECTS_TAG, num_reject_shards,
      target_shard_bytes)
  written = (
      encoded.kept
      | "GroupByShard" >> beam.GroupByKey()
      | "Concat" >> beam.Map(_concat_groups)
      | "WriteShard" >> beam.ParDo(WriteShard(cache_dir, shards))
  )
  counts = [
      inputs | "CountIn" >> common.CountAll() | "TagIn" >> beam.Map(lambda n: ("in", n)),
      encoded.kept | "GroupSizes" >> beam.Map(lambda group: len(group[1]))
      | "CountKept" >> beam.CombineGlobally(sum) | "TagKept" >> beam.Map(lambda n: ("kept", n)),
      rejects
      | "Reason" >> beam.Map(lambda r: ("dropped." + r["reason"], 1))
      | "CountReasons" >> beam.CombinePerKey(sum),
  ]
  return written, counts


def _finish(written, counts: list, tmp_dir: str, shards: dict[str, int], model_proto: bytes,
            validation_fraction: float, tiers: dict[str, str], default_tier: str) -> None:
  """Both layouts' tail: each task's cache directory completed, sources.json and stats.json."""
  cache_dir = FileSystems.join(tmp_dir, CACHE_DIR)
  entries = (
      written
      | "GroupByTask" >> beam.GroupByKey()
      | "FinishTask" >> beam.ParDo(FinishTask(cache_dir, shards, tiers, default_tier))
  )
  sources = (
      entries
      | "AllEntries" >> beam.combiners.ToList()
      | "WriteSources" >> beam.Map(
          _write_sources, tmp_dir, model_proto, validation_fraction, shards
      )
  )
  token_counts = entries | "Tokens" >> beam.FlatMap(
      lambda e: [(f"{split}_{key}", e["splits"][split][key])
                 for split in SPLITS for key in ("documents", "tokens")]
  ) | "SumTokens" >> beam.CombinePerKey(sum)
  _ = (
      [*counts, token_counts, sources | "NumSources" >> beam.Map(lambda s: ("sources", len(s)))]
      | "FlattenCounts" >> beam.Flatten()
      | "AllCounts" >> beam.combiners.ToList()
      | "WriteStats" >> beam.Map(_write_stats, tmp_dir)
  )


def train_shard_count(input_files: Sequence[str], target_shard_bytes: int, shard_multiple: int) -> int:
  """Train shards for ~``target_shard_bytes`` of input text each, rounded up to a multiple of
  ``shard_multiple``, so that every host of a mesh with that many (or a divisor of that many)
  data-loading hosts reads the same number of shards; documents go to shards by hash, so the
  shards' token counts are near equal at scale (``shard_token_imbalance`` in sources.json)."""
  shards = common.shards_for(common.total_bytes(input_files), target_shard_bytes)
  return -(-shards // shard_multiple) * shard_multiple


def validation_shard_count(input_files: Sequence[str], validation_fraction: float,
                           target_shard_bytes: int) -> int:
  """Validation shards for ~``target_shard_bytes`` each of the split's share of the input: the
  split takes a document when its id hashes below ``validation_fraction`` of the range
  (:func:`assign_split`), so about that fraction of the bytes; at least 1. Not rounded to the
  shard multiple: evaluation reads the split whole."""
  share = math.ceil(common.total_bytes(input_files) * validation_fraction)
  return common.shards_for(share, target_shard_bytes)


def _write_sources(entries, directory, model_proto, validation_fraction, shards):
  sp = train_tokenizer.check_tokenizer(model_proto, TOKENIZER_FILE)
  record = {
      "tokenizer": TOKENIZER_FILE,
      "tokenizer_sha256": hashlib.sha256(model_proto).hexdigest(),
      "vocab_size": sp.vocab_size(),
      # For people reading the file; code reads the ids from the tokenizer (tasks.special_tokens).
      "special_ids": dataclasses.asdict(special_tokens.special_tokens(sp)),
      "special_ids_match_gemma": True,  # check_tokenizer raised otherwise.
      "validation_fraction": validation_fraction,
      "num_shards": shards,
      "cache_dir": CACHE_DIR,
      "sources": {e["source"]: {k: v for k, v in e.items() if k != "source"} for e in entries},
  }
  _write_json(FileSystems.join(directory, SOURCES_FILE), record)
  return record["sources"]


def _write_stats(items, directory):
  stats = common.make_stats(STAGE, items)
  stats.setdefault("sources", 0)
  for split in SPLITS:
    for key in ("documents", "tokens"):
      stats.setdefault(f"{split}_{key}", 0)
  if stats["kept"] != stats["train_documents"] + stats["validation_documents"]:
    raise common.StageError(
        f"{STAGE}: {stats['kept']} documents kept but "
        f"{stats['train_documents'] + stats['validation_documents']} written to the cache."
    )
  _write_json(FileSystems.join(directory, common.STATS_FILE), stats)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
  def add_args(parser):
    parser.add_argument("--tokenizer", required=True, help="tokenizer.model to encode with.")
    parser.add_argument("--validation_fraction", type=float, default=0.05)
    parser.add_argument(
        "--num_validation_shards", type=int, default=0,
        help="Validation shards (default 0: from the data, the split's share of the input over "
        "--target_shard_bytes).")
    parser.add_argument(
        "--shard_multiple", type=int, default=4,
        help="With --num_shards=0, round the train shard count up to a multiple of this (the "
        "number of data-loading hosts of the largest mesh the cache is for).")
    parser.add_argument(
        "--tiers", default=",".join(f"{k}={v}" for k, v in DEFAULT_TIERS.items()),
        help="Quality tier per source, e.g. 'docs=high,forum=low'.",
    )
    parser.add_argument("--default_tier", default=DEFAULT_TIER, help="Tier of unlisted sources.")
    parser.add_argument("--batch_size", type=int, default=256, help="Documents per sp.encode call.")
    parser.add_argument(
        "--encode_threads", type=int, default=-1, help="SentencePiece threads per sp.encode call (-1: all cores)."
    )

  return common.parse_stage_args(__doc__.split("\n")[0], argv, add_args, per_input=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, options = parse_args(argv)
  return tokenize(
      args.input,
      args.tokenizer,
      args.output_dir,
      validation_fraction=args.validation_fraction,
      num_shards=args.num_shards,
      num_validation_shards=args.num_validation_shards,
      num_reject_shards=args.num_reject_shards,
      target_shard_bytes=args.target_shard_bytes,
      shard_multiple=args.shard_multiple,
      tiers=parse_tiers(args.tiers),
      default_tier=args.default_tier,
      batch_size=args.batch_size,
      num_threads=args.encode_threads,
      options=options,
      shard_layout=args.shard_layout,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
