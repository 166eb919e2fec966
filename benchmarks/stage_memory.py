"""Peak memory of every Beam stage, and of the tokenizer-training sampler, at 1x, 10x and 100x the sample.

A data stage that holds its input in memory works on the sample and dies on Common Crawl. This
runs each stage alone, in a fresh process (so the peak is that stage's: the child's own ``VmHWM``,
``harness.peak_rss_mib``), on input of ``scale`` shards of the 1x size: the sample's extracted
documents, one copy per shard under new ids with a word changed per copy (so dedupe sees distinct
documents, not one cluster), and for extract and the fused filter job ``scale`` copies of each
sample WARC file. So the scale is the number of input shards of one size, and a stage whose memory
does not depend on the input size is flat across the rows.

Every stage that has the per-input layout (``--shard_layout=per_input``, pipelines/shardwise.py:
quality, pii, toxicity, decontaminate, extract, filter; dedupe, tokenize and crawl, which shuffle
through spill files, pipelines/spill.py) is measured in both layouts; train_tokenizer with
``--sample_docs`` in the one it has (``shard_layout`` of the row: ``by_size``).

The crawl's input is a synthetic site served on loopback by this process (:class:`SyntheticSite`,
stdlib ``http.server``, one server per origin; the measured crawl is the child process): at scale
``s``, ``5 s`` origins of 10 pages of about 20 KB each (an index page linking to 9 others), so 1x
is a small crawl of 50 pages and the scale is the number of origins, each one ``FetchHost`` call's
worth of pages. Every page is fetched (``--max_depth=1``, ``--min_delay=0``). The WARC files and
the fetch log's shards follow the data as in a real crawl, with targets scaled down to this size
(``CRAWL_TARGET_WARC_BYTES``, ``CRAWL_TARGET_LOG_BYTES``), so their counts grow with the scale and
one WARC file's writer merges about the same number of spill files at every scale.

    .venv/bin/python -m benchmarks.stage_memory [--scales=1,10,100] [--extract_scales=1,10] \
        [--stages=quality,...] [--layouts=by_size,per_input] [--append]

``--append`` adds rows to the existing result file, e.g. the per-input WARC stages at 100x (which
the default layout would take hours and gigabytes for): ``--append --scales= --extract_scales=100
--stages=extract,filter --layouts=per_input``, or the crawl alone: ``--append --stages=crawl
--extract_scales=`` (the sample is only extracted when a document or WARC stage is selected).

Writes benchmarks/results/stage_memory.json: per stage, layout and scale, input documents, peak RSS
(MiB), wall and CPU seconds, stats and output bytes. The input is made from the sample's own
extract output (made first, at 1x).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import http.server
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import harness

BY_SIZE, PER_INPUT = "by_size", "per_input"  # pipelines.common.SHARD_LAYOUTS
# (stage, layouts) on the document input; extract and filter run on the WARCs.
DOC_STAGES = (("quality", (BY_SIZE, PER_INPUT)), ("pii", (BY_SIZE, PER_INPUT)),
              ("toxicity", (BY_SIZE, PER_INPUT)), ("dedupe", (BY_SIZE, PER_INPUT)),
              ("decontaminate", (BY_SIZE, PER_INPUT)),
              ("train_tokenizer", (BY_SIZE,)), ("tokenize", (BY_SIZE, PER_INPUT)))
WARC_STAGES = (("extract", (BY_SIZE, PER_INPUT)), ("filter", (BY_SIZE, PER_INPUT)))
CRAWL_STAGES = (("crawl", (BY_SIZE, PER_INPUT)),)  # On a SyntheticSite.
SAMPLE_WARCS = "data/sample/*.warc.gz"
CRAWL_ORIGINS_1X, CRAWL_PAGES_PER_ORIGIN, CRAWL_PAGE_BYTES = 5, 10, 20_000
# Per WARC file and per fetch log shard: 1x is about 0.7 MB of WARC records and 50 log lines.
CRAWL_TARGET_WARC_BYTES, CRAWL_TARGET_LOG_BYTES = 2**20, 2**18


def _peak_wrapper(argv: list[str]) -> list[str]:
  """argv as `python -c`: imports the stage module and calls its main(argv) (its classes keep their
  module, so Beam can pickle them), then prints the process's own peak RSS as its last line."""
  module, *rest = argv
  code = (f"import importlib, sys\n"
          f"from benchmarks import harness\n"
          f"try:\n  importlib.import_module({module!r}).main({rest!r})\n"
          f"finally:\n  print('PEAK_RSS_MIB', harness.peak_rss_mib(), file=sys.stderr)\n")
  return ["-c", code]


