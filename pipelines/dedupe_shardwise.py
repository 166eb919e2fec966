"""Dedupe in the per-input layout (``python -m pipelines.dedupe --shard_layout=per_input``): the
groups are shuffled through spill files (pipelines/spill.py), not a Beam GroupByKey.

Why: Beam's local runner holds a GroupByKey's whole input in memory, and dedupe's shuffles carry
per document its exact member and 14 LSH band members with the 896-byte signature, so a local run
of the default layout grows by ~114 KiB per document (docs/scale.md, Memory). Here, as in
datatrove's MinHash steps (signatures -> buckets -> clusters -> filter), every step is one DoFn call
per input file or per bucket that writes ONE spill file, partitioned by the consumer that reads it
(a bucket ``hash(key) % B``, or an input file), sorted by key; a consumer streams its partition of
every spill file with :func:`spill.merge_partition`, so a group (all values of a key, in sorted
order) arrives in one piece and is reduced as it streams. A call holds one input file's rows or
one bucket's output rows, never the input.

The steps, the same decisions as the default layout's (the shared pieces of pipelines/dedupe.py:
``exact_member``, ``band_members``, ``link``, ``exact_decision``, ``near_decision``):

1. ``docs``, per input file: each valid document's exact member (to bucket hash(exact hash)) and
   its id member (to bucket hash(id): its ``common.dumps``, which orders copies of one id, and its
   address, ``(input file, line)``).
2. ``exact``, per bucket: each exact group's winner is its first value (values are encoded so that
   byte order is ``(url, id)`` order); an edge per loser, to the bucket of the loser's id.
3. ``ids``, per bucket: each id's copies and its exact edges -> ``exact_decision`` per copy; the
   copy that survives is a near candidate (its address to its input file, and to its id's bucket).
4. ``bands``, per input file: the file's near candidates, re-read, -> band members, to bucket
   hash(band key).
5. ``near``, per bucket: each band bucket's winner and verified edges, to the bucket of the
   loser's id.
6. ``nearids``, per bucket: each id's smallest near edge -> ``near_decision`` for each of its
   candidates, to its input file.
7. ``write``, per input file: the file's decisions, sorted by address, merged with the file read
   again -> kept shard i-of-N and rejects shard i-of-N (``common.write_sorted_rows``); counts ->
   ``stats.json``.

Why decisions go through the id's bucket (steps 3 and 6) and not straight to the loser's file:
copies of one id are one document (every copy goes if one is a duplicate, else all but the first
in ``dumps`` order), and they may lie in different input files. Why exact runs before near (step 3
before 4) instead of putting every document into the band buckets: an exact loser ``D`` would be
harmless there (its winner ``W < D`` has the identical normalised text, so the identical signature
in every one of D's buckets, and D never wins one; exact reasons take precedence for D), but a
*surviving* exact winner that is not exact-unique (a second copy of an id, with another text or
larger ``dumps``) could win a band bucket and take near duplicates away from their true winner;
tests/test_dedupe_per_input.py plants that case.

Each step's calls start only once every call of the step before has written its file: a step's
main input is made from ``CombineGlobally(ToList)`` of the previous step's outputs, which emits
only when its whole input is complete (Beam's model, for the global window of a bounded
PCollection), and earlier steps' files are side inputs, ready before any call. A spill file that
is missing or truncated is a :class:`spill.SpillError`, failing the job. The spill files live
under the job's temporary output directory and are removed when the job succeeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import struct
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import xxhash

from pipelines import common
from pipelines import dedupe
from pipelines import shardwise
from pipelines import spill

SPILL_DIR = "_dedupe_spill"  # Under the job's temporary output directory; removed on success.
_ADDRESS = struct.Struct(">IQ")  # (input file, line): big-endian, so byte order is file order.
_SIM = struct.Struct(">d")  # Big-endian IEEE double: byte order is numeric order for sim >= 0.
_EDGE, _COPY = b"\x00", b"\x01"  # Value tags in an id group: edges sort before copies.
_CANDIDATE, _DECISION = b"c", b"d"  # Value tags of a per-file partition.


# ----------------------------------------------------------------------------- encodings
#
# Values are compared as bytes by the merge, so every tuple is encoded order-preservingly, its
# strings with :func:`spill.encode_text`.


def _member(url: str, doc_id: str, payload: bytes = b"") -> bytes:
  """A group member ``(url, id, payload)``, in the order the default layout's ``min`` uses."""
  return spill.encode_text(url) + spill.encode_text(doc_id) + payload


