"""Precision/recall of the PII detectors and the toxicity scorer on the labelled sets.

    python -m benchmarks.pii_toxicity_eval [--per_type=30] [--seed=0]

PII: Faker values (six locales) planted into stdlib docstring sentences plus hard negatives,
scored per type (pipelines/labelled/pii_data.py). Toxicity: the held-out eval set
(pipelines/labelled/toxicity_data.py) at the stage's default threshold and a few others.
"""

from __future__ import annotations

import argparse
import time

from pipelines import pii, toxicity
from pipelines.labelled import pii_data, toxicity_data, train_toxicity


def pii_table(per_type: int, seed: int) -> None:
  start = time.perf_counter()
  examples = pii_data.positives(per_type, seed) + pii_data.hard_negatives(per_type, seed)
  counts = pii_data.evaluate(examples)
  elapsed = time.perf_counter() - start
  planted = sum(len(e.planted) for e in examples)
  print(f"PII: {len(examples)} texts, {planted} planted values, "
        f"{len(examples) - sum(bool(e.planted) for e in examples)} hard negatives "
        f"({elapsed:.1f}s)")
  print(f"{'type':<12} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
  for name, c in counts.items():
    print(f"{name:<12} {c.tp:>5} {c.fp:>4} {c.fn:>4} {c.precision:>9.3f} {c.recall:>7.3f}")
  print(f"planted values left after redaction: {len(pii_data.leaks(examples))}")
  for example in examples:
    found = {(m.type, m.value) for m in pii.find_pii(example.text)}
    for pii_type, value in sorted(found - set(example.planted)):
      print(f"  false positive {pii_type}: {value!r}")
    for pii_type, value in sorted(set(example.planted) - found):
      print(f"  missed {pii_type}: {value!r}")


def toxicity_table() -> None:
  evaluation = toxicity_data.build("eval")
  scores = [toxicity.score(text) for text, _ in evaluation]
  labels = [label for _, label in evaluation]
  print(f"\nToxicity: {len(evaluation)} eval texts ({sum(labels)} toxic), "
        f"disjoint from the {len(toxicity_data.build('train'))} training texts")
  print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6} {'fp':>4} {'fn':>4}")
  default = toxicity.ToxicityConfig().threshold
  for threshold in sorted({0.3, default, 0.7, 0.9}):
    m = train_toxicity.metrics(scores, labels, threshold)
    mark = "  <- default" if threshold == default else ""
    print(f"{threshold:>9.2f} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
          f"{m['fp']:>4} {m['fn']:>4}{mark}")
  for (text, label), s in zip(evaluation, scores):
    if (s > default) != bool(label):
      print(f"  {'missed' if label else 'false positive'} ({s:.3f}): {text[:100]!r}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_type", type=int, default=30,
                      help="Planted values per locale and PII type.")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  pii_table(args.per_type, args.seed)
  toxicity_table()


if __name__ == "__main__":
  main()