def measure(argv: list[str]) -> dict:
  start = time.perf_counter()
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = subprocess.run([sys.executable, *_peak_wrapper(argv)], capture_output=True, text=True)
  wall = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_MIB")]
  if proc.returncode != 0 or not peak:
    raise SystemExit(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
  return {"peak_rss_mib": round(float(peak[-1].split()[1]), 1), "wall_s": round(wall, 2),
          "cpu_s": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 2)}


def _outputs(out_dir: str) -> dict:
  """What a stage wrote: its stats.json, the bytes of all its files, its kept-document shards."""
  stats_path = os.path.join(out_dir, "stats.json")
  stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
  files = [p for p in glob.glob(os.path.join(out_dir, "**", "*"), recursive=True) if os.path.isfile(p)]
  out = {"stats": stats, "output_bytes": sum(os.path.getsize(p) for p in files),
         "output_shards": len(glob.glob(os.path.join(out_dir, "docs-*.jsonl")))}
  for key, pattern in (("warc_files", "*.warc.gz"), ("fetch_log_shards", "fetches-*.jsonl")):
    found = glob.glob(os.path.join(out_dir, pattern))  # A crawl's output (counts from the data).
    if found:
      out[key] = len(found)
  return out


def repeat_docs(src_dir: str, out_dir: str, scale: int) -> int:
  """Writes `scale` shards, each one copy of a stage directory's documents (new ids, one word
  changed per copy), sorted by id as a stage writes them."""
  from pipelines import common
  docs = [json.loads(line) for path in sorted(glob.glob(os.path.join(src_dir, "docs-*.jsonl")))
          for line in open(path)]
  os.makedirs(out_dir)
  n = 0
  for copy in range(scale):
    rows = []
    for doc in docs:
      words = doc["text"].split(" ")
      if copy:
        words[copy % len(words)] = f"copy{copy}"
      rows.append(common.encode_row({**doc, "id": f"{doc['id']}-{copy}", "text": " ".join(words)}))
    n += len(rows)
    common.write_sorted_rows(common.shard_path(out_dir, common.DOCS_PREFIX, copy, scale), rows)
  common.write_stats(out_dir, common.make_stats("repeat", [("in", n), ("kept", n)]))
  open(os.path.join(out_dir, common.SUCCESS_MARKER), "w").close()
  return n


def repeat_warcs(out_dir: str, scale: int) -> str:
  """`scale` copies of each sample WARC file, as files of the 1x size."""
  os.makedirs(out_dir)
  for path in sorted(glob.glob(SAMPLE_WARCS)):
    name = os.path.basename(path).split(".", 1)[0]
    for copy in range(scale):  # The source name (up to the first dot) stays the sample's.
      shutil.copyfile(path, os.path.join(out_dir, f"{name}.{copy:05d}.warc.gz"))
  return os.path.join(out_dir, "*.warc.gz")


