"""Docs/s per core of our quality, PII, toxicity and MinHash steps, side by side with datatrove's.

    python -m benchmarks.pipeline_throughput [--num_docs=10000] [--input=<extract dir>] \
        [--repeats=1] [--memory_docs=100000] [--beam_docs=0] [--output_json=<file>]

What is timed is the per-document core work: the pure functions that each stage's DoFn calls, one
document at a time, in this one process and thread, measured in CPU seconds (``time.process_time``)
so that docs/s is per core and other processes on a shared machine do not count against either side.
Beam's overhead is left out (``--beam_docs`` times the real DirectRunner jobs for context).

=========  ======================================  ===============================================
step       ours                                    datatrove 0.10.1
=========  ======================================  ===============================================
quality    ``quality.score_document`` +            ``C4QualityFilter`` -> ``GopherQualityFilter``
           ``first_failure``: C4 line cleaning,    -> ``GopherRepetitionFilter`` (English: spaCy's
           then every Gopher rule on the cleaned   blank tokenizer), stopping at the first filter
           text (tag-then-filter: all rules are    that drops the document, as a datatrove
           computed for every document)            pipeline does
pii        ``pii.redact``: 7 types, validated      ``PIIFormatter``: emails and IPv4 only
toxicity   ``toxicity.score``                      none (datatrove has no toxicity step)
minhash    ``dedupe.minhash`` + ``band_keys``      ``MinhashDedupSignature.get_shingles`` +
                                                   ``get_signature``
=========  ======================================  ===============================================

Both MinHash sides use word 5-grams, 14 bands x 8 rows, 64-bit xxhash. datatrove's C4 filter is set
to our C4 settings where it has the same knob (no curly-bracket page rule, at least 3 sentences).

Input: the texts of a finished extract directory (default: ``pipelines.extract`` is run on
``data/sample/*.warc.gz`` into ``<work_dir>/extract`` once), repeated to ``--num_docs`` documents;
every copy after the first has its lines shuffled by a seeded RNG, so all documents are real text,
the same for both sides and the same on every run.

Memory: ``--memory_docs=N`` runs each side alone in a fresh subprocess that streams N documents
through all of its steps, and reports its peak RSS (``ru_maxrss``) after warm-up, after N/10
documents and after N, so that growth with the number of documents is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterator, Sequence

STEPS = ("quality", "pii", "toxicity", "minhash")
COMPARABLE = ("quality", "pii", "minhash")  # The steps datatrove has.
SAMPLE_WARCS = "data/sample/*.warc.gz"
_WARM_UP_TEXT = "Warm-up text. It loads every model and word list.\nThe second line is here too."


# ----------------------------------------------------------------------------- input


def extract_sample(work_dir: str) -> str:
  """The extract directory of the bundled sample, made once with ``pipelines.extract``."""
  from pipelines import common, extract

  output_dir = os.path.join(work_dir, "extract")
  if not os.path.exists(os.path.join(output_dir, common.SUCCESS_MARKER)):
    extract.main([f"--input={SAMPLE_WARCS}", f"--output_dir={output_dir}"])
  return output_dir


def read_texts(input_dir: str) -> list[str]:
  """The ``text`` of every document of a stage directory, in shard and line order."""
  from pipelines import common

  texts = []
  for path in common.stage_input_files(input_dir):
    with open(path, encoding="utf-8") as f:
      texts.extend(json.loads(line)["text"] for line in f)
  texts = [t for t in texts if t.strip()]
  if not texts:
    raise ValueError(f"{input_dir} has no documents with text to benchmark on.")
  return texts


def documents(texts: Sequence[str], num_docs: int, seed: int = 0) -> Iterator[str]:
  """``num_docs`` texts: ``texts`` in order, then copies with their lines shuffled (seeded)."""
  for i in range(num_docs):
    text = texts[i % len(texts)]
    if i >= len(texts):
      lines = text.split("\n")
      random.Random(f"{seed}:{i}").shuffle(lines)
      text = "\n".join(lines)
    yield text


# ----------------------------------------------------------------------------- the two sides


class OurSteps:
  """Our per-document functions; each returns a small value that the summary counts."""

  name = "ours"
  steps = STEPS

  def __init__(self):
    from pipelines import dedupe, pii, quality, toxicity

    self._quality, self._pii, self._toxicity, self._dedupe = quality, pii, toxicity, dedupe
    self._quality_config = quality.QualityConfig()
    self._dedupe_config = dedupe.DedupeConfig()
    self._seeds = dedupe.permutation_seeds(self._dedupe_config.num_perm, self._dedupe_config.seed)
    self._toxicity_threshold = toxicity.ToxicityConfig().threshold

  def quality(self, text: str) -> bool:
    """Whether the document is kept."""
    scores, _ = self._quality.score_document({"text": text, "url": ""}, self._quality_config)
    prefixed = {f"{self._quality.STAGE}.{k}": v for k, v in scores.items()}
    return self._quality.first_failure(prefixed, self._quality_config) is None

  def pii(self, text: str) -> bool:
    """Whether anything was redacted."""
    _, counts = self._pii.redact(text)
    return bool(counts)

  def toxicity(self, text: str) -> bool:
    """Whether the score is above the stage's default threshold."""
    return self._toxicity.score(text) > self._toxicity_threshold

  def minhash(self, text: str) -> bool:
    """Whether the document got a signature (texts without words get none)."""
    config = self._dedupe_config
    signature = self._dedupe.minhash(text, config.ngram_size, self._seeds)
    if signature is None:
      return False
    self._dedupe.band_keys(signature, config.num_bands, config.rows_per_band)
    return True