def _read_member(data: bytes) -> tuple[str, str, bytes]:
  url, pos = spill.decode_text(data, 0)
  doc_id, pos = spill.decode_text(data, pos)
  return url, doc_id, data[pos:]


def _edge(edge: tuple[str, str, float]) -> bytes:
  winner_url, winner_id, sim = edge
  return _EDGE + _member(winner_url, winner_id, _SIM.pack(sim))


def _read_edge(value: bytes) -> tuple[str, str, float]:
  url, doc_id, sim = _read_member(value[1:])
  return url, doc_id, _SIM.unpack(sim)[0]


def _id_key(doc_id: str) -> bytes:
  return doc_id.encode("utf-8", "surrogatepass")


def _groups(records: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, Iterator[bytes]]]:
  """Consecutive records of one key, streamed (the merge is sorted by key): ``(key, values)``."""
  for key, group in itertools.groupby(records, key=lambda kv: kv[0]):
    yield key, (value for _, value in group)


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every step needs: the input files, the bucket count, where the spill files go.

  Partition numbers: a per-file partition is the file's index ``[0, N)``; a group bucket's (exact
  hash, band) is ``N + bucket``; an id bucket's is ``N + B + bucket``. So a step that reads spill
  files of two kinds (copies and edges of an id) reads one partition number."""

  files: tuple[str, ...]
  num_buckets: int
  spill_dir: str
  config: dedupe.DedupeConfig

  @property
  def num_files(self) -> int:
    return len(self.files)

  def path(self, step: str, index: int) -> str:
    return FileSystems.join(self.spill_dir, f"{step}-{index:05d}.spill")

  def spill_paths(self) -> list[str]:
    """Every spill file the job writes (step names: the ``_step`` labels, lowercased)."""
    counts = {"docs": self.num_files, "exact": self.num_buckets, "ids": self.num_buckets,
              "bands": self.num_files, "near": self.num_buckets, "nearids": self.num_buckets}
    return [self.path(step, i) for step, n in counts.items() for i in range(n)]

  def group_partition(self, key: bytes) -> int:
    return self.num_files + xxhash.xxh64_intdigest(key) % self.num_buckets

  def id_partition(self, id_key: bytes) -> int:
    return self.num_files + self.num_buckets + xxhash.xxh64_intdigest(id_key) % self.num_buckets

  def file_partition(self, address: bytes) -> int:
    return _ADDRESS.unpack(address)[0]


# ----------------------------------------------------------------------------- the steps
#
# Each returns the rows ``(partition, key, value)`` of its one spill file.


def _spill_docs(plan: Plan, index: int) -> list[spill.Row]:
  """Step 1: every valid document's exact member and id member."""
  config, rows = plan.config, []
  if not (config.exact or config.near):
    return rows
  for line_no, line in enumerate(shardwise.read_lines(plan.files[index])):
    doc, _, _ = common.parse_doc(line)
    if doc is None:
      continue  # A reader reject: counted by step 7, which reads the file again.
    address = _ADDRESS.pack(index, line_no)
    id_key = _id_key(doc["id"])
    if config.exact:
      group, (url, doc_id, payload) = dedupe.exact_member(doc)
      group_key = group.encode("ascii")
      rows.append((plan.group_partition(group_key), group_key, _member(url, doc_id, payload)))
      # The copies of an id are ordered by their dumps (then address: ties are identical docs).
      rows.append((plan.id_partition(id_key), id_key,
                   _COPY + common.dumps(doc).encode("utf-8", "surrogatepass") + b"\x00" + address))
    else:
      rows.append((plan.id_partition(id_key), id_key, _COPY + address))
  return rows


