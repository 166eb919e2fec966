"""Bytes each Beam stage shuffles, per input document, in both shard layouts: what a Dataflow run
of the stage would move through its shuffle service.

    .venv/bin/python -m benchmarks.shuffle_bytes [--scale=10] [--extract_scale=1]
        [--stages=quality,...] [--layouts=by_size,per_input]

Each stage runs alone in a fresh process on the input benchmarks/stage_memory.py builds (its
``repeat_docs`` / ``repeat_warcs``, ``stage_argv``), with ``--runner`` set to
:class:`ShuffleMeasuringRunner`: Beam's own local runner (the FnApiRunner the DirectRunner uses
for batch), which sizes every element a GroupByKey is given (:class:`_SizedGroupByKey`, put in
place of each GroupByKey before the run) and, for a combine, reads the runner's element count and
sampled size of its output. A GroupByKey
inside a CombinePerKey is counted at the combine's output instead (one element per key: runners
lift the combiner before the shuffle, so that is the least it moves). The bytes are the elements'
encoded size (key and value) in the coder Beam picks for the GroupByKey's input, every element
sized (not the SDK's usual sample): what a runner's shuffle carries, before any compression and
without the few bytes of window and timestamp per element.

Writes benchmarks/results/shuffle_bytes.json: per stage and layout, documents in, the stage's
stats, and the shuffled elements and bytes (per GroupByKey and in total);
benchmarks/scale_plan.py projects them per page to a Common Crawl snapshot. The per-input layouts of
dedupe and tokenize shuffle through spill files instead (pipelines/spill.py): their files are
not counted here (the jobs log their size).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

from apache_beam.metrics import monitoring_infos
from apache_beam.portability import common_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pipeline import PTransformOverride

from benchmarks import harness
from benchmarks import stage_memory

OUT_ENV = "GF_SHUFFLE_BYTES_OUT"  # Where the runner appends one JSON line per pipeline run.
RESULT = os.path.join(harness.RESULTS_DIR, "shuffle_bytes.json")


def combine_outputs(proto) -> dict[str, str]:
  """``{pcollection id: transform name}`` of each CombinePerKey's output: what its shuffle moves
  at least, one element per key, since runners combine before the shuffle."""
  transforms = proto.components.transforms
  return {pc: t.unique_name for t in transforms.values()
          if t.spec.urn == common_urns.composites.COMBINE_PER_KEY.urn for pc in t.outputs.values()}


def shuffle_totals(shuffled: dict[str, str], infos) -> dict[str, dict[str, float]]:
  """``{transform: {"elements", "bytes"}}`` from the run's monitoring infos."""
  counts, sizes = {}, {}
  for info in infos:
    pcollection = info.labels.get("PCOLLECTION")
    if pcollection not in shuffled:
      continue
    if info.urn == monitoring_infos.ELEMENT_COUNT_URN:
      counts[pcollection] = counts.get(pcollection, 0) + monitoring_infos.extract_counter_value(info)
    elif info.urn == monitoring_infos.SAMPLED_BYTE_SIZE_URN:
      n, total, _, _ = monitoring_infos.extract_distribution(info)
      prev_n, prev_total = sizes.get(pcollection, (0, 0))
      sizes[pcollection] = (prev_n + n, prev_total + total)
  out: dict[str, dict[str, float]] = {}
  for pcollection, name in sorted(shuffled.items()):
    n, total = sizes.get(pcollection, (0, 0))
    elements = counts.get(pcollection, 0)
    entry = out.setdefault(name, {"elements": 0, "bytes": 0.0})
    entry["elements"] += elements
    entry["bytes"] += elements * total / n if n else 0.0
  return out


SIZE_NAMESPACE = "gf_shuffle_bytes"  # Counters: "<transform>/elements", "<transform>/bytes".


class _SizeElements(beam.DoFn):
  def __init__(self, name: str, coder):
    self._name, self._coder = name, coder

  def setup(self):
    self._elements = Metrics.counter(SIZE_NAMESPACE, f"{self._name}/elements")
    self._bytes = Metrics.counter(SIZE_NAMESPACE, f"{self._name}/bytes")

  def process(self, element):
    self._elements.inc()
    self._bytes.inc(len(self._coder.encode(element)))
    yield element


class _SizedGroupByKey(beam.PTransform):
  """A GroupByKey whose input elements are each sized with the input's coder first."""

  def __init__(self, name: str):
    super().__init__()
    self._name = name

  def expand(self, pcoll):
    coder = beam.coders.registry.get_coder(pcoll.element_type)
    return (pcoll | "Size" >> beam.ParDo(_SizeElements(self._name, coder))
            | "GroupByKey" >> beam.GroupByKey())


class _SizeEveryGroupByKey(PTransformOverride):
  """Replaces each GroupByKey outside a CombinePerKey by :class:`_SizedGroupByKey`."""

  def matches(self, applied):
    if not isinstance(applied.transform, beam.GroupByKey):
      return False
    parent = applied.parent
    while parent is not None:
      if isinstance(parent.transform, (beam.CombinePerKey, _SizedGroupByKey)):
        return False
      parent = parent.parent
    return True

  def get_replacement_transform_for_applied_ptransform(self, applied):
    return _SizedGroupByKey(applied.full_label)


