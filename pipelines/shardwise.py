"""Per-input-shard stage jobs (``--shard_layout=per_input``): no shuffle of documents.

Why: Beam's local runner (the FnApiRunner under the DirectRunner) holds in memory every
PCollection that crosses a fused-stage boundary: a GroupByKey's whole input, a PCollection read
twice. The default layout (``by_size``, :class:`common.WriteSortedShards`) shuffles every document
by output shard, so the peak memory of a local run grows with its input. In this layout the only
PCollection is the list of input files: one DoFn call per file reads it element by element (the
lines of a stage shard, the records of a WARC file), runs the stage's own DoFns on each element
(the same DoFn objects the default layout applies as ParDos: no stage logic lives here), and writes
output shard i-of-N for input file i of N plus each stage's rejects shard i-of-N, each sorted by id
with only that one shard in memory, as ``(id, line)`` pairs. Only counts cross a shuffle; they are
summed into the ``stats.json`` that every stage writes in the default layout.

Kept from the default layout (tests/test_shardwise.py): the same ``stats.json``, the same multiset
of kept documents and of rejects, every record accounted for (a malformed line is a counted
reject, a DoFn's failure on one element is one too, via :func:`common.per_element`), the reader's
checks (every promised input shard present, the line count against the input's ``stats.json``),
byte-identical files across runs and runners. Different: the shard count is the input file count
(``--num_shards`` / ``--num_reject_shards`` do not apply), and a document stays in the shard of its
input file, so shard sizes follow the input's.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import common


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a per-input chain.

  ``steps`` are its DoFns in order: each main output feeds the next step, a
  ``TaggedOutput(common.REJECTS_TAG)`` is one of the stage's rejects. ``directory`` receives the
  stage's ``stats.json`` and ``rejects/``. The steps' ``setup`` / ``teardown`` are called; a step
  with its own ``start_bundle`` / ``finish_bundle`` is refused, since it would not be called per
  bundle here.
  """

  name: str
  steps: tuple
  directory: str

  def __post_init__(self):
    for step in self.steps:
      if any(getattr(type(step), hook) is not getattr(beam.DoFn, hook)
             for hook in ("start_bundle", "finish_bundle")):
        raise common.StageError(f"{self.name}: {type(step).__name__} has bundle hooks, which the "
                                "per-input layout does not call.")


class ReadDocShard(beam.DoFn):
  """A stage shard's path -> its lines as documents, or as counted rejects (the default reader's
  rule, :func:`common.parse_line`). Lines are split as ``ReadAllFromText`` splits them (``\\n`` or
  ``\\r\\n``), read as bytes, so invalid UTF-8 is one ``bad_record``."""

  def __init__(self, stage: str):
    self._stage = stage

  def process(self, path: str) -> Iterator[Any]:
    counter = Metrics.counter(self._stage, "in")
    for line in read_lines(path):
      counter.inc()
      yield common.parse_line(self._stage, line)


def read_lines(path: str) -> Iterator[bytes]:
  """The lines of a file, streamed, without their ``\n`` / ``\r\n``, compression from the
  file name: what ``ReadAllFromText`` gives the default reader."""
  with FileSystems.open(path) as f:
    for line in f:
      yield _strip_newline(line)


def _strip_newline(line: bytes) -> bytes:
  if line.endswith(b"\n"):
    line = line[:-1]
    if line.endswith(b"\r"):
      line = line[:-1]
  return line


class ShardOutputs:
  """What one input file gave: the last stage's kept rows, each stage's reject rows and counts.

  Rows are ``(id, line)`` pairs, encoded once (:func:`common.encode_row`) and never parsed again.
  """

  def __init__(self, num_stages: int):
    self.kept: list[tuple[str, str]] = []
    self.rejects: list[list[tuple[str, str]]] = [[] for _ in range(num_stages)]
    self.counts = [collections.Counter() for _ in range(num_stages)]

  def route(self, stage: int, outputs: Iterable[Any]) -> list[Any]:
    """Files the rejects among ``outputs`` under ``stage``; returns the main outputs."""
    main = []
    for output in outputs:
      if isinstance(output, beam.pvalue.TaggedOutput):
        if output.tag != common.REJECTS_TAG:
          raise common.StageError(f"A stage DoFn emitted to output {output.tag!r}: only "
                                  f"{common.REJECTS_TAG!r} is known in the per-input layout.")
        self.rejects[stage].append(common.encode_row(output.value))
        self.counts[stage]["dropped." + output.value["reason"]] += 1
      else:
        main.append(output)
    return main

  def count_items(self) -> Iterator[tuple[tuple[int, str], int]]:
    for stage, counter in enumerate(self.counts):
      for key, n in sorted(counter.items()):
        yield (stage, key), n


