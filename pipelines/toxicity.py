"""Toxicity stage: scores each document in [0, 1] and drops those above a threshold.

The score is a small logistic regression (numpy only, weights in
``pipelines/toxicity_words/classifier.json``) over two kinds of features:

* hashed word, word-bigram and character 3-5-gram counts of the normalised text, L2-normalised
  so that a long document is judged by what most of it says;
* lexicon densities: hits per 100 words of the word lists in ``pipelines/toxicity_words/`` by
  category (slur, obscene, insult, mild) and of second-person pronouns. Density, not presence:
  one "damn" in a long technical page scores low, a short insult scores high.

Matching is robust to the usual obfuscations: case, accents, leetspeak (``sh1t``, ``a$$``),
masking (``f*ck``, ``f**k``), repeated letters (``fuuuck``) and spaced letters (``f u c k``), and
it works on whole tokens, so "Scunthorpe", "assess", "class" and "cocktail" never match.

Tag-then-filter: ``doc["scores"]["toxicity"]`` is always set; documents scoring above
:class:`ToxicityConfig`'s threshold are dropped as ``toxic``. Retrain the classifier with
``python -m pipelines.labelled.train_toxicity`` after changing a word list or the features.

Run: ``python -m pipelines.toxicity --input=<pii dir> --output_dir=<dir> [--threshold=0.5]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import re
import sys
import unicodedata
import zlib
from typing import Sequence

import apache_beam as beam
import numpy as np

from pipelines import common

STAGE = "toxicity"
WORDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toxicity_words")
CLASSIFIER_PATH = os.path.join(WORDS_DIR, "classifier.json")

CATEGORIES = ("slur", "obscene", "insult", "mild")
_SEVERITY = ("mild", "insult", "obscene", "slur")
SECOND_PERSON = frozenset(
    "you your youre yourself u ur du dich dir dein deine tu toi te ton ta tes vous ti tus".split()
)
HASH_DIM = 1 << 13
MAX_TOKENS = 5000  # Hashed features of longer documents use their first MAX_TOKENS tokens.
# Per-token results are memoised across documents (words repeat, Zipf) in two LRU caches of this
# size: they hold the working vocabulary of web text and, full, take about 36 MiB together however
# many documents a worker sees (measured in docs/benchmarks.md).
WORD_CACHE_SIZE = 1 << 16

_TOKEN_RE = re.compile(r"[\w*#@$!]+")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i"})
_MASK_CHARS = "*#"


# ----------------------------------------------------------------------------- normalisation


def _strip_accents(text: str) -> str:
  text = text.replace("ß", "ss")
  return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def normalize_token(token: str) -> str:
  """Lower case, no accents, leetspeak undone (only in tokens that also hold letters)."""
  token = _strip_accents(token.lower()).rstrip("!")
  if len(token) > 2 and token[0] == token[-1] == "*":
    token = token.strip("*")  # *emphasis*
  if any(ch.isalpha() for ch in token) and any(not ch.isalpha() for ch in token):
    token = token.translate(_LEET)
  return token


@functools.lru_cache(maxsize=WORD_CACHE_SIZE)
def _token_of(raw: str) -> str:
  """:func:`normalize_token`, with symbols stripped from tokens without letters ('' to skip)."""
  token = normalize_token(raw)
  if not any(ch.isalpha() for ch in token):
    token = token.strip("*#@$!")
  return token


def tokens(text: str) -> list[str]:
  """Normalised tokens; runs of three or more single letters (``f u c k``) are joined."""
  out: list[str] = []
  run: list[str] = []
  for raw in _TOKEN_RE.findall(text):
    token = _token_of(raw)
    if not token:
      continue
    if len(token) == 1 and token.isalpha():
      run.append(token)
      continue
    if run:
      out.extend(["".join(run)] if len(run) >= 3 else run)
      run = []
    out.append(token)
  if run:
    out.extend(["".join(run)] if len(run) >= 3 else run)
  return out


def _forms(token: str) -> tuple[str, ...]:
  """The token with letter runs of 3+ shortened to 2 and to 1 (``fuuuck`` -> ``fuuck``, ``fuck``)."""
  return (token, re.sub(r"(.)\1{2,}", r"\1\1", token), re.sub(r"(.)\1+", r"\1", token))


# ----------------------------------------------------------------------------- lexicon


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Word lists: exact words, ``stem*`` prefixes and ``*stem`` suffixes, each with a category.

  ``prefixes`` and ``suffixes`` are sorted by stem; a token matching several stems gets the
  category of the first. :meth:`category` finds it with dict look-ups of the token's own prefixes
  and suffixes (``_prefix_of`` / ``_suffix_of``) instead of trying every stem.
  """

  exact: dict[str, str]
  prefixes: tuple[tuple[str, str], ...]
  suffixes: tuple[tuple[str, str], ...]
  _prefix_of: dict[str, str] = dataclasses.field(init=False, repr=False, compare=False)
  _suffix_of: dict[str, str] = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "_prefix_of", dict(self.prefixes))
    object.__setattr__(self, "_suffix_of", dict(self.suffixes))

  @classmethod
  def from_dir(cls, directory: str) -> "Lexicon":
    exact, prefixes, suffixes = {}, {}, {}
    files = sorted(f for f in os.listdir(directory) if f.endswith(".txt"))
    if not files:
      raise common.StageError(f"No word lists (*.txt) in {directory}.")
    for name in files:
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
          line = line.split("#", 1)[0].strip()
          if not line:
            continue
          parts = line.split("\t")
          if len(parts) != 2 or parts[1] not in CATEGORIES:
            raise common.StageError(
                f"{name}:{line_no}: expected 'word<TAB>category' with a category in "
                f"{CATEGORIES}, got {line!r}."
            )
          word, category = _strip_accents(parts[0].lower()), parts[1]
          if word.endswith("*"):
            prefixes[word[:-1]] = category
          elif word.startswith("*"):
            suffixes[word[1:]] = category
          else:
            exact[word] = category
    return cls(exact, tuple(sorted(prefixes.items())), tuple(sorted(suffixes.items())))

  def category(self, token: str) -> str | None:
    """The category of a normalised token, or None."""
    if any(ch in _MASK_CHARS for ch in token):
      return self._masked(token)
    for form in _forms(token):
      if form in self.exact:
        return self.exact[form]
      # Stems that are prefixes of one form are prefixes of each other, so the first in sorted
      # order is the shortest.
      for end in range(len(form) + 1):
        category = self._prefix_of.get(form[:end])
        if category is not None:
          return category
      # Suffix stems of one form are not sorted by length: take the first in sorted order.
      stems = [form[start:] for start in range(1, len(form) + 1) if form[start:] in self._suffix_of]
      if stems:
        return self._suffix_of[min(stems)]
    return None

  def _masked(self, token: str) -> str | None:
    """``f*ck``, ``f**k``, ``f*cking``: each mask character stands for one letter.

    A masked token can fit several words (``f***``: fuck, fags); the least severe category wins.
    """
    if not any(ch.isalpha() for ch in token) or len(token) < 3:
      return None
    fits = [c for w, c in self.exact.items() if _fits(token, w)]
    fits += [c for stem, c in self.prefixes if len(token) >= len(stem) and _fits(token[:len(stem)], stem)]
    fits += [c for stem, c in self.suffixes if len(token) > len(stem) and _fits(token[-len(stem):], stem)]
    return min(fits, key=_SEVERITY.index) if fits else None


