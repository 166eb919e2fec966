"""Removes pretraining documents that overlap an evaluation set, and reports the overlap.

As the Gemma paper does before training (and GPT-3 / PaLM before it): a document is contaminated
when it shares a word n-gram (13 words by default, after lower-casing and dropping punctuation)
with a field of an example of a registered evaluation set (a field of 8-12 words counts as one
gram; shorter fields, such as one-word answers, are not matched) (``tasks.benchmarks.BENCHMARKS``, read from the
local benchmark files). Such documents are dropped with the reason ``contaminated.<benchmark>``
(the benchmark with the most shared n-grams), counted like every other drop.

  python -m pipelines.decontaminate --input=out/dedupe --output_dir=out/decontaminate \
      [--benchmark_data=data/benchmarks] [--benchmarks=mmlu,gsm8k] [--ngram=13]
  python -m pipelines.decontaminate --report --input=out/dedupe --output_dir=out/overlap

``--report`` writes ``overlap.json`` instead: per benchmark, how many of its examples share an
n-gram with the training documents and how many documents share one with it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import common

STAGE = "decontaminate"
DEFAULT_NGRAM = 13
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def window_hashes(tokens: Sequence[str], length: int) -> set[int]:
  """Hashes of every ``length``-word window."""
  return {common.stable_hash(" ".join(tokens[i:i + length])) for i in range(len(tokens) - length + 1)}


def example_fields(benchmarks: Sequence[str] | None = None, data_root: str | None = None
                   ) -> dict[str, list[list[str]]]:
  """{benchmark: [[string fields of each eval example]]} from the local benchmark files."""
  from tasks.benchmarks import registry
  out = {}
  for name in benchmarks or sorted(registry.expand_names(None)):  # maj@k variants share files
    records = registry.load_records(registry.BENCHMARKS[name], data_root or registry.DEFAULT_DATA_ROOT)
    out[name] = [list(_strings(r)) for r in records]
  return out


def _strings(value) -> Iterable[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for key in sorted(value):
      yield from _strings(value[key])
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)


def example_grams(fields: Sequence[str], n: int, min_words: int) -> dict[int, set[int]]:
  """{length: hashes} of an example: the n-grams of each field, or a field of ``min_words``..n-1
  words as a whole; shorter fields (an answer such as "Paris") are not matched."""
  grams: dict[int, set[int]] = collections.defaultdict(set)
  for field in fields:
    tokens = words(field)
    if len(tokens) >= n:
      grams[n] |= window_hashes(tokens, n)
    elif len(tokens) >= min_words:
      grams[len(tokens)].add(common.stable_hash(" ".join(tokens)))
  return grams


def eval_index(fields: Mapping[str, Sequence[Sequence[str]]], n: int, min_words: int = 8
               ) -> dict[int, dict[int, list[str]]]:
  """{length: {gram hash: [benchmarks having it]}} over every example of every benchmark."""
  index: dict[int, dict[int, set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
  for name, examples in fields.items():
    for example in examples:
      for length, hashes in example_grams(example, n, min_words).items():
        for h in hashes:
          index[length][h].add(name)
  return {length: {h: sorted(b) for h, b in grams.items()} for length, grams in sorted(index.items())}


def shared_grams(text: str, index: Mapping[int, Mapping[int, Sequence[str]]]) -> dict[int, set[int]]:
  """{length: hashes of ``text``'s windows that are in the index}."""
  tokens = words(text)
  return {length: window_hashes(tokens, length) & grams.keys() for length, grams in index.items()}


class DropContaminated(beam.DoFn):
  """Rejects a document sharing an n-gram with an evaluation set, reason ``contaminated.<name>``."""

  def __init__(self, index: Mapping[int, Mapping[int, Sequence[str]]]):
    self._index = {length: dict(grams) for length, grams in index.items()}

  @common.per_element(STAGE, "decontaminate_error")
  def process(self, doc: common.Doc):
    hits = collections.Counter()
    for length, hashes in shared_grams(doc["text"], self._index).items():
      for h in hashes:
        for name in self._index[length][h]:
          hits[name] += 1
    if hits:
      name, count = max(sorted(hits.items()), key=lambda kv: kv[1])
      Metrics.counter(STAGE, f"overlap_ngrams.{name}").inc(count)
      yield common.reject(STAGE, f"contaminated.{name}", doc, shared_ngrams=dict(sorted(hits.items())))
    else:
      yield common.keep(STAGE, doc)


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--benchmark_data", default=None, help="Benchmark files root (default data/benchmarks).")
  parser.add_argument("--benchmarks", default=None, help="Comma-separated benchmarks (default: all registered).")
  parser.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="Words per n-gram.")
  parser.add_argument("--min_example_words", type=int, default=8,
                      help="Eval examples shorter than this are not matched.")
  parser.add_argument("--report", action="store_true", help="Write overlap.json, filter nothing.")


def _fields_from_args(args) -> dict[str, list[list[str]]]:
  return example_fields(args.benchmarks.split(",") if args.benchmarks else None, args.benchmark_data)


def overlap_report(doc_files: Sequence[str], fields: Mapping[str, Sequence[Sequence[str]]], n: int,
                   min_words: int = 8, log=print) -> dict[str, Any]:
  """Per benchmark: its examples sharing a gram with the documents, and the documents sharing one."""
  index = eval_index(fields, n, min_words)
  seen: dict[int, set[int]] = collections.defaultdict(set)
  docs_hit = collections.Counter()
  num_docs, start = 0, time.monotonic()
  for path in doc_files:
    with open(path, encoding="utf-8") as f:
      for line in f:
        doc, _, _ = common.parse_doc(line)
        if doc is None:
          continue
        num_docs += 1
        benchmarks = set()
        for length, hashes in shared_grams(doc["text"], index).items():
          seen[length] |= hashes
          benchmarks.update(b for h in hashes for b in index[length][h])
        docs_hit.update(benchmarks)
        if num_docs % 10000 == 0:
          log(f"overlap: {num_docs} documents, {num_docs / (time.monotonic() - start):.0f}/s")
  out = {"ngram": n, "min_words": min_words, "documents": num_docs, "benchmarks": {}}
  for name, examples in sorted(fields.items()):
    contaminated = sum(1 for ex in examples if any(
        hashes & seen[length] for length, hashes in example_grams(ex, n, min_words).items()))
    out["benchmarks"][name] = {"examples": len(examples), "contaminated_examples": contaminated,
                               "contaminated_share": contaminated / len(examples) if examples else 0.0,
                               "documents_overlapping": docs_hit[name]}
  return out


def main(argv: Sequence[str] | None = None) -> dict:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  fields = _fields_from_args(args)
  if args.report:
    report = overlap_report(common.stage_input_files(args.input), fields, args.ngram, args.min_example_words)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "overlap.json"), "w") as f:
      f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
  drop = DropContaminated(eval_index(fields, args.ngram, args.min_example_words))
  return common.run_doc_stage(STAGE, args, options, common.dofn_transform("DropContaminated", drop),
                              steps=[drop])


if __name__ == "__main__":
  import logging

  logging.getLogger().setLevel(logging.INFO)
  print(main(sys.argv[1:]))
