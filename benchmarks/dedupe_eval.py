"""Recall and precision of pipelines.dedupe on planted near-duplicates of real text.

    python -m benchmarks.dedupe_eval [--num_originals=180] [--seed=0] [--texts=all] [--work_dir=DIR]

Originals are real documents: the bundled sample crawl run through ``pipelines.extract`` (five
languages), topped up with docstrings of the Python standard library (``inspect.getdoc``); only
those that pass the quality rules, with their cleaned text, as dedupe sees them in the chain. They
are cut to at most ``--max_words`` words (whole paragraphs) and chosen greedily so that no two
share 0.3 or more of their word 5-grams (true Jaccard, with the stage's own ``dedupe.shingles``).

Every original gets one normalised copy (case, punctuation, spacing: exact duplicate) and one
copy per similarity bucket, made by one of five edits (word substitution, sentence insertion,
sentence deletion, boilerplate header/footer, paragraph reordering). The edit's strength is
searched until the copy's TRUE Jaccard with its original is near a target drawn in the bucket;
an edit that cannot go low enough on its own (reordering a short page) gets substitutions on top.
Originals have the smallest URLs, so they are the kept copy of their family.

The real Beam job (``pipelines.dedupe.main``) then runs on the whole set, with exact dedup on and
off, and the script reports per bucket the share of copies dropped next to the LSH theory, and
the precision of all ``near_duplicate`` drops (true Jaccard of each dropped document with the
document it was linked to). Everything is seeded: same arguments, same figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import tempfile
import time

import numpy as np

from pipelines import common
from pipelines import dedupe
from pipelines import extract
from pipelines import quality

SAMPLE_PATTERN = "data/sample/*.warc.gz"
SAMPLE_LANGUAGES = "en,de,fr,es,it"
# Modules whose docstrings (module, public classes and functions) are real English prose.
STDLIB_MODULES = (
    "argparse", "ast", "asyncio", "bdb", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email", "enum", "filecmp", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "heapq", "hmac", "http.client", "http.cookiejar", "imaplib",
    "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing",
    "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pprint", "pydoc", "queue",
    "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile",
)
MAX_ORIGINAL_JACCARD = 0.3
# (label, low, high): a pair of true Jaccard s is in the bucket if low <= s < high. Copies are
# planted at a target drawn uniformly in [low, high) (the lowest bucket from 0.3).
BUCKETS = (
    ("1 (normalised copy)", 1.0, math.inf),
    ("0.95-1", 0.95, 1.0),
    ("0.90-0.95", 0.90, 0.95),
    ("0.85-0.90", 0.85, 0.90),
    ("0.80-0.85", 0.80, 0.85),
    ("0.70-0.80", 0.70, 0.80),
    ("0.50-0.70", 0.50, 0.70),
    ("<0.50", 0.0, 0.50),
)
LOWEST_TARGET = 0.3
# Site chrome added by the boilerplate edit; the long part is "related articles" teasers.
SITES = (
    ("Home | News | Reviews | Guides | Forum | Contact", "© 2024 Example Media. All rights reserved."),
    ("Start | Über uns | Blog | Kontakt | Impressum", "Diese Website verwendet Cookies."),
    ("Accueil | Actualités | Tutoriels | À propos", "Tous droits réservés. Mentions légales."),
    ("Menu | Docs | Download | Community | Donate", "This site uses cookies to improve your visit."),
)
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


@dataclasses.dataclass(frozen=True)
class Pair:
  """A planted copy and its original, with their true word-5-gram Jaccard similarity."""

  copy_id: str
  original_id: str
  edit: str
  target: float
  jaccard: float


# ----------------------------------------------------------------------------- real text


def sample_texts(work_dir: str) -> list[tuple[str, str]]:
  """``(url, text)`` of the bundled sample after extract (run once into ``work_dir/extract``)."""
  out = os.path.join(work_dir, "extract")
  if not os.path.exists(os.path.join(out, common.SUCCESS_MARKER)):
    extract.main([f"--input={SAMPLE_PATTERN}", f"--output_dir={out}",
                  f"--languages={SAMPLE_LANGUAGES}", "--num_shards=1"])
  texts = []
  for path in common.stage_input_files(out):
    with open(path, encoding="utf-8") as f:
      texts += [(doc["url"], doc["text"]) for doc in map(json.loads, f)]
  return sorted(texts)


def stdlib_texts(min_words: int) -> list[tuple[str, str]]:
  """``(module.name, docstring)`` of the standard library, one paragraph per line."""
  texts = {}
  for name in STDLIB_MODULES:
    module = importlib.import_module(name)
    objects = [(name, module)] + [
        (f"{name}.{attr}", value) for attr, value in sorted(vars(module).items())
        if not attr.startswith("_") and getattr(value, "__module__", None) == module.__name__
        and (inspect.isclass(value) or inspect.isfunction(value))]
    for qualname, obj in objects:
      doc = inspect.getdoc(obj) or ""
      paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc)]
      text = "\n".join(p for p in paragraphs if p)
      if len(text.split()) >= min_words:
        texts.setdefault(f"python-stdlib:{qualname}", text)
  return sorted(texts.items())


def passing_quality(texts):
  """The texts that pass ``pipelines.quality``, C4-cleaned, as dedupe sees them in the chain.

  This keeps out the sample's planted spam (keyword stuffing, repeated lines), whose few distinct
  5-grams make similarity too coarse to plant at a chosen level.
  """
  config, kept = quality.QualityConfig(), []
  for origin, text in texts:
    scores, cleaned = quality.score_document({"url": origin, "text": text}, config)
    if quality.first_failure({f"{quality.STAGE}.{k}": v for k, v in scores.items()}, config) is None:
      kept.append((origin, cleaned))
  return kept


def truncate(text: str, max_words: int) -> str:
  """The first paragraphs of ``text`` holding at most ``max_words`` words (cut inside the first if needed)."""
  kept, count = [], 0
  for line in text.split("\n"):
    words = line.split()
    if count + len(words) > max_words:
      if not kept:
        kept.append(" ".join(words[:max_words]))
      break
    if words:
      kept.append(" ".join(words))
      count += len(words)
  return "\n".join(kept)


def true_jaccard(a: set, b: set) -> float:
  return len(a & b) / len(a | b) if a or b else 1.0


def pick_originals(groups, num: int, seed: int, min_words: int, max_words: int, ngram: int):
  """Seeded greedy choice of ``num`` texts whose pairwise true Jaccard is below 0.3.

  ``groups`` are lists of ``(origin, text)``, used in order (each shuffled): later groups only
  top up what the earlier ones could not provide.
  """
  rng = random.Random(seed)
  chosen, shingle_sets = [], []
  for texts in groups:
    candidates = sorted((origin, truncate(text, max_words)) for origin, text in texts)
    rng.shuffle(candidates)
    for origin, text in candidates:
      if len(chosen) == num:
        return chosen
      if len(text.split()) < min_words:
        continue
      shingles = dedupe.shingles(text, ngram)
      if all(true_jaccard(shingles, other) < MAX_ORIGINAL_JACCARD for other in shingle_sets):
        chosen.append((origin, text))
        shingle_sets.append(shingles)
  return chosen


# ----------------------------------------------------------------------------- edits
# Each edit plans its random choices once and returns (max_strength, apply); apply(k) is the text
# with the first k planned changes, so the strength can be searched without new randomness.


def _lines(text):
  return [line.split() for line in text.split("\n")]


def _join(lines):
  return "\n".join(" ".join(words) for words in lines if words)


def _sentences(text):
  return [[s for s in _SENTENCE_END.split(line) if s] for line in text.split("\n")]


def substitute_words(text, rng, pool):
  """Replaces random words with other words drawn from the originals' vocabulary."""
  lines = _lines(text)
  slots = [(i, j) for i, words in enumerate(lines) for j in range(len(words))]
  rng.shuffle(slots)
  replacements = [pool.other_word(rng, lines[i][j]) for i, j in slots]

  def apply(k):
    edited = [list(words) for words in lines]
    for (i, j), word in zip(slots[:k], replacements):
      edited[i][j] = word
    return _join(edited)

  return len(slots), apply


