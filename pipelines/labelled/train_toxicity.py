"""Trains the toxicity classifier and writes ``pipelines/toxicity_words/classifier.json``.

    python -m pipelines.labelled.train_toxicity [--output=...]

Full-batch gradient descent on the class-balanced logistic loss with L2 regularisation, from
zero weights, for a fixed number of steps: no randomness, so the same word lists and data give
the same weights (written rounded to 6 decimals). Prints precision/recall/F1 on the disjoint eval
set at the default threshold.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipelines import toxicity
from pipelines.labelled import toxicity_data


def design_matrix(texts: list[str]) -> np.ndarray:
  """Dense ``[N, HASH_DIM + dense]`` features (the training set is small enough)."""
  n_dense = len(toxicity.DENSE_NAMES)
  x = np.zeros((len(texts), toxicity.HASH_DIM + n_dense))
  for row, text in enumerate(texts):
    indices, values, dense = toxicity.features(text)
    x[row, indices] = values
    x[row, toxicity.HASH_DIM:] = dense
  return x


def train(
    examples: list[tuple[str, int]], steps: int = 400, learning_rate: float = 2.0,
    l2: float = 1e-4,
) -> toxicity.Classifier:
  x = design_matrix([t for t, _ in examples])
  y = np.array([label for _, label in examples], dtype=np.float64)
  # Class-balanced weights: each class contributes half of the loss.
  sample_weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean())) / len(y)
  w, b = np.zeros(x.shape[1]), 0.0
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    g = sample_weight * (p - y)
    w -= learning_rate * (x.T @ g + l2 * w)
    b -= learning_rate * g.sum()
  return toxicity.Classifier(b, w[:toxicity.HASH_DIM], w[toxicity.HASH_DIM:])


def metrics(scores: list[float], labels: list[int], threshold: float) -> dict[str, float]:
  predicted = [bool(s > threshold) for s in scores]
  tp = sum(p and y for p, y in zip(predicted, labels))
  fp = sum(p and not y for p, y in zip(predicted, labels))
  fn = sum(not p and y for p, y in zip(predicted, labels))
  precision = tp / (tp + fp) if tp + fp else 1.0
  recall = tp / (tp + fn) if tp + fn else 1.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default=toxicity.CLASSIFIER_PATH)
  args = parser.parse_args(argv)
  model = train(toxicity_data.build("train"))
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(model.to_json(), f, separators=(",", ":"))
    f.write("\n")
  toxicity.classifier.cache_clear()
  evaluation = toxicity_data.build("eval")
  scores = [toxicity.classifier(args.output).logit(t) for t, _ in evaluation]
  probs = [float(1.0 / (1.0 + np.exp(-z))) for z in scores]
  result = metrics(probs, [y for _, y in evaluation], toxicity.ToxicityConfig().threshold)
  print(f"wrote {args.output}; eval {json.dumps(result)}")
  return result


if __name__ == "__main__":
  main()