def _xxhash64_of_str(text: str) -> int:
  """datatrove's default shingle hash, for xxhash >= 4 (our pin), which only hashes bytes."""
  import xxhash

  return xxhash.xxh64_intdigest(text.encode("utf-8"))


class DatatroveSteps:
  """datatrove 0.10.1's equivalent steps, called per document as its ``run`` methods do."""

  name = "datatrove"
  steps = COMPARABLE

  def __init__(self, scratch_dir: str):
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter)
    from datatrove.pipeline.formatters import PIIFormatter

    self._document = Document
    self._filters = (
        C4QualityFilter(filter_curly_bracket=False, min_num_sentences=3),
        GopherQualityFilter(),
        GopherRepetitionFilter(),
    )
    self._pii = PIIFormatter()
    # Its writer is never run: only the signature functions are called, so nothing is written.
    self._signer = MinhashDedupSignature(
        output_folder=scratch_dir,
        config=MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8))
    try:
      self._signer._hash_func("probe")
    except TypeError:  # xxhash 4 refuses str; xxhash 3 (datatrove's tested pin) encoded it as UTF-8.
      self._signer._hash_func = _xxhash64_of_str

  def quality(self, text: str) -> bool:
    doc = self._document(text=text, id="0")
    return all(f.filter(doc) is True for f in self._filters)  # all() stops at the first drop.

  def pii(self, text: str) -> bool:
    return self._pii.format(text) != text

  def minhash(self, text: str) -> bool:
    shingles = self._signer.get_shingles(text)
    if shingles.size == 0:
      return False
    self._signer.get_signature(shingles)
    return True


def warm_up(side) -> None:
  """Loads models, word lists and tokenizers so that the first timed document pays for none."""
  for step in side.steps:
    getattr(side, step)(_WARM_UP_TEXT)


# ----------------------------------------------------------------------------- timing


def time_step(fn: Callable[[str], bool], texts: Sequence[str]) -> tuple[float, int]:
  """CPU seconds to run ``fn`` on every text, and how many calls returned True."""
  start = time.process_time()
  hits = sum(map(fn, texts))
  return time.process_time() - start, hits


def compare(texts: Sequence[str], sides: Sequence, repeats: int) -> dict:
  """``{side: {step: {"seconds", "docs_per_s", "hits"}}}``, steps interleaved side by side."""
  seconds = {s.name: {step: [] for step in s.steps} for s in sides}
  hits = {s.name: {} for s in sides}
  for _ in range(repeats):
    for step in STEPS:
      for side in sides:
        if step in side.steps:
          elapsed, hits[side.name][step] = time_step(getattr(side, step), texts)
          seconds[side.name][step].append(elapsed)
  results = {}
  for side in sides:
    results[side.name] = {}
    for step, times in seconds[side.name].items():
      median = statistics.median(times)
      results[side.name][step] = {
          "seconds": median, "docs_per_s": len(texts) / median, "hits": hits[side.name][step]}
  return results