class SyntheticSite:
  """``origins`` HTTP servers on 127.0.0.1 (one port each, so one origin each), each serving
  ``/`` linking to ``/p1`` .. ``/p<pages - 1>``; every page about ``page_bytes`` of HTML made of
  seeded random words (as compressible as text, so the gzipped WARC records keep most of their
  size), the same on every request. robots.txt is 404: allow all."""

  def __init__(self, origins: int, pages: int = CRAWL_PAGES_PER_ORIGIN,
               page_bytes: int = CRAWL_PAGE_BYTES):
    site = self
    self._pages, self._page_bytes = pages, page_bytes

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        body = site.page(self.server.server_address[1], self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

      def log_message(self, *args):
        pass

    self._servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
                     for _ in range(origins)]
    for server in self._servers:
      server.daemon_threads = True
      threading.Thread(target=server.serve_forever, daemon=True).start()

  @property
  def seeds(self) -> list[str]:
    return [f"http://127.0.0.1:{s.server_address[1]}/" for s in self._servers]

  def page(self, port: int, path: str) -> bytes | None:
    names = ["/"] + [f"/p{i}" for i in range(1, self._pages)]
    if path not in names:
      return None
    rng = random.Random(f"{port}{path}")
    links = "".join(f'<a href="{name}">{name}</a> ' for name in names[1:]) if path == "/" else ""
    words, size = [], 0
    while size < self._page_bytes:
      word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
      words.append(word)
      size += len(word) + 1
    return (f"<html><head><title>{path}</title></head><body><p>{links}</p><p>"
            f"{' '.join(words)}</p></body></html>").encode("utf-8")

  def close(self) -> None:
    for server in self._servers:
      server.shutdown()
      server.server_close()


def crawl_argv(layout: str, seeds: str, out: str) -> list[str]:
  """The crawl of a SyntheticSite: every page fetched, as fast as loopback allows."""
  argv = ["pipelines.crawl", f"--seeds={seeds}", f"--output_dir={out}", "--allow_loopback",
          "--min_delay=0", "--max_depth=1", f"--max_pages={CRAWL_PAGES_PER_ORIGIN}",
          f"--target_warc_bytes={CRAWL_TARGET_WARC_BYTES}",
          f"--target_shard_bytes={CRAWL_TARGET_LOG_BYTES}"]
  if layout == PER_INPUT:
    argv += [f"--shard_layout={PER_INPUT}"]
  return argv


def stage_argv(stage: str, layout: str, inp: str, out: str, work: str, sample_docs: int) -> list[str]:
  argv = [f"pipelines.{stage}", f"--input={inp}", f"--output_dir={out}"]
  if stage in ("extract", "filter"):
    argv += ["--languages=en"]
  if layout == PER_INPUT:
    argv += [f"--shard_layout={PER_INPUT}"]
  if stage == "train_tokenizer":
    argv += ["--vocab_size=4096", f"--sample_docs={sample_docs}"]
  if stage == "tokenize":
    argv += [f"--tokenizer={work}/tokenizer-1x/tokenizer.model"]
  return argv


def _selected(stage: str, layouts: tuple[str, ...], args) -> list[str]:
  return [layout for layout in layouts if stage in args.stages and layout in args.layouts]


def _appended(path: str, result: dict) -> dict:
  """``result``'s rows added to those of the result file at ``path`` (a row of the same stage,
  layout and scale replaced), with every run's command and load average kept in ``runs``."""
  with open(path) as f:
    old = json.load(f)
  key = lambda row: (row["stage"], row.get("shard_layout", BY_SIZE), row["scale"])
  new_keys = {key(row) for row in result["rows"]}
  rows = [row for row in old["rows"] if key(row) not in new_keys] + result["rows"]
  old_runs = old.get("runs") or [{k: old.get(k) for k in ("command", "load_average", "finished")}]
  runs = old_runs + result["runs"]
  return {**result, "rows": rows, "runs": runs}


def _row(stage: str, layout: str, scale: int, argv: list[str], out: str) -> dict:
  row = {"stage": stage, "shard_layout": layout, "scale": scale, **measure(argv), **_outputs(out)}
  print(json.dumps(row), flush=True)
  shutil.rmtree(out, ignore_errors=True)
  return row


def crawl_rows(args, work: str) -> list[dict]:
  """The crawl's rows: each scale's SyntheticSite, crawled in each selected layout."""
  rows = []
  for scale in args.scales:
    for stage, layouts in CRAWL_STAGES:
      selected = _selected(stage, layouts, args)
      if not selected:
        continue
      site = SyntheticSite(CRAWL_ORIGINS_1X * scale)
      try:
        seeds = os.path.join(work, f"seeds-{scale}x.txt")
        with open(seeds, "w") as f:
          f.write("\n".join(site.seeds) + "\n")
        for layout in selected:
          out = os.path.join(work, f"{stage}-{layout}-{scale}x")
          row = _row(stage, layout, scale, crawl_argv(layout, seeds, out), out)
          row["documents_in"] = row["stats"]["in"]  # URLs attempted.
          row["page_bytes"] = CRAWL_PAGE_BYTES
          rows.append(row)
      finally:
        site.close()
  return rows


