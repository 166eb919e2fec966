"""Exact and near-duplicate removal (normalised-text hash, then MinHash LSH), fully distributed.

Both steps build a small graph: every document that is not the *winner* of its group gets an edge
to the winner, and a document with an edge is dropped. The winner of a group is the document with
the smallest ``(url, id)``, so the kept copy does not depend on input order or on the runner.

* exact: group = documents with the same :func:`exact_hash` (NFKC, lowercase, punctuation removed,
  whitespace collapsed). Reason ``exact_duplicate``.
* near: MinHash over word 5-grams, 112 permutations = 14 bands x 8 rows; group = documents sharing
  one band's hash (an LSH bucket). An edge is kept only if the estimated Jaccard similarity of the
  pair is at least ``jaccard_threshold`` (0.8). Reason ``near_duplicate``.

Hot keys: a group's winner is found with ``CombinePerKey(min)``, which Beam pre-combines on every
worker (combiner lifting), so a million copies cost one small tuple per worker before the shuffle.
The winner is then joined back to the members by a GroupByKey whose values are only
``(url, id, signature)`` tuples, iterated twice (find the winner, then emit edges) without being
copied into a list; whole documents are only ever grouped by document id, which is unique.

Tag, then filter: the steps attach a decision ``(doc, mark)`` to every document and the final
:class:`ApplyDedupeDecisions` routes marked documents to the rejects.

    python -m pipelines.dedupe --input=out/toxicity --output_dir=out/dedupe
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import apache_beam as beam
import numpy as np
import xxhash

from pipelines import common
from pipelines import text_utils
from pipelines.quality import add_config_flags, config_from_args

STAGE = "dedupe"
_WINNER, _MEMBER = 0, 1
# splitmix64 constants (Steele et al.); the finaliser is a bijection on 64-bit integers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 4096  # Shingles hashed at once, bounding memory to _CHUNK x num_perm x 8 bytes.


@dataclasses.dataclass(frozen=True)
class DedupeConfig:
  """Every field is also a flag (``--exact=false`` turns exact dedup off)."""

  exact: bool = True
  near: bool = True
  ngram_size: int = 5
  num_bands: int = 14
  rows_per_band: int = 8
  # Candidate pairs from an LSH bucket are kept only above this estimated Jaccard similarity.
  jaccard_threshold: float = 0.8
  verify: bool = True
  seed: int = 1

  @property
  def num_perm(self) -> int:
    return self.num_bands * self.rows_per_band


# ----------------------------------------------------------------------------- hashing


def exact_hash(text: str) -> str:
  return hashlib.blake2b(text_utils.normalize_for_hash(text).encode("utf-8"), digest_size=16).hexdigest()


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * _MIX1
  x = (x ^ (x >> np.uint64(27))) * _MIX2
  return x ^ (x >> np.uint64(31))


def permutation_seeds(num_perm: int, seed: int) -> np.ndarray:
  """Fixed 64-bit seeds, one per MinHash permutation, the same on every machine."""
  index = np.arange(1, num_perm + 1, dtype=np.uint64)
  return _mix64(index * _GOLDEN + np.uint64(seed))


def shingles(text: str, n: int) -> set[str]:
  """Word n-grams of the normalised text (the whole text if it has fewer than n words)."""
  words = text_utils.normalize_for_hash(text).split()
  if len(words) < n:
    return {" ".join(words)} if words else set()
  return {" ".join(g) for g in text_utils.word_ngrams(words, n)}


def minhash(text: str, n: int, seeds: np.ndarray) -> np.ndarray | None:
  """64-bit MinHash signature: for permutation i, min over shingles of mix64(xxh64(s) ^ seed_i).

  XOR with a seed followed by a bijective mixer is a pseudo-random permutation of the 64-bit
  space, one per seed. None for a text without words.
  """
  items = sorted(shingles(text, n))
  if not items:
    return None
  signature = np.full(len(seeds), np.iinfo(np.uint64).max, dtype=np.uint64)
  for start in range(0, len(items), _CHUNK):
    chunk = items[start : start + _CHUNK]
    base = np.fromiter((xxhash.xxh64_intdigest(s.encode('utf-8')) for s in chunk), dtype=np.uint64, count=len(chunk))
    signature = np.minimum(signature, _mix64(base[:, None] ^ seeds[None, :]).min(axis=0))
  return signature


def estimated_jaccard(a: bytes, b: bytes) -> float:
  return float(np.mean(np.frombuffer(a, dtype=np.uint64) == np.frombuffer(b, dtype=np.uint64)))


def band_keys(signature: np.ndarray, num_bands: int, rows: int) -> list[tuple[int, str]]:
  """One LSH bucket key ``(band, hash of the band's rows)`` per band."""
  return [
      (b, xxhash.xxh64_hexdigest(signature[b * rows : (b + 1) * rows].tobytes()))
      for b in range(num_bands)
  ]


# ----------------------------------------------------------------------------- group winners


class LinkToGroupWinner(beam.PTransform):
  """``(group, (url, id, payload))`` -> ``(id, (winner_url, winner_id, similarity))`` per loser.

  The winner of a group is its smallest ``(url, id)``. ``similarity(payload, winner_payload)``
  returns the edge's similarity, or None to leave the pair unlinked (a failed verification).
  """

  def __init__(self, similarity):
    super().__init__()
    self._similarity = similarity

  def expand(self, members):
    winners = members | "Winner" >> beam.CombinePerKey(min)
    return (
        (
            winners | "TagWinner" >> beam.MapTuple(lambda k, m: (k, (_WINNER, m))),
            members | "TagMember" >> beam.MapTuple(lambda k, m: (k, (_MEMBER, m))),
        )
        | "Flatten" >> beam.Flatten()
        | "Group" >> beam.GroupByKey()
        | "Edges" >> beam.FlatMap(_edges_to_winner, self._similarity)
    )


def _edges_to_winner(group, similarity):
  _, values = group
  # Two passes over the grouped values (re-iterable, never copied): find the winner, then link.
  winner = next(m for tag, m in values if tag == _WINNER)
  for tag, (url, doc_id, payload) in values:
    if tag == _MEMBER and doc_id != winner[1]:
      sim = similarity(payload, winner[2])
      if sim is not None:
        yield doc_id, (winner[0], winner[1], sim)


# ----------------------------------------------------------------------------- the two steps


def _mark_exact(id_and_groups):
  """Marks every copy but the winner; documents sharing an id are copies of one document."""
  _, groups = id_and_groups
  docs = sorted(groups["doc"], key=common.dumps)
  edges = sorted(groups["edge"])
  for i, doc in enumerate(docs):
    if edges:
      yield doc, {"reason": "exact_duplicate", "duplicate_of": edges[0][1]}
    elif i > 0:
      yield doc, {"reason": "exact_duplicate", "duplicate_of": doc["id"]}
    else:
      yield doc, None


def _mark_near(id_and_groups):
  _, groups = id_and_groups
  edges = list(groups["edge"])
  for doc in groups["doc"]:
    if edges:
      _, winner_id, jaccard = min(edges)
      yield doc, {"reason": "near_duplicate", "duplicate_of": winner_id, "jaccard": round(jaccard, 4)}
    else:
      yield doc, None


def _by_id(doc):
  return doc["id"], doc


def mark_exact_duplicates(docs):
  """docs -> ``(doc, mark)``; mark is None for kept documents."""
  members = docs | "ExactMember" >> beam.Map(
      lambda d: (exact_hash(d["text"]), (str(d.get("url", "")), d["id"], b"")))
  edges = members | "ExactLinks" >> LinkToGroupWinner(lambda a, b: 1.0)
  return (
      {"doc": docs | "ExactById" >> beam.Map(_by_id), "edge": edges}
      | "ExactJoin" >> beam.CoGroupByKey()
      | "ExactMark" >> beam.FlatMap(_mark_exact)
  )


class _BandMembers(beam.DoFn):
  """doc -> one ``((band, band_hash), (url, id, signature))`` per band."""

  def __init__(self, config: DedupeConfig):
    self._config = config
    self._seeds = None

  def setup(self):
    self._seeds = permutation_seeds(self._config.num_perm, self._config.seed)

  def process(self, doc):
    signature = minhash(doc["text"], self._config.ngram_size, self._seeds)
    if signature is None:
      return []  # No words: nothing to be similar to.
    member = (str(doc.get("url", "")), doc["id"], signature.tobytes())
    return [(key, member) for key in band_keys(signature, self._config.num_bands,
                                               self._config.rows_per_band)]


def mark_near_duplicates(docs, config: DedupeConfig):
  threshold = config.jaccard_threshold

  def similarity(a, b):
    if not config.verify:
      return estimated_jaccard(a, b)
    jaccard = estimated_jaccard(a, b)
    return jaccard if jaccard >= threshold else None

  edges = (
      docs
      | "NearMembers" >> beam.ParDo(_BandMembers(config))
      | "NearLinks" >> LinkToGroupWinner(similarity)
      | "SmallestWinner" >> beam.CombinePerKey(min)
  )
  return (
      {"doc": docs | "NearById" >> beam.Map(_by_id), "edge": edges}
      | "NearJoin" >> beam.CoGroupByKey()
      | "NearMark" >> beam.FlatMap(_mark_near)
  )


class ApplyDedupeDecisions(beam.DoFn):
  """Routes marked documents to the rejects with their reason and ``duplicate_of``."""

  def process(self, doc_and_mark):
    doc, mark = doc_and_mark
    if mark is None:
      yield common.keep(STAGE, doc)
    else:
      details = {k: v for k, v in mark.items() if k != "reason"}
      yield common.reject(STAGE, mark["reason"], doc, **details)


def dedupe(docs, config: DedupeConfig):
  """The stage's transform: tagged output with ``kept`` and ``rejects``."""
  if config.exact:
    marked = mark_exact_duplicates(docs)
  else:
    marked = docs | "NoExact" >> beam.Map(lambda d: (d, None))
  if config.near:
    unique = marked | "ExactKept" >> beam.FlatMap(lambda dm: [dm[0]] if dm[1] is None else [])
    exact_dups = marked | "ExactDups" >> beam.Filter(lambda dm: dm[1] is not None)
    marked = (exact_dups, mark_near_duplicates(unique, config)) | "AllMarks" >> beam.Flatten()
  return marked | "Apply" >> beam.ParDo(ApplyDedupeDecisions()).with_outputs(
      common.REJECTS_TAG, main="kept")


def add_args(parser) -> None:
  add_config_flags(parser, DedupeConfig)


def build(args):
  """The stage's transform (docs -> kept + rejects) from its flags; the fused filter job uses it too."""
  config = config_from_args(DedupeConfig, args)
  if config.num_bands < 1 or config.rows_per_band < 1 or not 0 < config.jaccard_threshold <= 1:
    raise common.StageError(f"Invalid LSH settings: {config}")
  return lambda docs: dedupe(docs, config)


def main(argv=None) -> dict[str, Any]:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args)
  return common.run_doc_stage(STAGE, args, options, build(args))


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  main()