def total_rate(side_results: dict, steps: Sequence[str], num_docs: int) -> float:
  """Docs/s of running every document through ``steps`` one after the other."""
  return num_docs / sum(side_results[step]["seconds"] for step in steps)


def ratio_rows(results: dict, num_docs: int) -> list[tuple[str, float, float | None]]:
  """``(row, ours docs/s, datatrove docs/s or None)`` for each step and the two totals."""
  ours, theirs = results["ours"], results["datatrove"]
  rows = [(step, ours[step]["docs_per_s"], theirs[step]["docs_per_s"] if step in theirs else None)
          for step in STEPS]
  rows.append(("total (quality+pii+minhash)", total_rate(ours, COMPARABLE, num_docs),
               total_rate(theirs, COMPARABLE, num_docs)))
  rows.append(("total (all 4 ours vs datatrove's 3)", total_rate(ours, STEPS, num_docs),
               total_rate(theirs, COMPARABLE, num_docs)))
  return rows


def print_table(results: dict, num_docs: int) -> None:
  print(f"{'step':<38} {'ours docs/s':>12} {'datatrove docs/s':>17} {'ours/datatrove':>15}")
  for row, ours, theirs in ratio_rows(results, num_docs):
    if theirs is None:
      print(f"{row:<38} {ours:>12.1f} {'n/a':>17} {'n/a':>15}")
    else:
      print(f"{row:<38} {ours:>12.1f} {theirs:>17.1f} {ours / theirs:>14.2f}x")
  print("documents flagged per step (quality: kept; pii: redacted; toxicity: toxic; "
        "minhash: signed):")
  for name, side in results.items():
    print(f"  {name}: " + ", ".join(f"{step}={r['hits']}" for step, r in side.items()))


# ----------------------------------------------------------------------------- memory


def make_side(name: str, work_dir: str):
  if name == "ours":
    return OurSteps()
  if name == "datatrove":
    return DatatroveSteps(os.path.join(work_dir, "datatrove_scratch"))
  raise ValueError(f"Unknown side {name!r}: expected 'ours' or 'datatrove'.")


