"""The chat data job in the per-input layout (``--shard_layout=per_input``): the same output, byte
for byte, shuffled through spill files (pipelines/spill.py) instead of Beam GroupByKeys.

Why: the default layout dedupes conversations with ``dedupe.mark_exact_duplicates`` (GroupByKeys
over every kept record) and groups every Example by shard, and Beam's local runner holds a
GroupByKey's whole input in memory, so a local run's peak grows with the input (docs/scale.md,
Memory). Here every step is one DoFn call per input file or per partition that writes (at most)
ONE spill file, partitioned by its consumer and sorted by key; a consumer streams its partition of
every spill file with :func:`spill.merge_partition`, so a call holds one input file's rows or one
bucket's, never the input:

1. ``docs``, per input file: each line through ``chat_data.PrepareConversation`` (the default
   layout's DoFn, called as is). A reject goes to the rejects partition; a kept record's exact
   member ``(url, id)`` to the bucket of its exact hash (``dedupe.exact_member``), and its copy
   (its ``common.dumps``, which orders copies of one id in ``dedupe.exact_decision``) to the
   bucket of its id.
2. ``exact``, per exact bucket: each exact group's winner is its first value (the smallest
   ``(url, id)``, the default layout's ``CombinePerKey(min)``); ``dedupe.link`` gives each loser's
   edge, which goes to the bucket of the loser's id.
3. ``ids``, per id bucket: each id's edges (sorted first, smallest first), then its copies in
   ``dumps`` order -> ``dedupe.exact_decision`` per copy -> ``chat_data._route_duplicates``: a
   kept example (``chat_data.ToShard``) to its ``(split, shard)`` partition, keyed
   ``task NUL id`` (tokenize_shardwise's encoding), a duplicate to the rejects partition.
4. ``write``, per ``(split, shard)`` partition: ``tokenize_shardwise.MergePartition``, which
   streams the merge into ``tokenize.write_shard`` task by task, and writes the rejects shards
   (steps 1 and 3's rejects; their count from the line bytes those steps counted,
   ``tokenize_shardwise.REJECT_BYTES``, as the default layout's writer sums them). ``chat_data``
   then finishes the tasks, sources and stats as in the default layout.

Why decisions go through the id's bucket: copies of one id are one conversation (all go if one is
a duplicate, else all but the first), and they may have different texts, so different exact
groups, in different files and buckets.

Buckets: ``--num_buckets``, by default one per :data:`TARGET_BUCKET_BYTES` of input, so a step-2
or step-3 call holds a bounded share of the records, as a step-1 call holds one input file's. What
does grow with the input is small: the ``(partition, spill path)`` pairs the runner groups, at
most two per bucket per input file and two per record. Each step starts once the one before is complete: a step's input is the
previous steps' ``(partition, spill path)`` outputs grouped by partition (a GroupByKey in the
global window emits only once all its input has committed, i.e. once every call before it has
written its file). A missing or truncated spill file is a :class:`spill.SpillError`. The spill
files live under the job's temporary output directory and are removed when the job succeeds.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import xxhash

from pipelines import chat_data
from pipelines import common
from pipelines import dedupe
from pipelines import shardwise
from pipelines import spill
from pipelines import tokenize_shardwise
# The order-preserving encodings of dedupe's groups (one source of truth for both jobs).
from pipelines import dedupe_shardwise
from pipelines.dedupe_shardwise import _COPY, _id_key, _member

SPILL_DIR = "_chat_spill"  # Under the job's temporary output directory; removed on success.
COUNTS_TAG = "counts"
# Input bytes per bucket: a step-3 call holds its bucket's kept Examples, ~4x its share of the
# input (benchmarks: 1 MiB buckets kept 100x the sample at the 1x peak; one bucket per input file
# cost more, in the runner's (partition, path) pairs and in index reads, than it saved).
TARGET_BUCKET_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every step needs. Partition numbers, one space for every spill file: ``[0, S)`` the
  ``(split, shard)`` partitions and ``S`` the rejects (``tokenize_shardwise.partition_of`` /
  ``rejects_partition``, so that its ``MergePartition`` writes them), then the exact buckets,
  then the id buckets."""

  files: tuple[str, ...]
  num_buckets: int
  shards: dict[str, int]
  spill_dir: str
  num_reject_shards: int = 0  # 0: from the rejects' bytes.
  target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES

  @property
  def rejects(self) -> int:
    return tokenize_shardwise.rejects_partition(self.shards)

  def exact_partition(self, key: bytes) -> int:
    return self.rejects + 1 + xxhash.xxh64_intdigest(key) % self.num_buckets

  def id_partition(self, id_key: bytes) -> int:
    return self.rejects + 1 + self.num_buckets + xxhash.xxh64_intdigest(id_key) % self.num_buckets

  def step_of(self, partition: int) -> str:
    """The step that reads a partition: ``exact``, ``ids`` or ``write``."""
    if partition <= self.rejects:
      return "write"
    return "exact" if partition <= self.rejects + self.num_buckets else "ids"

  def path(self, step: str, index: int) -> str:
    return FileSystems.join(self.spill_dir, f"{step}-{index:05d}.spill")

  def spill_paths(self) -> list[str]:
    """Every spill file the job may write (a bucket without records writes none)."""
    first = self.rejects + 1
    return ([self.path("docs", i) for i in range(len(self.files))]
            + [self.path(step, first + offset + b) for step, offset in (("exact", 0),
                                                                        ("ids", self.num_buckets))
               for b in range(self.num_buckets)])


