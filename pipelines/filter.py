"""The fused filter job: extract -> quality -> PII -> toxicity (-> dedupe) in one Beam pipeline.

The separate stage jobs each read their input, shuffle and write every document again; at Common
Crawl scale those intermediate copies cost more than the filtering. This job reads the WARCs once
and writes the surviving documents once, while every stage keeps its own accounting exactly as its
own job writes it:

    <output_dir>/docs-XXXXX-of-NNNNN.jsonl    documents kept by the last stage (sorted shards)
    <output_dir>/stats.json                   the whole job: in = kept + dropped by "<stage>.<reason>"
    <output_dir>/stages/<stage>/stats.json    that stage's stats, as its own job writes them
    <output_dir>/stages/<stage>/rejects/      that stage's rejects, byte for byte as its own job's
    <output_dir>/_SUCCESS

Each stage is built from its own module's ``add_args`` / ``build`` (one definition of its flags and
transform), so this job and the separate jobs cannot drift apart; tests/test_filter.py compares
their outputs. The separate jobs stay, for debugging one stage.

    python -m pipelines.filter --input='data/sample/*.warc.gz' --output_dir=out/filter \
        --languages=en [--dedupe] [Beam pipeline options]

With ``--shard_layout=per_input`` each WARC file goes through every stage in one DoFn call and
gives one docs shard (pipelines/shardwise.py: no shuffle of documents, memory flat in the number of
files); ``--dedupe`` is refused there and runs as the next job.
"""

from __future__ import annotations

import argparse
import functools
import logging
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import common, dedupe, extract, pii, quality, shardwise, toxicity

STAGE = "filter"
STAGES_DIR = "stages"
# The document stages after extract, in order; dedupe only with --dedupe.
DOC_STAGES = ((quality.STAGE, quality), (pii.STAGE, pii), (toxicity.STAGE, toxicity))


def add_args(parser: argparse.ArgumentParser) -> None:
  """Every stage's own flags (argparse refuses a flag that two stages would both define)."""
  for module in (extract, quality, pii, toxicity, dedupe):
    module.add_args(parser)
  parser.add_argument("--dedupe", type=quality.parse_bool, default=False,
                      help="Also run near-duplicate removal inside the job.")


def stage_dir(output_dir: str, stage: str) -> str:
  return FileSystems.join(output_dir, STAGES_DIR, stage)


class _CountIn(common.CountProgress):
  """The ``in`` counter and the progress lines that a separate job's reader gives."""

  def __init__(self, stage: str):
    super().__init__(stage)
    self._in = Metrics.counter(stage, "in")

  def process(self, doc):
    self._in.inc()
    self.count()
    yield doc