def sample_rows(args, work: str) -> list[dict]:
  """The WARC and document stages' rows, on copies of the sample (extracted first, at 1x)."""
  rows = []
  base = os.path.join(work, "extract-1x")
  measure(["pipelines.extract", f"--input={SAMPLE_WARCS}", f"--output_dir={base}",
           "--languages=en"])
  sample_docs = sum(1 for path in glob.glob(os.path.join(base, "docs-*.jsonl")) for _ in open(path))
  for scale in args.extract_scales:
    inp = repeat_warcs(os.path.join(work, f"warc-{scale}x"), scale)
    for stage, layouts in WARC_STAGES:
      for layout in _selected(stage, layouts, args):
        out = os.path.join(work, f"{stage}-{layout}-{scale}x")
        row = _row(stage, layout, scale, stage_argv(stage, layout, inp, out, work, sample_docs), out)
        row["documents_in"] = row["stats"]["in"]
        rows.append(row)
    shutil.rmtree(os.path.dirname(inp), ignore_errors=True)
  # The tokenizer that tokenize uses at every scale (trained on the 1x sample).
  measure(["pipelines.train_tokenizer", f"--input={base}",
           f"--output_dir={work}/tokenizer-1x", "--vocab_size=4096"])
  for scale in args.scales:
    inp = os.path.join(work, f"docs-{scale}x")
    n = repeat_docs(base, inp, scale)
    for stage, layouts in DOC_STAGES:
      for layout in _selected(stage, layouts, args):
        out = os.path.join(work, f"{stage}-{layout}-{scale}x")
        row = _row(stage, layout, scale, stage_argv(stage, layout, inp, out, work, sample_docs), out)
        row["documents_in"] = n
        if stage == "train_tokenizer":
          row["sample_docs"] = sample_docs  # The 1x document count, at every scale.
        rows.append(row)
    shutil.rmtree(inp, ignore_errors=True)
  return rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ints = lambda s: [int(x) for x in s.split(",") if x]
  names = lambda s: [x for x in s.split(",") if x]
  parser.add_argument("--scales", type=ints, default=[1, 10, 100])
  parser.add_argument("--extract_scales", type=ints, default=[1, 10])
  parser.add_argument("--stages", type=names,
                      default=[s for s, _ in WARC_STAGES + DOC_STAGES + CRAWL_STAGES],
                      help="Stages to measure (default: all).")
  parser.add_argument("--layouts", type=names, default=[BY_SIZE, PER_INPUT],
                      help="Shard layouts to measure (default: both).")
  parser.add_argument("--append", action="store_true",
                      help="Add the rows to the existing --result file (replacing rows of the same "
                      "stage, layout and scale) instead of starting a new one.")
  parser.add_argument("--result", default=os.path.join(harness.RESULTS_DIR, "stage_memory.json"))
  args = parser.parse_args(argv)
  work = tempfile.mkdtemp(prefix="gf-memory-")
  try:
    rows = crawl_rows(args, work)
    if any(_selected(stage, layouts, args) for stage, layouts in WARC_STAGES + DOC_STAGES):
      rows += sample_rows(args, work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  run = {"command": " ".join(["python -m benchmarks.stage_memory", *(argv or sys.argv[1:])]),
         "load_average": os.getloadavg(),
         "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  result = {"benchmark": "stage_memory", "rows": rows, "machine": harness.machine(),
            "libraries": harness.library_versions(), "runs": [run], **run}
  if args.append:
    result = _appended(args.result, result)
  if args.result != "none":
    print(f"wrote {harness.write_result(result, args.result)}")
  return result


if __name__ == "__main__":
  main()
