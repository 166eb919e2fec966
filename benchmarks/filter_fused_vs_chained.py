"""The fused filter job against the same stages run as separate jobs: wall time, bytes written and read.

Both sides take the same WARCs through extract -> quality -> pii -> toxicity -> dedupe with the
DirectRunner, in their own pinned process (benchmarks/harness.py). Each run reports

* ``written_bytes``: the bytes of every file the run left (the chained side's intermediate stage
  directories included), and ``document_bytes_read``: the WARCs plus every document shard a later
  stage read back -- both counted from the files, so they are exact and repeatable;
* ``rchar`` / ``wchar``: the process's read/write syscall bytes during the run (/proc/self/io),
  which include what Beam and Python read and write besides the documents.

    .venv/bin/python -m benchmarks.filter_fused_vs_chained            # the sample slice below
    .venv/bin/python -m benchmarks.filter_fused_vs_chained --input='data/sample/*.warc.gz'

By default the input is tests/sample_slice.py's cut of the bundled sample (every planted kind of
page, ~60 pages), written to a temporary file: 7 pairs of the whole sample take most of an hour on
two cores.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile

from benchmarks import harness

DEFAULT_INPUT = "sample-slice"
CHAIN = ("extract", "quality", "pii", "toxicity", "dedupe")


def _io() -> dict[str, int]:
  with open("/proc/self/io") as f:
    fields = dict(line.split(": ") for line in f.read().splitlines())
  return {"rchar": int(fields["rchar"]), "wchar": int(fields["wchar"])}


def _tree_bytes(directory: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
             if os.path.isfile(p))


def _doc_bytes(directory: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "docs-*.jsonl")))


def _measured(run_once, warcs):
  """Wraps run_once(out_dir) -> document bytes read after the WARCs, with the I/O accounting."""
  warc_bytes = sum(os.path.getsize(p) for p in warcs)

  def run():
    out = tempfile.mkdtemp(prefix="gf-filter-bench-")
    try:
      before = _io()
      doc_bytes_read = run_once(out)
      after = _io()
      return {"written_bytes": _tree_bytes(out), "document_bytes_read": warc_bytes + doc_bytes_read,
              "rchar": after["rchar"] - before["rchar"], "wchar": after["wchar"] - before["wchar"]}
    finally:
      shutil.rmtree(out, ignore_errors=True)
  return run


def fused_side(input_pattern: str):
  from pipelines import filter as fused  # Imported in the worker, after pinning.

  def run_once(out):
    fused.main([f"--input={input_pattern}", f"--output_dir={out}/filter", "--languages=en",
                "--dedupe=true"])
    return 0
  return _measured(run_once, sorted(glob.glob(input_pattern))), {"job": "pipelines.filter"}


def chained_side(input_pattern: str):
  from pipelines import dedupe, extract, pii, quality, toxicity
  modules = {"extract": extract, "quality": quality, "pii": pii, "toxicity": toxicity,
             "dedupe": dedupe}

  def run_once(out):
    previous, read_back = input_pattern, 0
    for stage in CHAIN:
      flags = ["--languages=en"] if stage == "extract" else []
      modules[stage].main([f"--input={previous}", f"--output_dir={out}/{stage}", *flags])
      if stage != CHAIN[0]:
        read_back += _doc_bytes(previous)
      previous = f"{out}/{stage}"
    return read_back
  return _measured(run_once, sorted(glob.glob(input_pattern))), {"jobs": list(CHAIN)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", default=DEFAULT_INPUT)
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  if args.input == DEFAULT_INPUT:
    from tests.sample_slice import slice_sample
    args.input = os.path.join(tempfile.mkdtemp(prefix="gf-slice-"), "slice.warc.gz")
    slice_sample(args.input)
  warcs = sorted(glob.glob(args.input))
  if not warcs:
    raise SystemExit(f"No WARC files match {args.input}.")
  sides = [harness.Side("fused", "benchmarks.filter_fused_vs_chained:fused_side",
                        {"input_pattern": args.input}),
           harness.Side("chained", "benchmarks.filter_fused_vs_chained:chained_side",
                        {"input_pattern": args.input})]
  return harness.run_from_flags("filter_fused_vs_chained", sides, args, work_per_run=1, unit="runs",
                                settings={"input": args.input, "warcs": len(warcs),
                                          "warc_bytes": sum(map(os.path.getsize, warcs))})


if __name__ == "__main__":
  main()
