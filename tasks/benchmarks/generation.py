"""Generation benchmarks: generate until a stop sequence, extract the answer, compare.

Templates and stop sequences are lm-evaluation-harness's. Answer extraction:

* GSM8K ``strict``: the number after ``#### `` (regex ``#### (\\-?[0-9\\.\\,]+)``);
  ``flexible``: the last number in the output (``(-?[$0-9.,]{2,})|(-?[0-9]+)``);
* MATH: the content of the last ``\\boxed{...}``;
* TriviaQA / NQ / BBH: the output itself, compared after the standard SQuAD/TriviaQA
  normalisation (lower case, no punctuation, no articles, single spaces) against every alias.

``maj@k``: the most frequent extracted answer among k samples (ties: the first seen) is scored.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Sequence

GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
NO_MATCH = "[invalid]"


def gsm8k_text(doc) -> str:
  return f"Question: {doc['question']}\nAnswer:"


def gsm8k_target(doc) -> str:
  return doc["answer"]


def gsm8k_answers(doc) -> list[str]:
  return [extract_gsm8k_strict(doc["answer"])]


def extract_gsm8k_strict(text: str) -> str:
  match = GSM8K_STRICT.search(text)
  return match.group(1).strip() if match else NO_MATCH


def extract_gsm8k_flexible(text: str) -> str:
  matches = GSM8K_FLEXIBLE.findall(text)
  if not matches:
    return NO_MATCH
  last = matches[-1]
  return next(group for group in last if group).strip()


def clean_number(text: str) -> str:
  """'$1,234.' -> '1234' (lm-eval's gsm8k ignore list: commas, dollar signs, a final full stop)."""
  return text.replace(",", "").replace("$", "").rstrip(".")


def math_text(doc) -> str:
  return f"Problem:\n{doc['problem']}\n\nSolution:"


def math_target(doc) -> str:
  return doc["solution"]


def math_answers(doc) -> list[str]:
  return [extract_boxed(doc["solution"])]


def extract_boxed(text: str) -> str:
  """Content of the last ``\\boxed{...}`` (balanced braces), else NO_MATCH."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return NO_MATCH
  depth, i = 0, start + len("\\boxed")
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i + 1:j].strip()
  return NO_MATCH


def triviaqa_text(doc) -> str:
  return f"Question: {doc['question']}?\nAnswer:"


def triviaqa_target(doc) -> str:
  return doc["answer"]["aliases"][0]


def triviaqa_answers(doc) -> list[str]:
  return list(doc["answer"]["aliases"])


def nq_text(doc) -> str:
  return f"Q: {doc['question']}?\nA:"


def nq_target(doc) -> str:
  return doc["answer"][0]


def nq_answers(doc) -> list[str]:
  return list(doc["answer"])


BBH_ANSWER = re.compile(r"(?<=the answer is )(.*)(?=.)")  # lm-eval's bbh cot get-answer filter.


def extract_bbh_answer(text: str) -> str:
  """The text after the first "the answer is ", without its last character (the full stop),
  stripped (lm-eval's regex filter, first match)."""
  match = BBH_ANSWER.search(text)
  return match.group(1).strip() if match else NO_MATCH


def bbh_target(doc) -> str:
  return doc["target"]


def bbh_answers(doc) -> list[str]:
  return [doc["target"]]


def normalize_answer(text: str) -> str:
  """The SQuAD / TriviaQA answer normalisation."""
  text = text.lower()
  text = "".join(c for c in text if c not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """lm-eval's post-processing: the text before the first occurrence of each stop sequence."""
  for stop in until:
    if stop:
      text = text.split(stop)[0]
  return text


def majority(answers: Sequence[str]) -> str:
  """maj@k: the most frequent answer, ties to the one seen first."""
  counts = collections.Counter(answers)
  best = max(counts.values())
  return next(a for a in answers if counts[a] == best)


def exact_match(prediction: str, golds: Sequence[str], normalize: Callable[[str], str]) -> float:
  return float(any(normalize(prediction) == normalize(g) for g in golds))


# Each extractor: (name, function from raw output to answer, normalisation for comparison).
EXTRACTORS: dict[str, Callable[[str], str]] = {
    "gsm8k_strict": extract_gsm8k_strict,
    "gsm8k_flexible": extract_gsm8k_flexible,
    "boxed": extract_boxed,
    "bbh_cot": extract_bbh_answer,
    "exact_match": lambda text: text.strip(),  # lm-eval's remove_whitespace filter (both ends).
}
NORMALIZERS: dict[str, Callable[[str], str]] = {
    "number": clean_number,
    "squad": normalize_answer,
    "strip": lambda text: text.strip(),
}


def per_example_scores(targets: Sequence[dict[str, Any]], predictions: Sequence[Sequence[str]]
                       ) -> dict[str, list[float]]:
  """{metric: [score per example]}: each target names its extractors and golds; each prediction
  is the list of k (already stop-cut) outputs, scored by majority vote of extracted answers."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  out: dict[str, list[float]] = collections.defaultdict(list)
  for target, outputs in zip(targets, predictions):
    normalize = NORMALIZERS[target["normalize"]]
    for name in target["extractors"]:
      answer = majority([EXTRACTORS[name](o) for o in outputs])
      out[name].append(exact_match(answer, target["answers"], normalize))
  return dict(out)


def generation_metrics(targets, predictions) -> dict[str, float]:
  """seqio predict metric: mean exact match per extractor."""
  per = per_example_scores(targets, predictions)
  return {name: sum(v) / len(v) for name, v in per.items()}