class _ProcessFile(beam.DoFn):
  """``(i, path)`` -> writes output shard i-of-N and each stage's rejects shard i-of-N; emits
  ``((stage index, "in" | "kept" | "dropped.<reason>"), n)`` counts.

  The stage DoFns run inside this one: their counters (``common.keep`` / ``common.reject``) are Beam
  Metrics of this step, so the Dataflow UI shows the same counter names as in the default layout.
  """

  def __init__(self, source: beam.DoFn, stages: Sequence[Stage], docs_dir: str, num_files: int):
    self._source = source
    self._stages = tuple(stages)
    self._docs_dir = docs_dir
    self._num_files = num_files
    self._progress = common.CountProgress(stages[0].name)

  def _dofns(self) -> list[beam.DoFn]:
    return [self._source] + [step for stage in self._stages for step in stage.steps]

  def setup(self):
    for dofn in self._dofns():
      dofn.setup()

  def process(self, indexed_path: tuple[int, str]):
    index, path = indexed_path
    outputs = ShardOutputs(len(self._stages))
    for element in self._source.process(path) or ():
      self._progress.count()
      self._through_stages(element, outputs)
    self._write(index, outputs)
    yield from outputs.count_items()

  def _through_stages(self, element: Any, outputs: ShardOutputs) -> None:
    """One element of the source through every stage: the source's rejects are the first
    stage's, each stage's survivors are the next stage's input."""
    items = [element]
    for k, stage in enumerate(self._stages):
      outputs.counts[k]["in"] += len(items)
      if k:  # The first stage's ``in`` is counted by the source, as its reader does by default.
        Metrics.counter(stage.name, "in").inc(len(items))
      items = outputs.route(k, items)
      for step in stage.steps:
        items = outputs.route(k, [out for item in items for out in (step.process(item) or ())])
      outputs.counts[k]["kept"] += len(items)
      if not items:
        return
    outputs.kept.extend(common.encode_row(doc) for doc in items)

  def _write(self, index: int, outputs: ShardOutputs) -> None:
    n = self._num_files
    common.write_sorted_rows(
        common.shard_path(self._docs_dir, common.DOCS_PREFIX, index, n), outputs.kept)
    for stage, rows in zip(self._stages, outputs.rejects):
      rejects_dir = FileSystems.join(stage.directory, common.REJECTS_DIR)
      common.write_sorted_rows(common.shard_path(rejects_dir, common.REJECTS_TAG, index, n), rows)

  def finish_bundle(self):
    self._progress.finish_bundle()

  def teardown(self):
    for dofn in self._dofns():
      dofn.teardown()
    self._progress.teardown()


def write_all_stats(items, stages: Sequence[Stage], expected_in: int | None, input_path: str,
                    finish: Callable[[list[dict[str, Any]]], Any] | None) -> list[dict[str, Any]]:
  """Every stage's ``stats.json`` from the summed counts (and the input's line-count check)."""
  by_stage: list[list[tuple[str, int]]] = [[] for _ in stages]
  for (k, key), n in items:
    by_stage[k].append((key, n))
  stats = [common.make_stats(stage.name, sorted(by_stage[k])) for k, stage in enumerate(stages)]
  if expected_in is not None:
    common.check_line_count(stats[0]["in"], input_path, expected_in)
  for stage, stage_stats in zip(stages, stats):
    common.write_stats(stage.directory, stage_stats)
  if finish is not None:
    finish(stats)
  return stats


def run_chain(files: Sequence[str], source: beam.DoFn, stages: Sequence[Stage], docs_dir: str,
              options, expected_in: int | None = None, input_path: str = "",
              finish: Callable[[list[dict[str, Any]]], Any] | None = None):
  """Runs ``stages`` over every input file, one file per DoFn call; returns the finished
  PipelineResult (its metrics hold the stages' counters).

  ``source.process(path)`` yields the first stage's input elements (and its reader rejects, as
  ``TaggedOutput``); the last stage's kept documents go to ``docs_dir``. ``expected_in`` is checked
  against the first stage's ``in`` (a truncated or replaced input shard); ``finish(stats)`` gets
  every stage's stats once they are written (the fused job writes its own from them).
  """
  if not stages:
    raise common.StageError("A per-input chain needs at least one stage.")
  p = beam.Pipeline(options=options)
  _ = (
      p
      | "Files" >> beam.Create(list(enumerate(files)))
      # Without it a runner fuses Create with the next step, and one worker reads every file.
      | "SpreadFiles" >> beam.Reshuffle()
      | "PerInputFile" >> beam.ParDo(_ProcessFile(source, stages, docs_dir, len(files)))
      | "SumCounts" >> beam.CombinePerKey(sum)
      | "AllCounts" >> beam.combiners.ToList()
      | "WriteStats" >> beam.Map(write_all_stats, stages, expected_in, input_path, finish)
  )
  result = p.run()
  result.wait_until_finish()
  return result


def check_no_shard_count(num_shards: int, num_reject_shards: int) -> None:
  """Refuses the flags that fix a shard count: here the input fixes it."""
  fixed = [flag for flag, n in (("num_shards", num_shards), ("num_reject_shards", num_reject_shards))
           if n]
  if fixed:
    raise common.StageError(
        f"--shard_layout={common.PER_INPUT} writes one shard per input file: "
        f"{', '.join('--' + f for f in fixed)} cannot be combined with it.")


def run_doc_stage(stage: str, args: argparse.Namespace, options,
                  steps: Sequence[beam.DoFn]) -> dict[str, Any]:
  """:func:`common.run_doc_stage` in the per-input layout: the stage's ``steps`` on every file."""
  check_no_shard_count(args.num_shards, getattr(args, "num_reject_shards", 0))
  files = common.stage_input_files(args.input)
  expected = common.expected_kept(args.input)
  logging.info("%s: %s -> %s (%d input shards, per-input layout)", stage, args.input,
               args.output_dir, len(files))
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    run_chain(files, ReadDocShard(stage), [Stage(stage, tuple(steps), tmp_dir)], tmp_dir, options,
              expected_in=expected, input_path=args.input)
  return common.read_stats(args.output_dir)