def smallest_loser_edges(merged: Iterator[tuple[bytes, bytes]], similarity) -> dict[bytes, bytes]:
  """Per group of a merged members partition, the first value is the winner (the smallest ``(url,
  id, payload)``, as the default layout's ``CombinePerKey(min)``); returns each loser's smallest
  edge, ``{id key: encoded edge}``. A group is streamed: a hot key costs one value at a time.

  Only each loser's smallest edge is kept: the decisions use an id's smallest edge only
  (``sorted(edges)[0]``, ``SmallestWinner``), so this is the default layout's combiner lifting,
  and a call holds one edge per loser, not one per (loser, band). The chat data job's exact step
  (pipelines/chat_data_shardwise.py) calls it too."""
  smallest: dict[bytes, bytes] = {}
  for _, values in _groups(merged):
    winner = _read_member(next(values))
    for value in values:
      member = _read_member(value)
      edge = dedupe.link(member, winner, similarity)
      if edge is not None:
        id_key, encoded = _id_key(member[1]), _edge(edge)
        if encoded < smallest.get(id_key, b"\xff"):  # Edges start with _EDGE, b"\x00".
          smallest[id_key] = encoded
  return smallest


def id_copies(merged: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[str, bytes, dict | None, int, bytes]]:
  """Per id of a merged id partition (its edges sort first, the smallest first, then its copies
  in ``dumps`` order): ``(id, id key, smallest edge or None, copy position, copy value)`` for each
  copy, what ``dedupe.exact_decision`` takes. Shared with the chat data job's id step."""
  for id_key, values in _groups(merged):
    doc_id = id_key.decode("utf-8", "surrogatepass")
    smallest_edge, position = None, 0
    for value in values:
      if value[:1] == _EDGE:
        smallest_edge = smallest_edge or _read_edge(value)
        continue
      yield doc_id, id_key, smallest_edge, position, value
      position += 1


def _winner_edges(plan: Plan, index: int, inputs: Sequence[str], similarity) -> list[spill.Row]:
  """Steps 2 and 5: each loser's smallest edge of this bucket, to its id's bucket."""
  edges = smallest_loser_edges(spill.merge_partition(inputs, plan.num_files + index), similarity)
  return [(plan.id_partition(id_key), id_key, edge) for id_key, edge in edges.items()]


def _exact_edges(plan: Plan, index: int, docs: Sequence[str]) -> list[spill.Row]:
  return _winner_edges(plan, index, docs, dedupe.exact_similarity)


def _id_decisions(plan: Plan, index: int, docs: Sequence[str],
                  exact: Sequence[str]) -> list[spill.Row]:
  """Step 3: per id, its exact edges (sorted first, smallest first) then its copies in dumps
  order -> each copy's exact decision; the survivors are near candidates."""
  config, rows = plan.config, []
  bucket = plan.num_files + plan.num_buckets + index
  merged = spill.merge_partition(list(docs) + list(exact), bucket)
  for doc_id, id_key, smallest_edge, position, value in id_copies(merged):
    address = value[-_ADDRESS.size:]
    mark = dedupe.exact_decision(doc_id, position, smallest_edge) if config.exact else None
    if mark is not None:
      rows.append((plan.file_partition(address), address, _DECISION + _mark(mark)))
    elif config.near:
      rows.append((plan.file_partition(address), address, _CANDIDATE))
      rows.append((bucket, id_key, _COPY + address))
  return rows


def _band_members(plan: Plan, index: int, ids: Sequence[str]) -> list[spill.Row]:
  """Step 4: the file's near candidates (their addresses, in file order) -> band members."""
  candidates = (key for key, value in spill.merge_partition(ids, index) if value == _CANDIDATE)
  wanted = next(candidates, None)
  if wanted is None:
    return []
  config, rows = plan.config, []
  seeds = dedupe.permutation_seeds(config.num_perm, config.seed)
  for line_no, line in enumerate(shardwise.read_lines(plan.files[index])):
    if wanted is None:
      break
    if _ADDRESS.pack(index, line_no) != wanted:
      continue
    doc, _, error = common.parse_doc(line)
    if doc is None:
      raise common.StageError(
          f"{plan.files[index]}: line {line_no} changed during the job: {error}")
    for (band, band_hash), (url, doc_id, signature) in dedupe.band_members(doc, config, seeds):
      key = f"{band}:{band_hash}".encode("ascii")
      rows.append((plan.group_partition(key), key, _member(url, doc_id, signature)))
    wanted = next(candidates, None)
  if wanted is not None:
    raise common.StageError(f"{plan.files[index]}: shorter than in the first step of the job.")
  return rows


