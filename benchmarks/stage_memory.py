"""Peak memory of every Beam stage, and of the tokenizer-training sampler, at 1x, 10x and 100x the sample.

A data stage that holds its input in memory works on the sample and dies on Common Crawl. This
runs each stage alone, in a fresh process (so the peak is that stage's: ``ru_maxrss`` of the
child), on input made by repeating the sample's documents ``scale`` times under new ids with a
word changed per copy (so dedupe sees distinct documents, not one cluster), and on the WARCs
repeated for extract. Memory that is flat across scales is what lets a stage run on any input.

    .venv/bin/python -m benchmarks.stage_memory [--scales=1,10,100] [--extract_scales=1,10]

Writes benchmarks/results/stage_memory.json: per stage and scale, input documents, peak RSS (MiB),
wall and CPU seconds. The input is made from the sample's own extract output (made first, at 1x).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

STAGES = ("quality", "pii", "toxicity", "dedupe", "train_tokenizer", "tokenize")
SAMPLE_WARCS = "data/sample/*.warc.gz"


def _peak_wrapper(argv: list[str]) -> list[str]:
  """argv as `python -c`: imports the stage module and calls its main(argv) (its classes keep their
  module, so Beam can pickle them), then prints the process's own peak RSS as its last line."""
  module, *rest = argv
  code = (f"import importlib, resource, sys\n"
          f"try:\n  importlib.import_module({module!r}).main({rest!r})\n"
          f"finally:\n  print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
          f"file=sys.stderr)\n")
  return ["-c", code]


def measure(argv: list[str]) -> dict:
  start = time.perf_counter()
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = subprocess.run([sys.executable, *_peak_wrapper(argv)], capture_output=True, text=True)
  wall = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
  if proc.returncode != 0 or not peak:
    raise SystemExit(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
  return {"peak_rss_mib": round(int(peak[-1].split()[1]) / 1024, 1), "wall_s": round(wall, 2),
          "cpu_s": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 2)}


def _outputs(out_dir: str) -> dict:
  """What a stage wrote: its stats.json and the bytes of its kept-document (or token) files."""
  stats_path = os.path.join(out_dir, "stats.json")
  stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
  files = [p for p in glob.glob(os.path.join(out_dir, "**", "*"), recursive=True) if os.path.isfile(p)]
  return {"stats": stats, "output_bytes": sum(os.path.getsize(p) for p in files)}


def repeat_docs(src_dir: str, out_dir: str, scale: int) -> int:
  """Writes `scale` copies of a stage directory's documents (new ids, one word changed per copy)."""
  from pipelines import common
  docs = [json.loads(line) for path in sorted(glob.glob(os.path.join(src_dir, "docs-*.jsonl")))
          for line in open(path)]
  os.makedirs(out_dir)
  n = 0
  with open(common.shard_path(out_dir, common.DOCS_PREFIX, 0, 1), "w") as f:
    for copy in range(scale):
      for doc in docs:
        words = doc["text"].split(" ")
        if copy:
          words[copy % len(words)] = f"copy{copy}"
        f.write(common.dumps({**doc, "id": f"{doc['id']}-{copy}", "text": " ".join(words)}) + "\n")
        n += 1
  common.write_stats(out_dir, common.make_stats("repeat", [("in", n), ("kept", n)]))
  open(os.path.join(out_dir, common.SUCCESS_MARKER), "w").close()
  return n


def repeat_warcs(out_dir: str, scale: int) -> str:
  """`scale` copies of the sample WARCs (gzip members concatenate, so copies are plain appends)."""
  os.makedirs(out_dir)
  for path in sorted(glob.glob(SAMPLE_WARCS)):
    data = open(path, "rb").read()
    with open(os.path.join(out_dir, os.path.basename(path)), "wb") as f:
      for _ in range(scale):
        f.write(data)
  return os.path.join(out_dir, "*.warc.gz")


def stage_argv(stage: str, inp: str, out: str, work: str) -> list[str]:
  argv = [f"pipelines.{stage}", f"--input={inp}", f"--output_dir={out}"]
  if stage == "train_tokenizer":
    argv += ["--vocab_size=4096"]
  if stage == "tokenize":
    argv += [f"--tokenizer={work}/tokenizer-1x/tokenizer.model"]
  return argv


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ints = lambda s: [int(x) for x in s.split(",")]
  parser.add_argument("--scales", type=ints, default=[1, 10, 100])
  parser.add_argument("--extract_scales", type=ints, default=[1, 10])
  parser.add_argument("--result", default=os.path.join(harness.RESULTS_DIR, "stage_memory.json"))
  args = parser.parse_args(argv)
  work = tempfile.mkdtemp(prefix="gf-memory-")
  rows = []
  try:
    base = os.path.join(work, "extract-1x")
    for scale in args.extract_scales:
      out = base if scale == 1 else os.path.join(work, f"extract-{scale}x")
      inp = repeat_warcs(os.path.join(work, f"warc-{scale}x"), scale)
      row = {"stage": "extract", "scale": scale, **measure(
          ["pipelines.extract", f"--input={inp}", f"--output_dir={out}", "--languages=en"])}
      row.update(_outputs(out))
      row["documents_in"] = row["stats"]["in"]
      rows.append(row)
      print(json.dumps(row), flush=True)
    # The tokenizer that tokenize uses at every scale (trained on the 1x sample).
    measure(["pipelines.train_tokenizer", f"--input={base}",
             f"--output_dir={work}/tokenizer-1x", "--vocab_size=4096"])
    for scale in args.scales:
      inp = os.path.join(work, f"docs-{scale}x")
      n = repeat_docs(base, inp, scale)
      for stage in STAGES:
        out = os.path.join(work, f"{stage}-{scale}x")
        row = {"stage": stage, "scale": scale, "documents_in": n,
               **measure(stage_argv(stage, inp, out, work)), **_outputs(out)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  result = {"benchmark": "stage_memory", "rows": rows, "machine": harness.machine(),
            "libraries": harness.library_versions(), "load_average": os.getloadavg(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  if args.result != "none":
    print(f"wrote {harness.write_result(result, args.result)}")
  return result


if __name__ == "__main__":
  main()
