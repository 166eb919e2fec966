"""Our quality, PII, toxicity and MinHash steps against datatrove's, on the paired harness.

    python -m benchmarks.pipeline_throughput [--num_docs=200] [--input=<extract dir>] \
        [--benchmarks=quality,pii,minhash,total] [--pairs=7] [--warmup=1] [--output_json=<file>]

``--result=<dir>`` writes the result files there instead, ``--result=none`` writes none, and
``--output_json`` writes all of them (and the summary rows) to that one file only.

What is timed is the per-document core work: the pure functions that each stage's DoFn calls, one
document at a time, on one thread. One run of a side = its step(s) over the same N documents. Every
side is its own pinned worker of ``benchmarks/harness.py`` (interleaved rounds, CPU and wall time,
per-round ratios, load average), one benchmark per step, each writing
``benchmarks/results/pipeline_<step>.json``:

=========  ======================================  ===============================================
benchmark  ours (baseline)                         datatrove 0.10.1
=========  ======================================  ===============================================
quality    ``quality.score_document`` +            ``C4QualityFilter`` -> ``GopherQualityFilter``
           ``first_failure``: C4 line cleaning,    -> ``GopherRepetitionFilter`` (English: spaCy's
           then every Gopher rule on the cleaned   blank tokenizer), stopping at the first filter
           text (tag-then-filter: all rules are    that drops the document, as a datatrove
           computed for every document)            pipeline does
pii        ``pii.redact``: 7 types, validated      ``PIIFormatter``: emails and IPv4 only
minhash    ``dedupe.minhash`` + ``band_keys``      ``MinhashDedupSignature.get_shingles`` +
                                                   ``get_signature``
total      all four of ours (toxicity included);   its three steps (it has no toxicity step)
           also ours without toxicity and our
           ``toxicity.score`` alone as extra sides
=========  ======================================  ===============================================

Both MinHash sides use word 5-grams, 14 bands x 8 rows, 64-bit xxhash. datatrove's C4 filter is set
to our C4 settings where it has the same knob (no curly-bracket page rule, at least 3 sentences).
Each run returns how many documents it saw and how many each step kept / redacted / flagged toxic /
signed; the script checks every run of a side gives the same counts, that all sides saw N documents
and that both MinHash sides signed the same number, and records the counts in the result.

Input: the texts of a finished extract directory (default: ``pipelines.extract`` is run on
``data/sample/*.warc.gz`` into ``<work_dir>/extract`` once), repeated to ``--num_docs`` documents;
every copy after the first has its lines shuffled by a seeded RNG, so all documents are real text,
the same for both sides and the same on every run.

Memory: the harness records each side's peak RSS (``max_rss_mib``) after all its rounds; growth
with the number of documents is ``benchmarks/stage_memory.py``'s job (every stage at 1x-100x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Iterator, Sequence

from benchmarks import harness

STEPS = ("quality", "pii", "toxicity", "minhash")
COMPARABLE = ("quality", "pii", "minhash")  # The steps datatrove has.
BENCHMARKS = (*COMPARABLE, "total")  # benchmarks/results/pipeline_<name>.json
# What a step's True means, as the count recorded per run.
COUNTS = {"quality": "kept", "pii": "redacted", "toxicity": "toxic", "minhash": "signed"}
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


# ----------------------------------------------------------------------------- the two implementations


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


def warm_up(side, steps: Sequence[str]) -> None:
  """Loads models, word lists and tokenizers so that the first timed document pays for none."""
  for step in steps:
    getattr(side, step)(_WARM_UP_TEXT)


# ----------------------------------------------------------------------------- harness sides


def steps_side(implementation: str, steps: Sequence[str], input_dir: str, num_docs: int, work_dir: str):
  """Harness factory: one run = ``steps`` of ``implementation`` over the same ``num_docs`` documents."""
  if implementation == "ours":
    side = OurSteps()
  elif implementation == "datatrove":
    side = DatatroveSteps(os.path.join(work_dir, "datatrove_scratch"))
  else:
    raise ValueError(f"Unknown implementation {implementation!r}: expected 'ours' or 'datatrove'.")
  missing = set(steps) - set(side.steps)
  if missing:
    raise ValueError(f"{implementation} has no step {sorted(missing)}")
  docs = list(documents(read_texts(input_dir), num_docs))
  warm_up(side, steps)
  functions = [(COUNTS[step], getattr(side, step)) for step in steps]

  def run() -> dict:
    counts = {"docs": 0, **{count: 0 for count, _ in functions}}
    for text in docs:
      counts["docs"] += 1
      for count, fn in functions:
        counts[count] += fn(text)
    return counts

  return run, {"docs": len(docs), "characters": sum(map(len, docs)), "steps": list(steps)}


def benchmark_sides(benchmark: str, **data) -> list[harness.Side]:
  """The sides of one benchmark; the first (ours) is the baseline of every ratio."""
  def side(name, implementation, steps):
    return harness.Side(name, "benchmarks.pipeline_throughput:steps_side",
                        {"implementation": implementation, "steps": list(steps), **data})

  if benchmark in COMPARABLE:
    return [side("ours", "ours", [benchmark]), side("datatrove", "datatrove", [benchmark])]
  if benchmark == "total":
    return [side("ours", "ours", STEPS), side("datatrove", "datatrove", COMPARABLE),
            side("ours[no toxicity]", "ours", COMPARABLE), side("ours[toxicity only]", "ours", ["toxicity"])]
  raise ValueError(f"Unknown benchmark {benchmark!r}: expected one of {BENCHMARKS}")



def check_counts(result: dict, num_docs: int) -> dict:
  """Raises unless every run of a side counted the same, every side saw ``num_docs`` documents and
  all sides that sign MinHashes signed the same number; returns {side: counts}, kept in the result."""
  counts = {}
  for name, side in result["sides"].items():
    runs = side["warmup_values"] + side["values"]
    if any(run != runs[0] for run in runs):
      raise SystemExit(f"{result['benchmark']}: {name}'s runs disagree: {runs}")
    if runs[0]["docs"] != num_docs:
      raise SystemExit(f"{result['benchmark']}: {name} saw {runs[0]['docs']} documents, not {num_docs}")
    counts[name] = runs[0]
  signed = {name: c["signed"] for name, c in counts.items() if "signed" in c}
  if len(set(signed.values())) > 1:
    raise SystemExit(f"{result['benchmark']}: the sides signed different numbers of documents: {signed}")
  result["counts"] = counts
  return counts


# ----------------------------------------------------------------------------- summary


def summary_rows(results: dict) -> list[dict]:
  """One row per step and total: each side's docs per CPU second and the per-round CPU ratio
  datatrove / ours (> 1: ours is faster), from the harness results by benchmark name."""
  def rate(result, side):
    return result["sides"][side][f"{result['unit']}_per_cpu_s"]

  rows = []
  for benchmark, result in results.items():
    if benchmark == "total":
      ratios = result["ratios"]["datatrove"]["cpu"]
      rows.append({"row": "toxicity", "ours": rate(result, "ours[toxicity only]"), "datatrove": None})
      rows.append({"row": "total (quality+pii+minhash)", "ours": rate(result, "ours[no toxicity]"),
                   "datatrove": rate(result, "datatrove")})
      rows.append({"row": "total (all 4 ours vs datatrove's 3)", "ours": rate(result, "ours"),
                   "datatrove": rate(result, "datatrove"), "ratio": ratios})
    else:
      rows.append({"row": benchmark, "ours": rate(result, "ours"), "datatrove": rate(result, "datatrove"),
                   "ratio": result["ratios"]["datatrove"]["cpu"]})
  return rows


def print_rows(rows: Sequence[dict]) -> None:
  print(f"\n{'step (docs per CPU second)':<38} {'ours':>10} {'datatrove':>10}   datatrove/ours CPU per round")
  for r in rows:
    theirs = "n/a" if r["datatrove"] is None else f"{r['datatrove']:.1f}"
    ratio = r.get("ratio")
    spread = f"median {ratio['median']:.2f} (min {ratio['min']:.2f}, max {ratio['max']:.2f})" if ratio else ""
    print(f"{r['row']:<38} {r['ours']:>10.1f} {theirs:>10}   {spread}")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_docs", type=int, default=200, help="documents per run (each side, every benchmark)")
  parser.add_argument("--input", help="Extract directory to take texts from (default: the sample).")
  parser.add_argument("--work_dir", default="/tmp/pipeline_bench")
  parser.add_argument("--benchmarks", type=lambda s: s.split(","), default=list(BENCHMARKS),
                      help=f"comma-separated, from {','.join(BENCHMARKS)}")
  parser.add_argument("--output_json",
                      help="Write every benchmark's result to this one file instead of benchmarks/results/.")
  parser.add_argument("--smoke", action="store_true", help="allow fewer than harness.MIN_PAIRS rounds (tests)")
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  if args.num_docs < 1:
    parser.error(f"--num_docs must be at least 1, got {args.num_docs}.")
  unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
  if unknown:
    parser.error(f"unknown --benchmarks {unknown}; expected some of {','.join(BENCHMARKS)}")

  input_dir = os.path.abspath(args.input or extract_sample(args.work_dir))
  read_texts(input_dir)  # Fails here, not in every worker, if the directory has no texts.
  data = {"input_dir": input_dir, "num_docs": args.num_docs, "work_dir": os.path.abspath(args.work_dir)}
  results = {}
  for benchmark in args.benchmarks:
    flags = argparse.Namespace(**vars(args))
    if args.output_json:
      flags.result = "none"
    elif args.result not in (None, "none"):  # A directory: one file per benchmark.
      flags.result = os.path.join(args.result, f"pipeline_{benchmark}.json")
    results[benchmark] = harness.run_from_flags(
        f"pipeline_{benchmark}", benchmark_sides(benchmark, **data), flags, work_per_run=args.num_docs,
        unit="docs", settings={**vars(args), "benchmark": benchmark, "input": input_dir},
        allow_few_pairs=args.smoke, check=lambda result: check_counts(result, args.num_docs))
  rows = summary_rows(results)
  print_rows(rows)
  summary = {"num_docs": args.num_docs, "input": input_dir, "rows": rows, "results": results}
  if args.output_json:
    with open(args.output_json, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1, sort_keys=True)
  return summary


if __name__ == "__main__":
  main()