def _near_edges(plan: Plan, index: int, bands: Sequence[str]) -> list[spill.Row]:
  return _winner_edges(plan, index, bands, dedupe.NearSimilarity(plan.config))


def _near_decisions(plan: Plan, index: int, ids: Sequence[str],
                    near: Sequence[str]) -> list[spill.Row]:
  """Step 6: per id, its smallest near edge -> the near decision of each of its candidates."""
  rows, bucket = [], plan.num_files + plan.num_buckets + index
  for _, values in _groups(spill.merge_partition(list(ids) + list(near), bucket)):
    mark = None
    for value in values:
      if value[:1] == _EDGE:
        mark = mark or _mark(dedupe.near_decision(_read_edge(value)))
      elif mark is not None:
        address = value[1:]
        rows.append((plan.file_partition(address), address, _DECISION + mark))
  return rows


def _mark(mark: dict[str, Any]) -> bytes:
  return common.dumps(mark).encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------- Beam


class _SpillStep(beam.DoFn):
  """``index`` -> writes ``<step>-<index>.spill`` from ``fn(plan, index, *input path lists)``;
  emits its path."""

  def __init__(self, plan: Plan, step: str, fn):
    self._plan, self._step, self._fn = plan, step, fn

  def process(self, index, *inputs):
    path = self._plan.path(self._step, index)
    spill.write(path, self._fn(self._plan, index, *(sorted(paths) for paths in inputs)))
    yield path


class _WriteShard(beam.DoFn):
  """Step 7: ``i`` -> kept shard i-of-N and rejects shard i-of-N; emits ``((0, key), n)`` counts
  (shardwise's stats format). Documents are counted for the workflow's progress here, as they are
  written (docs/workflow.md)."""

  def __init__(self, plan: Plan, out_dir: str):
    self._plan, self._out_dir = plan, out_dir
    self._reader = shardwise.ReadDocShard(dedupe.STAGE)
    self._apply = dedupe.ApplyDedupeDecisions()
    self._progress = common.CountProgress(dedupe.STAGE)

  def finish_bundle(self):
    self._progress.finish_bundle()

  def teardown(self):
    self._progress.teardown()

  def process(self, index, ids, near_ids):
    decisions = _decisions(spill.merge_partition(sorted(ids) + sorted(near_ids), index))
    decision = next(decisions, None)
    outputs = shardwise.ShardOutputs(1)
    for line_no, element in enumerate(self._reader.process(self._plan.files[index])):
      outputs.counts[0]["in"] += 1
      self._progress.count()
      mark = None
      if decision is not None and decision[0] == _ADDRESS.pack(index, line_no):
        mark = json.loads(decision[1])
        decision = next(decisions, None)
      for doc in outputs.route(0, [element]):
        kept = outputs.route(0, self._apply.process((doc, mark)))
        outputs.counts[0]["kept"] += len(kept)
        outputs.kept.extend(common.encode_row(d) for d in kept)
    if decision is not None:
      raise common.StageError(
          f"{self._plan.files[index]}: shorter than in the first step of the job.")
    n = self._plan.num_files
    common.write_sorted_rows(common.shard_path(self._out_dir, common.DOCS_PREFIX, index, n),
                             outputs.kept)
    common.write_sorted_rows(common.shard_path(FileSystems.join(self._out_dir, common.REJECTS_DIR),
                                               common.REJECTS_TAG, index, n), outputs.rejects[0])
    yield from outputs.count_items()