def _job_stats_items(stage_stats: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
  """The job's stats: records in to the first stage, out of the last, drops by stage and reason."""
  items = [("in", stage_stats[0]["in"]), ("kept", stage_stats[-1]["kept"])]
  for stats in stage_stats:
    items += [(f"dropped.{stats['stage']}.{reason}", n) for reason, n in stats["dropped"].items()]
  return items


def run(args: argparse.Namespace, options=None) -> dict[str, Any]:
  if args.shard_layout == common.PER_INPUT:
    return run_per_input(args, options)
  files = extract.warc_input_files(args.input)
  stages = list(DOC_STAGES) + ([(dedupe.STAGE, dedupe)] if args.dedupe else [])
  transforms = [(name, module.build(args)) for name, module in stages]  # Config errors fail here.
  extract_config = quality.config_from_args(extract.ExtractConfig, args)
  logging.info("%s: %d WARC files -> %s (%s)", STAGE, len(files), args.output_dir,
               " -> ".join([extract.STAGE] + [name for name, _ in stages]))
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    with beam.Pipeline(options=options) as p:
      outputs = (p | "Files" >> beam.Create(files)
                 | extract.STAGE >> extract.ExtractDocs(extract_config, args.source))
      all_stats = [outputs | f"{extract.STAGE}/Report" >> _report(tmp_dir, extract.STAGE, args)]
      docs = outputs["kept"]
      for name, transform_fn in transforms:
        counted = docs | f"{name}/CountIn" >> beam.ParDo(_CountIn(name))
        result = transform_fn(counted)
        outputs = {"in": docs, "kept": result["kept"], "rejects": result[common.REJECTS_TAG]}
        all_stats.append(outputs | f"{name}/Report" >> _report(tmp_dir, name, args))
        docs = result["kept"]
      docs | "WriteKept" >> common.WriteSortedShards(tmp_dir, common.DOCS_PREFIX, args.num_shards,
                                                     args.target_shard_bytes)
      _ = (
          [s | f"Stats{i}" >> beam.Map(lambda stats, i=i: (i, stats)) for i, s in enumerate(all_stats)]
          | "AllStageStats" >> beam.Flatten()
          | "Collect" >> beam.combiners.ToList()
          | "WriteJobStats" >> beam.Map(lambda pairs: _write_job_stats(tmp_dir, pairs))
      )
  return common.read_stats(args.output_dir)


def _report(tmp_dir: str, stage: str, args: argparse.Namespace) -> common.WriteStageOutput:
  """A stage's stats and rejects, written as its own job writes them; kept docs flow on unwritten."""
  return common.WriteStageOutput(stage_dir(tmp_dir, stage), stage, args.num_shards,
                                 num_reject_shards=args.num_reject_shards, write_kept=False,
                                 target_shard_bytes=args.target_shard_bytes)


def _write_job_stats(tmp_dir: str, indexed_stats) -> dict[str, Any]:
  stage_stats = [stats for _, stats in sorted(indexed_stats, key=lambda pair: pair[0])]
  return write_job_stats(tmp_dir, stage_stats)


def write_job_stats(tmp_dir: str, stage_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
  return common.write_stats(tmp_dir, common.make_stats(STAGE, _job_stats_items(stage_stats)))


def run_per_input(args: argparse.Namespace, options=None) -> dict[str, Any]:
  """``--shard_layout=per_input``: every WARC file goes through extract -> quality -> PII ->
  toxicity in one DoFn call and gives docs shard i-of-N and each stage's rejects shard i-of-N
  (pipelines/shardwise.py); the stats files are the default layout's.

  ``--dedupe`` is refused: near-duplicates are found across all files (a global step), so dedupe
  runs as the next job, ``python -m pipelines.dedupe --input=<this output_dir>
  --shard_layout=per_input`` (its own per-input layout, pipelines/dedupe_shardwise.py).
  """
  if args.dedupe:
    raise common.StageError(
        f"--dedupe cannot run inside the --shard_layout={common.PER_INPUT} job (dedupe compares "
        "documents across all files): run `python -m pipelines.dedupe --input=<output_dir> "
        f"--shard_layout={common.PER_INPUT}` after it.")
  shardwise.check_no_shard_count(args.num_shards, args.num_reject_shards)
  files = extract.warc_input_files(args.input)
  extract_config = quality.config_from_args(extract.ExtractConfig, args)
  with common.atomic_output_dir(args.output_dir) as tmp_dir:
    stages = [shardwise.Stage(extract.STAGE, extract.steps(extract_config),
                              stage_dir(tmp_dir, extract.STAGE))]
    stages += [shardwise.Stage(name, tuple(module.steps(args)), stage_dir(tmp_dir, name))
               for name, module in DOC_STAGES]
    logging.info("%s: %d WARC files -> %s (%s, per-input layout)", STAGE, len(files),
                 args.output_dir, " -> ".join(stage.name for stage in stages))
    shardwise.run_chain(files, extract.ReadWarcRecords(args.source), stages, tmp_dir, options,
                        finish=functools.partial(write_job_stats, tmp_dir))
  return common.read_stats(args.output_dir)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  return run(args, options)


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  print(main())
