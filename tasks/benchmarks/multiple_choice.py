"""Multiple-choice benchmarks scored by log-likelihood, with lm-evaluation-harness's templates.

Each ``*_doc`` function maps a record of the benchmark's public release to an ``MCItem``: the
query text, the choices (continuations, each scored after ``target_delimiter``) and the gold index.
Winogrande uses *partial scoring*: the option is put into the context (one context per option)
and the likelihood of the same sentence remainder is compared.

Metrics (lm-eval's): ``acc`` = argmax of the log-likelihoods is gold; ``acc_norm`` = argmax of
log-likelihood / length of the choice in characters.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class MCItem:
  query: str | tuple[str, ...]   # One context, or one per choice (partial scoring).
  choices: tuple[str, ...]       # What is scored (for partial scoring: one shared remainder).
  gold: int
  choice_texts: tuple[str, ...]  # The answer texts: exemplar targets and acc_norm's lengths.


def _letters(n: int) -> list[str]:
  return [chr(ord("A") + i) for i in range(n)]


def mmlu_doc(doc) -> MCItem:
  lines = [doc["question"].strip()] + [f"{l}. {c}" for l, c in zip(_letters(4), doc["choices"])]
  letters = tuple(_letters(len(doc["choices"])))
  return MCItem("\n".join(lines) + "\nAnswer:", letters, int(doc["answer"]), letters)


def mmlu_description(doc) -> str:
  subject = doc["subject"].replace("_", " ")
  return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _hellaswag_clean(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  text = re.sub("\\[.*?\\]", "", text)
  return text.replace("  ", " ")


def hellaswag_doc(doc) -> MCItem:
  ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
  choices = tuple(_hellaswag_clean(e) for e in doc["endings"])
  return MCItem(_hellaswag_clean(doc["activity_label"] + ": " + ctx), choices, int(doc["label"]), choices)


def piqa_doc(doc) -> MCItem:
  choices = (doc["sol1"], doc["sol2"])
  return MCItem(f"Question: {doc['goal']}\nAnswer:", choices, int(doc["label"]), choices)


def siqa_doc(doc) -> MCItem:
  choices = (doc["answerA"], doc["answerB"], doc["answerC"])
  return MCItem(f"Q: {doc['context']} {doc['question']}\nA:", choices, int(doc["label"]) - 1, choices)


def boolq_doc(doc) -> MCItem:
  return MCItem(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ("no", "yes"),
                int(bool(doc["answer"])), ("no", "yes"))


def winogrande_doc(doc) -> MCItem:
  sentence = doc["sentence"]
  if "_" not in sentence:
    raise ValueError("winogrande sentence has no '_' blank")
  blank = sentence.index("_")
  contexts = tuple(sentence[:blank] + option for option in (doc["option1"], doc["option2"]))
  remainder = sentence[blank + 1:].strip()
  return MCItem(contexts, (remainder,), {"1": 0, "2": 1}[doc["answer"]], contexts)


def commonsense_qa_doc(doc) -> MCItem:
  texts = doc["choices"]["text"]
  letters = tuple(doc["choices"]["label"])
  lines = [f"Question: {doc['question'].strip()}"] + [f"{l}. {t}" for l, t in zip(letters, texts)]
  return MCItem("\n".join(lines) + "\nAnswer:", letters, letters.index(doc["answerKey"]), letters)


def arc_doc(doc) -> MCItem:
  choices = tuple(doc["choices"]["text"])
  return MCItem(f"Question: {doc['question']}\nAnswer:", choices,
                doc["choices"]["label"].index(doc["answerKey"]), choices)


def openbookqa_doc(doc) -> MCItem:
  choices = tuple(doc["choices"]["text"])
  return MCItem(doc["question_stem"], choices, doc["choices"]["label"].index(doc["answerKey"]), choices)


def agieval_doc(doc) -> MCItem:
  options = tuple(re.sub(r"^\([A-Z]\)\s*", "", o) for o in doc["options"])
  return MCItem(f"{doc['passage']}\nQuestion: {doc['question']}\nAnswer:", options,
                _letters(len(options)).index(doc["label"]), options)


# ---- metrics ----

def choice_predictions(log_likelihoods: Sequence[float], choice_texts: Sequence[str]) -> tuple[int, int]:
  """(argmax, argmax of log-likelihood per character), lm-eval's acc / acc_norm choices."""
  lls = np.asarray(log_likelihoods, np.float64)
  lengths = np.asarray([float(len(t)) for t in choice_texts])
  return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def per_example_scores(targets: Sequence[tuple], scores: Sequence[float]) -> dict[str, list[float]]:
  """{"acc": [...], "acc_norm": [...]} per example from rows ``((example, choice), gold, chars)``
  and their log-likelihoods (rows of one example may come in any order)."""
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
  by_example: dict[int, dict[int, tuple[float, int, int]]] = {}
  for ((example, choice), gold, chars), score in zip(targets, scores):
    by_example.setdefault(int(example), {})[int(choice)] = (float(score), int(gold), int(chars))
  acc, acc_norm = [], []
  for example in sorted(by_example):
    rows = [by_example[example][c] for c in sorted(by_example[example])]
    lls = np.asarray([r[0] for r in rows])
    gold = rows[0][1]
    acc.append(float(np.argmax(lls) == gold))
    acc_norm.append(float(np.argmax(lls / np.asarray([r[2] for r in rows], np.float64)) == gold))
  return {"acc": acc, "acc_norm": acc_norm}


def mc_metrics(targets, scores) -> dict[str, float]:
  """seqio score metric: mean acc and acc_norm."""
  per = per_example_scores(targets, scores)
  return {"acc": float(np.mean(per["acc"])), "acc_norm": float(np.mean(per["acc_norm"])),
          "num_examples": float(len(per["acc"]))}