def _reject_row(output: beam.pvalue.TaggedOutput, plan: Plan, counts: collections.Counter):
  """A reject as a row of the rejects partition: ``(id, line)``, the default writer's order."""
  if output.tag != common.REJECTS_TAG:
    raise common.StageError(f"Unknown output tag {output.tag!r} in the chat data job.")
  counts["dropped." + output.value["reason"]] += 1
  doc_id, line = common.encode_row(output.value)
  counts[tokenize_shardwise.REJECT_BYTES] += common.line_bytes(line)
  return plan.rejects, doc_id.encode("utf-8"), line.encode("utf-8")


class _SpillStep(beam.DoFn):
  """``(index, spill paths)`` -> writes ``<step>-<index>.spill`` from :meth:`rows`; emits
  ``(partition, its path)`` per partition it holds and ``(name, n)`` counts on ``counts``."""

  step = ""

  def __init__(self, plan: Plan):
    self._plan = plan

  def process(self, element: tuple[int, Any]):
    index, paths = element
    counts: collections.Counter = collections.Counter()
    rows = self.rows(index, sorted({p for p in paths if p is not None}), counts)
    path = self._plan.path(self.step, index)
    held = spill.write(path, rows)["partitions"]
    del rows
    for partition in sorted(held, key=int):
      yield int(partition), path
    for name, n in sorted(counts.items()):
      yield beam.pvalue.TaggedOutput(COUNTS_TAG, (name, n))

  def rows(self, index: int, paths: list[str], counts: collections.Counter) -> list[spill.Row]:
    """The step's spill rows from its element (every step class defines it)."""
    raise NotImplementedError(f"{type(self).__name__} defines no rows()")


class SpillInputFile(_SpillStep):
  """Step 1: ``(i, [])`` -> input file i's rejects, exact members and copies."""

  step = "docs"

  def __init__(self, plan: Plan, prepare: chat_data.PrepareConversation):
    super().__init__(plan)
    self._prepare = prepare
    self._progress = common.CountProgress(chat_data.STAGE)  # The workflow's progress lines.

  def setup(self):
    self._prepare.setup()

  def rows(self, index, paths, counts):
    plan, rows = self._plan, []
    path = plan.files[index]
    for line in shardwise.read_lines(path):
      counts["in"] += 1
      self._progress.count()
      for output in self._prepare.process((path, line)):
        if isinstance(output, beam.pvalue.TaggedOutput):
          rows.append(_reject_row(output, plan, counts))
          continue
        group, (url, doc_id, payload) = dedupe.exact_member(output)
        group_key, id_key = group.encode("ascii"), _id_key(doc_id)
        rows.append((plan.exact_partition(group_key), group_key, _member(url, doc_id, payload)))
        rows.append((plan.id_partition(id_key), id_key,
                     _COPY + common.dumps(output).encode("utf-8", "surrogatepass")))
    return rows

  def finish_bundle(self):
    self._progress.finish_bundle()

  def teardown(self):
    self._progress.teardown()


class ExactEdges(_SpillStep):
  """Step 2: ``(exact bucket, docs spill paths)`` -> each exact group's losers' edges."""

  step = "exact"

  def rows(self, index, paths, counts):
    merged = spill.merge_partition(paths, index)
    edges = dedupe_shardwise.smallest_loser_edges(merged, dedupe.exact_similarity)
    return [(self._plan.id_partition(id_key), id_key, edge) for id_key, edge in edges.items()]