def _fits(masked: str, word: str) -> bool:
  return len(masked) == len(word) and all(
      m == w or m in _MASK_CHARS for m, w in zip(masked, word)
  )


@functools.cache
def lexicon() -> Lexicon:
  return Lexicon.from_dir(WORDS_DIR)


# ----------------------------------------------------------------------------- features

DENSE_NAMES = tuple(f"{c}_per_100_words" for c in CATEGORIES) + ("you_per_100_words",)


def _hash(feature: str) -> int:
  return zlib.crc32(feature.encode("utf-8")) % HASH_DIM


@functools.lru_cache(maxsize=WORD_CACHE_SIZE)
def _word_features(word: str) -> tuple[str | None, bytes]:
  """A word's lexicon category and the hashed indices of its ``w:`` and ``c:`` 3-5-gram features.

  The indices are kept as uint16 bytes (HASH_DIM <= 2**16): compact in the cache, and a
  document's words join into one array with a single ``np.frombuffer``. ``lexicon()`` is loaded
  once per process, so a cached category never goes stale.
  """
  padded = f" {word} "
  indices = [_hash("w:" + word)]
  for size in (3, 4, 5):
    indices.extend(_hash("c:" + padded[j:j + size]) for j in range(len(padded) - size + 1))
  return lexicon().category(word), np.array(indices, dtype=np.uint16).tobytes()


def _floats(values) -> np.ndarray:
  return np.array(list(values), dtype=np.float64)