def _peak_rss_mib() -> float:
  """This process's peak resident set size.

  Linux's ``VmHWM`` is per address space, so it starts afresh at ``exec``; ``ru_maxrss`` would
  carry over the parent's peak at ``fork``.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def memory_worker(side_name: str, texts: Sequence[str], num_docs: int, work_dir: str) -> dict:
  """Streams ``num_docs`` documents through every step of one side; peak RSS along the way."""
  side = make_side(side_name, work_dir)
  warm_up(side)
  report = {"side": side_name, "docs": num_docs, "warm_mib": _peak_rss_mib()}
  steps = [getattr(side, step) for step in side.steps]
  checkpoint = max(num_docs // 10, 1)
  for i, text in enumerate(documents(texts, num_docs), 1):
    for step in steps:
      step(text)
    if i == checkpoint:
      report["tenth_mib"] = _peak_rss_mib()
  report["peak_mib"] = _peak_rss_mib()
  return report


def measure_memory(texts: Sequence[str], num_docs: int, work_dir: str) -> dict:
  """Runs :func:`memory_worker` for each side in its own fresh process, one after the other.

  The texts go to the workers as a JSON file, so a worker imports nothing but its own side.
  """
  os.makedirs(work_dir, exist_ok=True)
  texts_file = os.path.join(work_dir, "texts.json")
  with open(texts_file, "w", encoding="utf-8") as f:
    json.dump(list(texts), f)
  reports = {}
  for side in ("ours", "datatrove"):
    command = [sys.executable, "-m", "benchmarks.pipeline_throughput", f"--work_dir={work_dir}",
               f"--memory_worker={side}", f"--texts_file={texts_file}",
               f"--memory_docs={num_docs}"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    reports[side] = json.loads(out.strip().splitlines()[-1])
  return reports


def print_memory(reports: dict) -> None:
  num_docs = reports["ours"]["docs"]
  print(f"peak RSS (MiB), each side alone in a fresh process, {num_docs} documents streamed:")
  print(f"{'side':<10} {'after warm-up':>14} {f'after {max(num_docs // 10, 1)}':>14} "
        f"{f'after {num_docs}':>14}")
  for name, r in reports.items():
    print(f"{name:<10} {r['warm_mib']:>14.0f} {r['tenth_mib']:>14.0f} {r['peak_mib']:>14.0f}")


# ----------------------------------------------------------------------------- Beam, for context


def run_beam_jobs(texts: Sequence[str], num_docs: int, work_dir: str) -> dict:
  """Wall seconds of the quality -> pii -> toxicity -> dedupe jobs on ``num_docs`` documents."""
  from pipelines import common, dedupe, pii, quality, toxicity

  input_dir = os.path.join(work_dir, "beam", "input")
  shutil.rmtree(input_dir, ignore_errors=True)
  os.makedirs(input_dir)
  with open(common.shard_path(input_dir, common.DOCS_PREFIX, 0, 1), "w", encoding="utf-8") as f:
    for i, text in enumerate(documents(texts, num_docs)):
      doc_id = f"{common.stable_hash(f'bench-{i}'):016x}"
      f.write(common.dumps({"id": doc_id, "url": f"https://bench.example/{i}", "source": "bench",
                            "text": text}) + "\n")
  open(os.path.join(input_dir, common.SUCCESS_MARKER), "w").close()
  start = time.perf_counter()
  previous, kept = input_dir, {}
  for stage in (quality, pii, toxicity, dedupe):
    output_dir = os.path.join(work_dir, "beam", stage.STAGE)
    stats = stage.main([f"--input={previous}", f"--output_dir={output_dir}",
                        "--runner=DirectRunner"])
    kept[stage.STAGE] = stats["kept"]
    previous = output_dir
  return {"docs": num_docs, "wall_seconds": time.perf_counter() - start, "kept": kept}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_docs", type=int, default=10_000)
  parser.add_argument("--input", help="Extract directory to take texts from (default: the sample).")
  parser.add_argument("--work_dir", default="/tmp/pipeline_bench")
  parser.add_argument("--repeats", type=int, default=1, help="Timed runs per step; medians.")
  parser.add_argument("--memory_docs", type=int, default=0,
                      help="Also measure each side's peak RSS over this many documents.")
  parser.add_argument("--beam_docs", type=int, default=0,
                      help="Also time our four Beam jobs on DirectRunner on this many documents.")
  parser.add_argument("--output_json", help="Write every figure to this file.")
  parser.add_argument("--memory_worker", choices=("ours", "datatrove"), help=argparse.SUPPRESS)
  parser.add_argument("--texts_file", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for flag in ("num_docs", "repeats"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}.")
  if args.memory_docs < 0 or args.beam_docs < 0:
    parser.error("--memory_docs and --beam_docs cannot be negative.")

  if args.memory_worker:
    with open(args.texts_file, encoding="utf-8") as f:
      texts = json.load(f)
    report = memory_worker(args.memory_worker, texts, args.memory_docs, args.work_dir)
    print(json.dumps(report))
    return report

  input_dir = args.input or extract_sample(args.work_dir)
  texts = read_texts(input_dir)

  docs = list(documents(texts, args.num_docs))
  sides = [OurSteps(), DatatroveSteps(os.path.join(args.work_dir, "datatrove_scratch"))]
  for side in sides:
    warm_up(side)
  print(f"{len(docs)} documents ({len(texts)} distinct texts from {input_dir}, "
        f"{sum(map(len, docs)) / len(docs):.0f} characters on average), CPU time of one thread, "
        f"median of {args.repeats}")
  results = compare(docs, sides, args.repeats)
  print_table(results, len(docs))
  summary = {"num_docs": len(docs), "input": input_dir, "repeats": args.repeats,
             "steps": results,
             "rows": [{"row": r, "ours": o, "datatrove": t} for r, o, t in
                      ratio_rows(results, len(docs))]}
  if args.memory_docs:
    summary["memory"] = measure_memory(texts, args.memory_docs, args.work_dir)
    print_memory(summary["memory"])
  if args.beam_docs:
    summary["beam"] = beam = run_beam_jobs(texts, args.beam_docs, args.work_dir)
    print(f"Beam DirectRunner, quality -> pii -> toxicity -> dedupe jobs on {beam['docs']} "
          f"documents: {beam['wall_seconds']:.1f} s wall, {beam['docs'] / beam['wall_seconds']:.1f} "
          f"docs/s (kept after each: {beam['kept']})")
  if args.output_json:
    with open(args.output_json, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  return summary


if __name__ == "__main__":
  main()