class IdDecisions(_SpillStep):
  """Step 3: ``(id bucket, docs and exact spill paths)`` -> kept examples by (split, shard), and
  the duplicates' rejects."""

  step = "ids"

  def __init__(self, plan: Plan, to_shard: chat_data.ToShard):
    super().__init__(plan)
    self._to_shard = to_shard

  def rows(self, index, paths, counts):
    plan, rows = self._plan, []
    merged = spill.merge_partition(paths, index)
    for doc_id, _, smallest_edge, position, value in dedupe_shardwise.id_copies(merged):
      doc = json.loads(value[1:].decode("utf-8", "surrogatepass"))
      mark = dedupe.exact_decision(doc_id, position, smallest_edge)
      for output in chat_data._route_duplicates((doc, mark)):  # pylint: disable=protected-access
        if isinstance(output, beam.pvalue.TaggedOutput):
          rows.append(_reject_row(output, plan, counts))
          continue
        counts["kept"] += 1
        counts["kept_" + output["kind"]] += 1
        rows.extend(self._example_rows(output))
    return rows

  def _example_rows(self, doc) -> Iterator[spill.Row]:
    for (task, split, shard), (doc_id, key, tokens, example) in self._to_shard.process(doc):
      yield (tokenize_shardwise.partition_of(split, shard, self._plan.shards),
             tokenize_shardwise.encode_key(task, doc_id),
             tokenize_shardwise.encode_value(key, tokens, example))


def _for_step(partition_and_path, num_partitions: int, plan: Plan) -> int:
  return ("exact", "ids", "write").index(plan.step_of(partition_and_path[0]))


def build(p, plan: Plan, prepare: chat_data.PrepareConversation, to_shard: chat_data.ToShard,
          cache_dir: str, rejects_dir: str):
  """The four steps; returns ``(written, counts)`` as the default layout makes them:
  ``tokenize.WriteShard``'s ``(task, shard counts)`` and the ``(name, n)`` counts."""
  FileSystems.mkdirs(plan.spill_dir)
  docs = (p
          | "Files" >> beam.Create([(i, []) for i in range(len(plan.files))])
          # Without it a runner fuses Create with the next step, and one worker reads every file.
          | "SpreadFiles" >> beam.Reshuffle()
          | "SpillInputFile" >> beam.ParDo(SpillInputFile(plan, prepare)).with_outputs(
              COUNTS_TAG, main="partitions"))
  to_exact, docs_to_ids, docs_to_write = docs.partitions | "ByStep" >> beam.Partition(_for_step, 3, plan)
  exact = (to_exact
           | "ExactBuckets" >> beam.GroupByKey()
           | "ExactEdges" >> beam.ParDo(ExactEdges(plan)).with_outputs(COUNTS_TAG, main="partitions"))
  ids = ((docs_to_ids, exact.partitions)
         | "ToIds" >> beam.Flatten()
         | "IdBuckets" >> beam.GroupByKey()
         | "IdDecisions" >> beam.ParDo(IdDecisions(plan, to_shard)).with_outputs(
             COUNTS_TAG, main="partitions"))
  counts, reject_bytes = tokenize_shardwise.split_reject_bytes(
      (docs[COUNTS_TAG], exact[COUNTS_TAG], ids[COUNTS_TAG])
      | "FlattenStepCounts" >> beam.Flatten()
      | "SumCounts" >> beam.CombinePerKey(sum))
  # The rejects shards are written even when no record is rejected, as in the default layout.
  always = p | "RejectsPartition" >> beam.Create([(plan.rejects, None)])
  written = ((docs_to_write, ids.partitions, always)
             | "ToWrite" >> beam.Flatten()
             | "ShardPartitions" >> beam.GroupByKey()
             | "MergePartition" >> beam.ParDo(tokenize_shardwise.MergePartition(
                 cache_dir, rejects_dir, plan.shards, plan.num_reject_shards,
                 plan.target_shard_bytes), reject_bytes=reject_bytes))
  return written, [counts]


def num_buckets(files: Sequence[str], requested: int) -> int:
  """``--num_buckets``, or the input's bytes over :data:`TARGET_BUCKET_BYTES` (module docstring)."""
  if requested < 0:
    raise common.StageError(f"--num_buckets must be >= 0 (0: from the input's size), got {requested}.")
  return requested or common.shards_for(common.total_bytes(files), TARGET_BUCKET_BYTES)


def delete_spills(plan: Plan) -> None:
  spill.delete(plan.spill_paths())  # By name: an object store has no directory to delete.
  if FileSystems.exists(plan.spill_dir):  # A local directory, now empty.
    FileSystems.delete([plan.spill_dir])