def insert_sentences(text, rng, pool):
  """Inserts sentences drawn from all originals as new paragraphs at random places."""
  lines = text.split("\n")
  plan = [(rng.randrange(len(lines) + 1), rng.choice(pool.sentences))
          for _ in range(len(text.split()) // 3)]

  def apply(k):
    before = [[] for _ in range(len(lines) + 1)]  # before[i]: sentences inserted before line i
    for gap, sentence in plan[:k]:
      before[gap].append(sentence)
    edited = []
    for inserted, line in zip(before, lines + [None]):
      edited += inserted + ([line] if line is not None else [])
    return "\n".join(edited)

  return len(plan), apply


def delete_sentences(text, rng, pool):
  """Deletes random sentences."""
  del pool
  sentences = _sentences(text)
  slots = [(i, j) for i, line in enumerate(sentences) for j in range(len(line))]
  rng.shuffle(slots)

  def apply(k):
    gone = set(slots[:k])
    edited = [" ".join(s for j, s in enumerate(line) if (i, j) not in gone)
              for i, line in enumerate(sentences)]
    return "\n".join(line for line in edited if line)

  return max(len(slots) - 1, 0), apply


def add_boilerplate(text, rng, pool):
  """Adds a site's header (menu, then teasers) and footer (legal line, then teasers), word by word.

  The site's chrome is the same on all its pages; ``k`` words of it are split between header and
  footer, so small ``k`` gives fine steps (a menu) and large ``k`` a page that is mostly chrome.
  """
  site = rng.randrange(len(SITES))
  menu, legal = SITES[site]
  teasers = pool.site_teasers[site]
  header = " ".join([menu, *teasers[0::2]]).split()
  footer = " ".join([legal, *teasers[1::2]]).split()

  def apply(k):
    top, bottom = header[: (k + 1) // 2], footer[: k // 2]
    return "\n".join(part for part in (" ".join(top), text, " ".join(bottom)) if part)

  return 2 * min(len(header), len(footer)), apply


def reorder_paragraphs(text, rng, pool):
  """Moves random paragraphs to random places."""
  del pool
  lines = text.split("\n")
  moves = [(rng.randrange(len(lines)), rng.randrange(len(lines))) for _ in range(2 * len(lines))]

  def apply(k):
    edited = list(lines)
    for source, dest in moves[:k]:
      edited.insert(dest, edited.pop(source))
    return "\n".join(edited)

  return len(moves), apply


EDITS = {
    "substitute": substitute_words,
    "insert": insert_sentences,
    "delete": delete_sentences,
    "boilerplate": add_boilerplate,
    "reorder": reorder_paragraphs,
}


def normalised_copy(text: str, rng: random.Random) -> str:
  """Same text after dedupe's normalisation: some words upper-cased, punctuation and spacing changed."""
  lines = []
  for line in text.split("\n"):
    words = [word.upper() if word.isascii() and rng.random() < 0.2 else word for word in line.split()]
    lines.append("  ".join(word + ("!" if rng.random() < 0.05 else "") for word in words))
  return "\n\n".join(lines)


@dataclasses.dataclass(frozen=True)
class DonorPool:
  """Real words and sentences that copies borrow (from all originals, so nothing is invented).

  A sentence can come from the copy's own original; at the rates used that moves its similarity
  to no other document measurably, and the true Jaccard is measured after the edit anyway.
  """

  words: list
  sentences: list
  site_teasers: list

  def other_word(self, rng, word):
    while True:
      other = rng.choice(self.words)
      if other.lower() != word.lower():
        return other

  @classmethod
  def build(cls, texts, seed):
    rng = random.Random(f"{seed}-pool")
    words = sorted({w for text in texts for w in text.split()})
    sentences = sorted({s for text in texts for line in _sentences(text) for s in line
                        if 5 <= len(s.split()) <= 40})
    teasers = [rng.sample(sentences, min(len(sentences), 400)) for _ in SITES]
    return cls(words, sentences, teasers)


def plant_copy(original: str, original_shingles: set, edit: str, target: float, rng, pool, ngram):
  """Copy of ``original`` by ``edit``, with the strength whose true Jaccard is nearest ``target``.

  Returns ``(copy, edit, true Jaccard)``; the copy always differs after normalisation (< 1).
  """

  def nearest(max_k, apply):
    """``(text, similarity)`` at the strength k >= 1 whose similarity is nearest the target.

    Galloping search (k = 1, 2, 4, ...) for a k below the target, then bisection; most targets
    need few changes, so this evaluates the similarity a handful of times.
    """

    def sim(k):
      return true_jaccard(dedupe.shingles(apply(k), ngram), original_shingles)

    lo = min(1, max_k)  # At least one change.
    sim_lo = sim(lo)
    if sim_lo < target:
      return apply(lo), sim_lo
    hi, sim_hi = lo, sim_lo
    while sim_hi >= target and hi < max_k:
      lo, sim_lo = hi, sim_hi
      hi = min(2 * hi, max_k)
      sim_hi = sim(hi)
    if sim_hi >= target:  # Even the strongest edit stays above the target.
      return apply(hi), sim_hi
    while hi - lo > 1:  # sim(lo) >= target > sim(hi)
      mid = (lo + hi) // 2
      sim_mid = sim(mid)
      if sim_mid >= target:
        lo, sim_lo = mid, sim_mid
      else:
        hi, sim_hi = mid, sim_mid
    return (apply(lo), sim_lo) if sim_lo - target <= target - sim_hi else (apply(hi), sim_hi)

  text, jaccard = nearest(*EDITS[edit](original, rng, pool))
  if (jaccard > target + 0.02 or jaccard == 1.0) and edit != "substitute":
    # Too weak alone (a short page has few paragraphs to move): substitute words on top.
    text, jaccard = nearest(*substitute_words(text, rng, pool))
    edit += "+substitute"
  return text, edit, jaccard


def build_corpus(originals, seed: int, ngram: int, buckets=BUCKETS):
  """Documents (originals and copies, with ids and URLs) and the planted pairs.

  One copy per original and bucket of ``buckets`` (a subset of BUCKETS; a copy depends only on
  the seed, the original's position and its bucket, so a subset plants the same copies).
  """
  pool = DonorPool.build([text for _, text in originals], seed)
  docs, pairs, edits = [], [], list(EDITS)
  for i, (origin, text) in enumerate(originals):
    original_id = f"{i:08x}{0:08x}"
    docs.append({"id": original_id, "url": f"https://a-original.example/{i:05d}", "text": text,
                 "origin": origin, "source": "eval", "lang": "", "lang_score": 1.0})
    shingles = dedupe.shingles(text, ngram)
    for b, (label, low, high) in enumerate(BUCKETS):
      if (label, low, high) not in buckets:
        continue
      rng = random.Random(f"{seed}-{i}-{b}")
      if high == math.inf:
        copy, edit, target = normalised_copy(text, rng), "normalise", 1.0
        if dedupe.exact_hash(copy) != dedupe.exact_hash(text) or copy == text:
          raise RuntimeError(f"normalised copy of {origin} is not an exact duplicate after normalisation")
        jaccard = true_jaccard(dedupe.shingles(copy, ngram), shingles)
      else:
        target = rng.uniform(max(low, LOWEST_TARGET), high)
        copy, edit, jaccard = plant_copy(text, shingles, edits[(i + b) % len(edits)], target, rng,
                                         pool, ngram)
      copy_id = f"{i:08x}{b + 1:08x}"
      docs.append({"id": copy_id, "url": f"https://b-copy.example/{i:05d}/{b}-{edit}", "text": copy,
                   "origin": origin, "source": "eval", "lang": "", "lang_score": 1.0})
      pairs.append(Pair(copy_id, original_id, edit, round(target, 4), jaccard))
  return docs, pairs


# ----------------------------------------------------------------------------- theory


def candidate_probability(s: float, bands: int, rows: int) -> float:
  """The LSH S-curve: probability that a pair of Jaccard ``s`` shares at least one band."""
  return 1.0 - (1.0 - s**rows) ** bands


def drop_probability(s: float, bands: int, rows: int, threshold: float) -> float:
  """Probability that the pair shares a band AND its estimated Jaccard is >= ``threshold``.

  Ideal MinHash: each of the bands x rows values agrees independently with probability s. A
  dynamic programme over bands tracks (agreeing values so far, some band fully agrees).
  """
  per_band = np.array([math.comb(rows, r) * s**r * (1 - s) ** (rows - r) for r in range(rows + 1)])
  total = bands * rows
  state = np.zeros((total + 1, 2))
  state[0, 0] = 1.0
  for _ in range(bands):
    new = np.zeros_like(state)
    for r, p in enumerate(per_band):
      shifted = p * state[: total + 1 - r]  # r more agreeing values
      if r == rows:  # this band agrees fully: the pair becomes a candidate
        new[r:, 1] += shifted.sum(axis=1)
      else:
        new[r:] += shifted
    state = new
  passes = np.arange(total + 1) / total >= threshold
  return float(state[passes, 1].sum())


# ----------------------------------------------------------------------------- run and score


def bucket_of(jaccard: float) -> int:
  return next(b for b, (_, low, high) in enumerate(BUCKETS) if low <= jaccard < high)


def write_stage_input(docs, input_dir: str) -> None:
  """Writes ``docs`` as a finished stage directory that the dedupe job accepts."""
  shutil.rmtree(input_dir, ignore_errors=True)
  os.makedirs(input_dir)
  with open(common.shard_path(input_dir, common.DOCS_PREFIX, 0, 1), "w", encoding="utf-8") as f:
    f.writelines(common.dumps(doc) + "\n" for doc in docs)
  open(os.path.join(input_dir, common.SUCCESS_MARKER), "w").close()


def run_dedupe(input_dir: str, out: str, exact: bool, num_docs: int, num_shards: int = 2) -> dict:
  """Runs the Beam job; returns ``{id: reject record}``."""
  stats = dedupe.main([f"--input={input_dir}", f"--output_dir={out}", f"--num_shards={num_shards}",
                       f"--exact={'true' if exact else 'false'}"])
  rejects = {}
  for path in sorted(glob.glob(os.path.join(out, common.REJECTS_DIR, "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      rejects.update((record["id"], record) for record in map(json.loads, f))
  if stats["in"] != num_docs or stats["dropped_total"] != len(rejects):
    raise RuntimeError(f"dedupe accounting does not match the planted set: {stats}")
  return rejects


def score(docs, pairs, rejects, config: dedupe.DedupeConfig) -> dict:
  """Per-bucket drop rates next to the theory, and the precision of near-duplicate drops."""
  text = {d["id"]: d["text"] for d in docs}
  seeds = dedupe.permutation_seeds(config.num_perm, config.seed)
  signatures, shingle_sets = {}, {}

  def signature(doc_id):
    if doc_id not in signatures:
      signatures[doc_id] = dedupe.minhash(text[doc_id], config.ngram_size, seeds)
    return signatures[doc_id]

  def shingles(doc_id):
    if doc_id not in shingle_sets:
      shingle_sets[doc_id] = dedupe.shingles(text[doc_id], config.ngram_size)
    return shingle_sets[doc_id]

  rows = [dict(bucket=label, pairs=0, dropped=0, exact=0, near=0, to_original=0, candidate=0,
               estimate_passes=0, theory_candidate=0.0, theory_drop=0.0) for label, _, _ in BUCKETS]
  for pair in pairs:
    row = rows[bucket_of(pair.jaccard)]
    row["pairs"] += 1
    a, b = signature(pair.copy_id), signature(pair.original_id)
    shared = any(x == y for x, y in zip(dedupe.band_keys(a, config.num_bands, config.rows_per_band),
                                        dedupe.band_keys(b, config.num_bands, config.rows_per_band)))
    passes = dedupe.estimated_jaccard(a.tobytes(), b.tobytes()) >= config.jaccard_threshold
    row["candidate"] += shared
    row["estimate_passes"] += shared and passes
    row["theory_candidate"] += candidate_probability(pair.jaccard, config.num_bands, config.rows_per_band)
    row["theory_drop"] += drop_probability(pair.jaccard, config.num_bands, config.rows_per_band,
                                           config.jaccard_threshold)
    record = rejects.get(pair.copy_id)
    if record:
      row["dropped"] += 1
      row["exact" if record["reason"] == "exact_duplicate" else "near"] += 1
      row["to_original"] += record["details"]["duplicate_of"] == pair.original_id
  for row in rows:
    for key in ("theory_candidate", "theory_drop"):
      row[key] = row[key] / row["pairs"] if row["pairs"] else 0.0

  near = sorted((r for r in rejects.values() if r["reason"] == "near_duplicate"), key=lambda r: r["id"])
  linked = [(r["id"], r["details"]["duplicate_of"],
             true_jaccard(shingles(r["id"]), shingles(r["details"]["duplicate_of"]))) for r in near]
  wrong = [(a, b, round(j, 4)) for a, b, j in linked if j < config.jaccard_threshold]
  by_edit = {}
  for pair in pairs:
    row = by_edit.setdefault(pair.edit, dict(edit=pair.edit, above=0, above_dropped=0, below=0,
                                             below_dropped=0))
    side = "above" if pair.jaccard >= config.jaccard_threshold else "below"
    row[side] += 1
    row[f"{side}_dropped"] += pair.copy_id in rejects
  exact_drops = [r for r in rejects.values() if r["reason"] == "exact_duplicate"]
  planted_exact = {p.copy_id for p in pairs if p.edit == "normalise"}
  originals = {p.original_id for p in pairs}
  similar = [p for p in pairs if p.jaccard >= config.jaccard_threshold]
  return {
      "buckets": rows,
      "recall": sum(p.copy_id in rejects for p in similar) / len(similar) if similar else 1.0,
      "edits": [by_edit[name] for name in sorted(by_edit)],
      "near_drops": len(near),
      "near_precision": 1 - len(wrong) / len(near) if near else 1.0,
      "near_false_drops": wrong,
      "near_drop_min_jaccard": round(min((j for _, _, j in linked), default=1.0), 4),
      "near_drops_of_originals": sum(r["id"] in originals for r in near),
      "exact_drops": len(exact_drops),
      "exact_drops_not_planted": sorted(r["id"] for r in exact_drops if r["id"] not in planted_exact),
  }


# ----------------------------------------------------------------------------- report


def evaluate(num_originals: int, seed: int, texts: str, work_dir: str, min_words: int = 200,
             max_words: int = 1500, exact_modes=(True, False), buckets=BUCKETS) -> dict:
  """Builds the planted set, runs the dedupe job for each exact mode, returns all figures."""
  if texts not in ("all", "sample", "stdlib"):
    raise ValueError(f"texts must be all, sample or stdlib, got {texts!r}")
  config = dedupe.DedupeConfig()
  start = time.perf_counter()
  groups = []
  if texts in ("sample", "all"):
    groups.append(passing_quality(sample_texts(work_dir)))
  if texts in ("stdlib", "all"):
    groups.append(passing_quality(stdlib_texts(min_words)))
  originals = pick_originals(groups, num_originals, seed, min_words, max_words, config.ngram_size)
  if len(originals) < num_originals:
    raise SystemExit(f"only {len(originals)} originals with >= {min_words} words and pairwise Jaccard "
                     f"< {MAX_ORIGINAL_JACCARD} in --texts={texts}; ask for fewer")
  loaded = time.perf_counter() - start
  docs, pairs = build_corpus(originals, seed, config.ngram_size, buckets)
  planted = time.perf_counter() - start - loaded
  input_dir = os.path.join(work_dir, "planted")
  write_stage_input(docs, input_dir)
  sets = [dedupe.shingles(text, config.ngram_size) for _, text in originals]
  result = {
      "num_originals": len(originals), "num_docs": len(docs), "seed": seed, "texts": texts,
      "originals_from_sample": sum(not o.startswith("python-stdlib:") for o, _ in originals),
      "max_jaccard_between_originals": round(max(
          (true_jaccard(a, b) for i, a in enumerate(sets) for b in sets[:i]), default=0.0), 4),
      "load_seconds": round(loaded, 1), "plant_seconds": round(planted, 1), "runs": {},
  }
  for exact in exact_modes:
    start = time.perf_counter()
    name = "exact_on" if exact else "exact_off"
    rejects = run_dedupe(input_dir, os.path.join(work_dir, f"dedupe_{name}"), exact, len(docs))
    run = score(docs, pairs, rejects, config)
    run["dedupe_seconds"] = round(time.perf_counter() - start, 1)
    result["runs"][name] = run
  result["pairs"] = [dataclasses.asdict(p) for p in pairs]
  return result


def _rate(count: int, total: int) -> str:
  return f"{count / total:.3f}" if total else "-"


def print_report(result: dict, threshold: float) -> None:
  print(f"{result['num_docs']} documents: {result['num_originals']} originals "
        f"({result['originals_from_sample']} from the sample crawl, the rest stdlib docstrings; "
        f"max true Jaccard between originals {result['max_jaccard_between_originals']}) and "
        f"{result['num_docs'] - result['num_originals']} planted copies\n(texts loaded and chosen in "
        f"{result['load_seconds']}s, copies planted in {result['plant_seconds']}s)")
  for name, run in result["runs"].items():
    print(f"\n### dedupe with {name.replace('_', ' ')} ({run['dedupe_seconds']}s)\n")
    print("| true Jaccard | pairs | dropped | measures | as exact | as near | linked to own original "
          f"| P(candidate) theory | shares a band | P(drop) theory | band + estimate >= {threshold} |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row, (_, low, _) in zip(run["buckets"], BUCKETS):
      n = row["pairs"]
      print(f"| {row['bucket']} | {n} | **{_rate(row['dropped'], n)}** "
            f"| {'recall' if low >= threshold else 'false-positive rate'} | {row['exact']} | {row['near']} "
            f"| {row['to_original']} | {row['theory_candidate']:.3f} | {_rate(row['candidate'], n)} "
            f"| {row['theory_drop']:.3f} | {_rate(row['estimate_passes'], n)} |")
    print(f"\n| edit | pairs >= {threshold} | recall | pairs < {threshold} | false-positive rate |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in run["edits"]:
      print(f"| {row['edit']} | {row['above']} | {_rate(row['above_dropped'], row['above'])} "
            f"| {row['below']} | {_rate(row['below_dropped'], row['below'])} |")
    print(f"\nrecall over all pairs with true Jaccard >= {threshold}: {run['recall']:.4f}")
    print(f"near_duplicate drops: {run['near_drops']}, precision {run['near_precision']:.4f} "
          f"(true Jaccard with the linked document >= {threshold}); lowest true Jaccard of a drop "
          f"{run['near_drop_min_jaccard']}; originals dropped: {run['near_drops_of_originals']}")
    for copy_id, linked_id, jaccard in run["near_false_drops"][:10]:
      print(f"  false drop {copy_id} -> {linked_id}: true Jaccard {jaccard}")
    if len(run["near_false_drops"]) > 10:
      print(f"  ... and {len(run['near_false_drops']) - 10} more (all in --json)")
    print(f"exact_duplicate drops: {run['exact_drops']} (not planted as normalised copies: "
          f"{len(run['exact_drops_not_planted'])})")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_originals", type=int, default=180,
                      help="The sample gives 167 (with the default word limits); stdlib docstrings the rest.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--texts", choices=("all", "sample", "stdlib"), default="all",
                      help="Where originals come from: the sample crawl first, then stdlib docstrings.")
  parser.add_argument("--min_words", type=int, default=200)
  parser.add_argument("--max_words", type=int, default=1500, help="Originals are cut to this length.")
  parser.add_argument("--work_dir", default="",
                      help="Keeps the extract output (reused) and the dedupe outputs; default: a temp dir.")
  parser.add_argument("--json", default="", help="Also write every figure and planted pair here.")
  args = parser.parse_args(argv)
  if args.num_originals < 1 or args.min_words < 1 or args.max_words < args.min_words:
    parser.error("need --num_originals >= 1 and 1 <= --min_words <= --max_words")
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="dedupe_eval_")
  try:
    result = evaluate(args.num_originals, args.seed, args.texts, work_dir, args.min_words, args.max_words)
  finally:
    if not args.work_dir:
      shutil.rmtree(work_dir, ignore_errors=True)
  print_report(result, dedupe.DedupeConfig().jaccard_threshold)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1, sort_keys=True)
  return result


if __name__ == "__main__":
  main()