def _decisions(records: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
  """``(address, mark JSON)`` of a file's decisions, in address order; one per address."""
  previous = None
  for address, value in records:
    if value[:1] != _DECISION:
      continue
    if address == previous:
      raise common.StageError(f"Two dedupe decisions for one document {_ADDRESS.unpack(address)}.")
    previous = address
    yield address, value[1:]


def _after(previous, count: int, label: str):
  """``range(count)`` as a PCollection that exists only once ``previous`` (a ``ToList``) has its
  one element, i.e. once every call of the previous step returned; spread over workers."""
  return (previous
          | f"{label}Items" >> beam.FlatMap(lambda _, n: range(n), count)
          | f"{label}Spread" >> beam.Reshuffle())


def _step(previous, plan: Plan, label: str, fn, count: int, *inputs):
  """One spill step after ``previous``; returns the ``ToList`` of the paths it wrote."""
  side = [beam.pvalue.AsSingleton(paths) for paths in inputs]
  return (_after(previous, count, label)
          | label >> beam.ParDo(_SpillStep(plan, label.lower(), fn), *side)
          | f"{label}Done" >> beam.combiners.ToList())


def build_pipeline(p: beam.Pipeline, plan: Plan, out_dir: str, expected_in: int | None,
                   input_path: str):
  files, buckets = plan.num_files, plan.num_buckets
  start = p | "Start" >> beam.Create([None]) | "StartList" >> beam.combiners.ToList()
  docs = _step(start, plan, "Docs", _spill_docs, files)
  exact = _step(docs, plan, "Exact", _exact_edges, buckets, docs)
  ids = _step(exact, plan, "Ids", _id_decisions, buckets, docs, exact)
  bands = _step(ids, plan, "Bands", _band_members, files, ids)
  near = _step(bands, plan, "Near", _near_edges, buckets, bands)
  near_ids = _step(near, plan, "NearIds", _near_decisions, buckets, ids, near)
  stage = shardwise.Stage(dedupe.STAGE, (), out_dir)
  return (_after(near_ids, files, "Write")
          | "Write" >> beam.ParDo(_WriteShard(plan, out_dir), beam.pvalue.AsSingleton(ids),
                                  beam.pvalue.AsSingleton(near_ids))
          | "SumCounts" >> beam.CombinePerKey(sum)
          | "AllCounts" >> beam.combiners.ToList()
          | "WriteStats" >> beam.Map(shardwise.write_all_stats,
                                     [stage], expected_in, input_path, None))


def num_buckets(files: Sequence[str], args) -> int:
  """``--num_buckets``, or the input's bytes over ``--target_bucket_bytes``."""
  if args.num_buckets < 0 or args.target_bucket_bytes < 1:
    raise common.StageError(f"--num_buckets must be >= 0 (0: from the data) and "
                            f"--target_bucket_bytes positive, got {args.num_buckets} and "
                            f"{args.target_bucket_bytes}.")
  if args.num_buckets:
    return args.num_buckets
  return common.shards_for(common.total_bytes(files), args.target_bucket_bytes)


def run(args, options, config: dedupe.DedupeConfig) -> dict[str, Any]:
  """``python -m pipelines.dedupe --shard_layout=per_input``: one output shard per input file."""
  shardwise.check_no_shard_count(args.num_shards, args.num_reject_shards)
  files = tuple(common.stage_input_files(args.input))
  expected = common.expected_kept(args.input)
  buckets = num_buckets(files, args)
  logging.info("%s: %s -> %s (%d input shards, %d buckets, per-input layout)", dedupe.STAGE,
               args.input, args.output_dir, len(files), buckets)
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    plan = Plan(files, buckets, FileSystems.join(tmp_dir, SPILL_DIR), config)
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, tmp_dir, expected, args.input)
    p.run().wait_until_finish()
    paths = plan.spill_paths()
    spilled = common.total_bytes(paths)
    logging.info("%s: %d spill files, %d bytes, removed.", dedupe.STAGE, len(paths), spilled)
    spill.delete(paths)  # By name: an object store has no directory to delete.
    if FileSystems.exists(plan.spill_dir):  # A local directory, now empty.
      FileSystems.delete([plan.spill_dir])
  return common.read_stats(args.output_dir)