class ShuffleMeasuringRunner(FnApiRunner):
  """The local runner, recording what each GroupByKey of the run was given (module docstring).

  The SDK's own byte counts size a random sample of the elements (the first ten, then ever fewer),
  which left one stage's figure varying by 2x between runs; so every GroupByKey is first replaced
  by :class:`_SizedGroupByKey`, which sizes each element it is given with its PCollection's coder
  (exact, the same on every run). Combines keep the SDK's counts: their elements are few and small.
  """

  def run_pipeline(self, pipeline, options):
    shuffled = combine_outputs(pipeline.to_runner_api())
    pipeline.replace_all([_SizeEveryGroupByKey()])
    result = super().run_pipeline(pipeline, options)
    result.wait_until_finish()
    totals = shuffle_totals(shuffled, result.monitoring_infos())
    for counter in result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(SIZE_NAMESPACE))["counters"]:
      name, kind = counter.key.metric.name.rsplit("/", 1)
      totals.setdefault(name, {"elements": 0, "bytes": 0.0})[kind] += counter.committed
    path = os.environ.get(OUT_ENV)
    if path:
      with open(path, "a") as f:
        f.write(json.dumps(totals, sort_keys=True) + "\n")
    return result


def measure(argv: list[str], work: str) -> dict:
  """Runs ``module.main(argv)`` in a fresh process under the measuring runner; returns the
  shuffles summed over the pipelines it ran."""
  out = os.path.join(work, "shuffle.jsonl")
  if os.path.exists(out):
    os.remove(out)
  module, *rest = argv
  rest = rest + ["--runner=benchmarks.shuffle_bytes.ShuffleMeasuringRunner"]
  code = f"import importlib\nimportlib.import_module({module!r}).main({rest!r})\n"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**os.environ, OUT_ENV: out})
  if proc.returncode != 0 or not os.path.exists(out):
    raise SystemExit(f"{module} failed:\n{proc.stderr[-3000:]}")
  by_transform: dict[str, dict[str, float]] = {}
  for line in open(out):
    for name, entry in json.loads(line).items():
      total = by_transform.setdefault(name, {"elements": 0, "bytes": 0.0})
      total["elements"] += entry["elements"]
      total["bytes"] += entry["bytes"]
  return {"shuffles": {k: {"elements": v["elements"], "bytes": round(v["bytes"])}
                       for k, v in sorted(by_transform.items())},
          "shuffled_elements": sum(v["elements"] for v in by_transform.values()),
          "shuffled_bytes": round(sum(v["bytes"] for v in by_transform.values()))}


def _row(stage: str, layout: str, scale: int, argv: list[str], out: str, work: str,
         documents_in=None) -> dict:
  row = {"stage": stage, "shard_layout": layout, "scale": scale, **measure(argv, work)}
  stats_path = os.path.join(out, "stats.json")
  row["stats"] = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
  # Extract and the fused job: the WARC records they read (scale_plan counts pages from stats).
  row["documents_in"] = documents_in if documents_in is not None else row["stats"]["in"]
  print(json.dumps({k: v for k, v in row.items() if k not in ("shuffles", "stats")}), flush=True)
  shutil.rmtree(out, ignore_errors=True)
  return row


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  names = lambda s: [x for x in s.split(",") if x]
  parser.add_argument("--scale", type=int, default=10, help="Input shards for the document stages.")
  parser.add_argument("--extract_scale", type=int, default=1,
                      help="Copies of each sample WARC file for extract and the fused job.")
  parser.add_argument("--stages", type=names,
                      default=[s for s, _ in stage_memory.WARC_STAGES + stage_memory.DOC_STAGES])
  parser.add_argument("--layouts", type=names, default=[stage_memory.BY_SIZE, stage_memory.PER_INPUT])
  parser.add_argument("--result", default=RESULT)
  args = parser.parse_args(argv)
  selected = lambda stage, layouts: [l for l in layouts if stage in args.stages and l in args.layouts]
  work = tempfile.mkdtemp(prefix="gf-shuffle-")
  rows = []
  try:
    base = os.path.join(work, "extract-1x")
    stage_memory.measure(["pipelines.extract", f"--input={stage_memory.SAMPLE_WARCS}",
                          f"--output_dir={base}", "--languages=en"])
    sample_docs = sum(1 for name in os.listdir(base) if name.startswith("docs-")
                      for _ in open(os.path.join(base, name)))
    warcs = stage_memory.repeat_warcs(os.path.join(work, "warcs"), args.extract_scale)
    for stage, layouts in stage_memory.WARC_STAGES:
      for layout in selected(stage, layouts):
        out = os.path.join(work, f"{stage}-{layout}")
        argv_ = stage_memory.stage_argv(stage, layout, warcs, out, work, sample_docs)
        rows.append(_row(stage, layout, args.extract_scale, argv_, out, work))
    stage_memory.measure(["pipelines.train_tokenizer", f"--input={base}",
                          f"--output_dir={work}/tokenizer-1x", "--vocab_size=4096"])
    docs = os.path.join(work, "docs")
    n = stage_memory.repeat_docs(base, docs, args.scale)
    for stage, layouts in stage_memory.DOC_STAGES:
      for layout in selected(stage, layouts):
        out = os.path.join(work, f"{stage}-{layout}")
        argv_ = stage_memory.stage_argv(stage, layout, docs, out, work, sample_docs)
        rows.append(_row(stage, layout, args.scale, argv_, out, work, documents_in=n))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  result = {"benchmark": "shuffle_bytes", "rows": rows, "machine": harness.machine(),
            "libraries": harness.library_versions(),
            "command": " ".join(["python -m benchmarks.shuffle_bytes", *(argv or sys.argv[1:])]),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  if args.result != "none":
    print(f"wrote {harness.write_result(result, args.result)}")
  return result


if __name__ == "__main__":
  main()