def _weighted_counts(indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """``[HASH_DIM]`` sums of ``weights`` per index (integer-valued: exact in float64)."""
  totals = np.bincount(indices, weights=weights, minlength=HASH_DIM)
  return totals.astype(np.float64, copy=False)  # bincount gives int64 zeros for no indices.


def features(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(hashed indices, their L2-normalised values, dense lexicon features)`` of ``text``.

  Counts are small integers, so adding a repeated word's or bigram's features once, weighted by
  its count, gives exactly the values of adding them at every position.
  """
  words = tokens(text)
  word_counts = collections.Counter(words)
  hits: collections.Counter[str | None] = collections.Counter()
  for word, k in word_counts.items():
    hits[_word_features(word)[0]] += k
  n = max(len(words), 1)
  you = sum(k for word, k in word_counts.items() if word in SECOND_PERSON)
  dense = np.array(
      [math.log1p(100.0 * hits[c] / n) for c in CATEGORIES] + [math.log1p(100.0 * you / n)]
  )
  head = words[:MAX_TOKENS]
  head_counts = collections.Counter(head) if len(words) > MAX_TOKENS else word_counts
  word_parts = [_word_features(word)[1] for word in head_counts]
  word_totals = _weighted_counts(
      np.frombuffer(b"".join(word_parts), dtype=np.uint16),
      np.repeat(_floats(head_counts.values()), [len(p) // 2 for p in word_parts]))
  bigram_counts = collections.Counter(zip(head, head[1:]))
  bigram_totals = _weighted_counts(
      np.array([_hash(f"b:{a} {b}") for a, b in bigram_counts], dtype=np.uint16),
      _floats(bigram_counts.values()))
  totals = word_totals + bigram_totals
  indices = np.flatnonzero(totals)
  values = totals[indices]
  if values.size:
    values /= np.linalg.norm(values)
  return indices, values, dense


# ----------------------------------------------------------------------------- classifier


@dataclasses.dataclass(frozen=True)
class Classifier:
  bias: float
  hashed: np.ndarray  # [HASH_DIM]
  dense: np.ndarray  # [len(DENSE_NAMES)]

  def logit(self, text: str) -> float:
    indices, values, dense = features(text)
    return float(self.bias + values @ self.hashed[indices] + dense @ self.dense)

  def to_json(self) -> dict:
    return {
        "hash_dim": HASH_DIM,
        "dense_names": list(DENSE_NAMES),
        "bias": round(float(self.bias), 6),
        "dense": [round(float(w), 6) for w in self.dense],
        "hashed": [round(float(w), 6) for w in self.hashed],
    }

  @classmethod
  def from_json(cls, record: dict) -> "Classifier":
    if record.get("hash_dim") != HASH_DIM or record.get("dense_names") != list(DENSE_NAMES):
      raise common.StageError(
          "classifier.json does not match the feature definition; retrain with "
          "`python -m pipelines.labelled.train_toxicity`."
      )
    return cls(record["bias"], np.array(record["hashed"]), np.array(record["dense"]))


@functools.cache
def classifier(path: str = CLASSIFIER_PATH) -> Classifier:
  if not os.path.exists(path):
    raise common.StageError(
        f"{path} is missing; train it with `python -m pipelines.labelled.train_toxicity`."
    )
  with open(path, encoding="utf-8") as f:
    return Classifier.from_json(json.load(f))


def score(text: str) -> float:
  """Probability-like toxicity of ``text`` in [0, 1]."""
  z = classifier().logit(text)
  return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


# ----------------------------------------------------------------------------- Beam stage


@dataclasses.dataclass(frozen=True)
class ToxicityConfig:
  """Documents whose score is above ``threshold`` are dropped."""

  threshold: float = 0.5

  def __post_init__(self):
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f"threshold must be in [0, 1], got {self.threshold}.")


class ScoreToxicity(beam.DoFn):
  """Adds ``scores.toxicity``; drops documents above the threshold."""

  def __init__(self, config: ToxicityConfig):
    self._config = config

  @common.per_element(STAGE, "toxicity_error")
  def process(self, doc: common.Doc):
    value = round(score(doc["text"]), 6)
    doc = dict(doc, scores=dict(doc.get("scores") or {}, toxicity=value))
    if value > self._config.threshold:
      yield common.reject(STAGE, "toxic", doc, toxicity=value)
    else:
      yield common.keep(STAGE, doc)


def _add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--threshold", type=float, default=ToxicityConfig().threshold,
                      help="Drop documents whose toxicity score is above this.")


def build(args: argparse.Namespace):
  """The stage's transform (docs -> kept + rejects) from its flags; the fused filter job uses it too."""
  return transform(steps(args))


def transform(dofns: tuple[beam.DoFn, ...]):
  """The transform that applies :func:`steps`' DoFn as a ParDo (the default layout)."""
  return common.dofn_transform("ScoreToxicity", *dofns)


def steps(args: argparse.Namespace) -> tuple[beam.DoFn, ...]:
  """The stage's DoFns, for ``build`` and for the per-input layout (pipelines/shardwise.py)."""
  config = ToxicityConfig(args.threshold)
  classifier()  # Fail before the pipeline starts if the weights are missing or stale.
  return (ScoreToxicity(config),)


add_args = _add_args


def main(argv: Sequence[str] | None = None) -> dict:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  dofns = steps(args)  # Built once: both layouts get these DoFns.
  return common.run_doc_stage(STAGE, args, options, transform(dofns), dofns)


if __name__ == "__main__":
  import logging

  logging.getLogger().setLevel(logging.INFO)
  print(main(sys.argv[1:]))
