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
``(url, id, payload)`` tuples, iterated twice (find the winner, then emit edges) without being
copied into a list; whole documents are only ever grouped by document id, which is unique.

Signatures travel once: after exact dedupe (one copy per id is left) the band members carry no
signature; each LSH bucket gives candidate pairs, and :class:`VerifyCandidates` joins every
distinct pair with the two documents' signatures by id to compute its similarity. The 14 band
members had carried the 896-byte signature 14 times, most of what the job shuffled
(benchmarks/results/shuffle_bytes.json, docs/scale.md). With ``--exact=false`` copies of one id
may differ, so their members carry their own signatures, as before.

Tag, then filter: the steps attach a decision ``(doc, mark)`` to every document and the final
:class:`ApplyDedupeDecisions` routes marked documents to the rejects.

Two layouts. The default (``--shard_layout=by_size``) is the Beam graph above; on Dataflow the
shuffle service holds its groups, but Beam's local runner holds every GroupByKey's input in memory,
~114 KiB per document here (docs/scale.md, Memory). ``--shard_layout=per_input``
(pipelines/dedupe_shardwise.py) makes the same decisions with the same functions (``exact_member``,
``band_members``, ``link``, ``exact_decision``, ``near_decision``, :class:`NearSimilarity`), but
shuffles through spill files (pipelines/spill.py), one DoFn call per input file or bucket, so a
local run's memory does not grow with the input; it writes output and rejects shard i-of-N for
input file i of N (``--num_buckets`` / ``--target_bucket_bytes`` set its bucket count).

    python -m pipelines.dedupe --input=out/toxicity --output_dir=out/dedupe [--shard_layout=...]
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
  for tag, member in values:
    edge = link(member, winner, similarity) if tag == _MEMBER else None
    if edge is not None:
      yield member[1], edge


def link(member, winner, similarity):
  """A group member's edge ``(winner_url, winner_id, similarity)`` to the group's winner, or None
  (the member is a copy of the winner, or the pair failed verification). Both layouts use it."""
  _, doc_id, payload = member
  if doc_id == winner[1]:
    return None
  sim = similarity(payload, winner[2])
  return None if sim is None else (winner[0], winner[1], sim)


# ----------------------------------------------------------------------------- the two steps


def exact_decision(doc_id: str, position: int, smallest_edge) -> dict | None:
  """The mark of the ``position``-th copy (in ``common.dumps`` order) of the documents with id
  ``doc_id``, given the smallest exact edge of any of them (None: no edge); None keeps it.

  Documents sharing an id are copies of one document: all go if one is an exact duplicate,
  else all but the first."""
  if smallest_edge is not None:
    return {"reason": "exact_duplicate", "duplicate_of": smallest_edge[1]}
  if position > 0:
    return {"reason": "exact_duplicate", "duplicate_of": doc_id}
  return None


def near_decision(smallest_edge) -> dict | None:
  """The mark of every document with the id whose smallest near edge this is (None: kept)."""
  if smallest_edge is None:
    return None
  _, winner_id, jaccard = smallest_edge
  return {"reason": "near_duplicate", "duplicate_of": winner_id, "jaccard": round(jaccard, 4)}


def _mark_exact(id_and_groups):
  """Marks every copy but the winner (:func:`exact_decision`)."""
  doc_id, groups = id_and_groups
  docs = sorted(groups["doc"], key=common.dumps)
  edges = sorted(groups["edge"])
  for i, doc in enumerate(docs):
    yield doc, exact_decision(doc_id, i, edges[0] if edges else None)


def _mark_near(id_and_groups):
  _, groups = id_and_groups
  edges = list(groups["edge"])
  mark = near_decision(min(edges) if edges else None)
  for doc in groups["doc"]:
    yield doc, mark


def _by_id(doc):
  return doc["id"], doc


def doc_url(doc) -> str:
  return str(doc.get("url", ""))


def exact_member(doc):
  """``(exact group, (url, id, b""))``: a document's member of its exact group."""
  return exact_hash(doc["text"]), (doc_url(doc), doc["id"], b"")


def exact_similarity(a, b) -> float:
  return 1.0


def mark_exact_duplicates(docs):
  """docs -> ``(doc, mark)``; mark is None for kept documents."""
  members = docs | "ExactMember" >> beam.Map(exact_member)
  edges = members | "ExactLinks" >> LinkToGroupWinner(exact_similarity)
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
    return band_members(doc, self._config, self._seeds)


def band_members(doc, config: DedupeConfig, seeds: np.ndarray) -> list:
  """One ``((band, band_hash), (url, id, signature))`` per band; none for a text without words
  (nothing to be similar to)."""
  signature = minhash(doc["text"], config.ngram_size, seeds)
  if signature is None:
    return []
  member = (doc_url(doc), doc["id"], signature.tobytes())
  return [(key, member) for key in band_keys(signature, config.num_bands, config.rows_per_band)]


class NearSimilarity:
  """A candidate pair's similarity: its estimated Jaccard, or None below the threshold (with
  ``verify``). A class, not a closure, so that both layouts pickle the same object."""

  def __init__(self, config: DedupeConfig):
    self._verify = config.verify
    self._threshold = config.jaccard_threshold

  def __call__(self, a: bytes, b: bytes) -> float | None:
    jaccard = estimated_jaccard(a, b)
    return jaccard if not self._verify or jaccard >= self._threshold else None


_CANDIDATE, _SIG = 0, 1  # Tags of the values VerifyCandidates groups.
_SIGNATURES = "signatures"  # The second output of _UnsignedBandMembers: (id, signature).


class _UnsignedBandMembers(beam.DoFn):
  """doc -> one ``((band, band_hash), (url, id, b""))`` per band, and ``(id, signature)`` once
  on the ``signature`` output: the band members of :class:`_BandMembers` without the 896-byte
  signature in each of the 14, for :class:`VerifyCandidates`."""

  def __init__(self, config: DedupeConfig):
    self._members = _BandMembers(config)

  def setup(self):
    self._members.setup()

  def process(self, doc):
    members = self._members.process(doc)
    out: list[Any] = [(key, (url, doc_id, b"")) for key, (url, doc_id, _) in members]
    if members:
      out.append(beam.pvalue.TaggedOutput(_SIGNATURES, (doc["id"], members[0][1][2])))
    return out



class VerifyCandidates(beam.PTransform):
  """``(candidates, signatures)`` -> verified edges ``(loser_id, (winner_url, winner_id, sim))``:
  what :class:`LinkToGroupWinner` gives with ``similarity`` when every band member carries its
  signature, but each signature is shuffled twice per document (to its pairs as loser, then as
  winner) instead of once per band: most of what this job shuffled
  (benchmarks/results/shuffle_bytes.json).

  ``candidates``: distinct ``(loser_id, (winner_url, winner_id, _))``; ``signatures``:
  ``(id, signature)``, one per id, so the documents' ids must be unique (they are after exact
  dedupe, which keeps one copy per id; without it ``mark_near_duplicates`` links as before). Both
  joins group tagged values and read them twice (the signature, then the pairs) without copying
  them, so a hot winner costs what a hot band did.
  """

  def __init__(self, similarity):
    super().__init__()
    self._similarity = similarity

  def expand(self, inputs):
    candidates, signatures = inputs
    with_loser = (
        (signatures | "TagLoserSig" >> beam.MapTuple(lambda i, sig: (i, (_SIG, sig))),
         candidates | "TagCandidate" >> beam.MapTuple(lambda i, edge: (i, (_CANDIDATE, edge))))
        | "LoserFlatten" >> beam.Flatten()
        | "ByLoser" >> beam.GroupByKey()
        | "LoserSignature" >> beam.FlatMap(_with_loser_signature)
    )
    return (
        (signatures | "TagWinnerSig" >> beam.MapTuple(lambda i, sig: (i, (_SIG, sig))), with_loser)
        | "WinnerFlatten" >> beam.Flatten()
        | "ByWinner" >> beam.GroupByKey()
        | "Verified" >> beam.FlatMap(_verified_edges, self._similarity)
    )


def _signature_of(doc_id, values) -> bytes:
  for tag, value in values:
    if tag == _SIG:
      return value
  raise common.StageError(f"dedupe: no signature for {doc_id!r}, which is in a candidate pair.")


def _candidates_with_signature(doc_id, values):
  """The candidate values of ``doc_id``'s group, each with ``doc_id``'s signature (looked up on
  the first candidate: a second pass over the values, which are re-iterable, never copied)."""
  signature = None
  for tag, value in values:
    if tag == _CANDIDATE:
      signature = signature or _signature_of(doc_id, values)
      yield value, signature


def _with_loser_signature(group):
  """``(loser_id, values)`` -> ``(winner_id, (_CANDIDATE, (loser_id, winner_url, loser_sig)))``."""
  loser_id, values = group
  for (winner_url, winner_id, _), signature in _candidates_with_signature(loser_id, values):
    yield winner_id, (_CANDIDATE, (loser_id, winner_url, signature))


def _verified_edges(group, similarity):
  """``(winner_id, values)`` -> ``(loser_id, (winner_url, winner_id, sim))`` for each pair that
  :func:`link` links, with the two signatures."""
  winner_id, values = group
  for (loser_id, winner_url, loser_sig), signature in _candidates_with_signature(winner_id, values):
    edge = link(("", loser_id, loser_sig), (winner_url, winner_id, signature), similarity)
    if edge is not None:
      yield loser_id, edge


def near_edges(docs, config: DedupeConfig, unique_ids: bool):
  """docs -> each linked document's edges ``(id, (winner_url, winner_id, sim))``, per band.

  With ``unique_ids`` (after exact dedupe) the band members go without their signatures and the
  candidate pairs are verified by :class:`VerifyCandidates`; otherwise, where copies of one id may
  have different texts and so different signatures, each member carries its own."""
  similarity = NearSimilarity(config)
  if not unique_ids:
    return (docs
            | "NearMembers" >> beam.ParDo(_BandMembers(config))
            | "NearLinks" >> LinkToGroupWinner(similarity))
  members = docs | "NearMembers" >> beam.ParDo(_UnsignedBandMembers(config)).with_outputs(
      _SIGNATURES, main="members")
  candidates = (members.members
                | "NearCandidates" >> LinkToGroupWinner(exact_similarity)
                | "OneCandidatePerPair" >> beam.Distinct())
  return (candidates, members[_SIGNATURES]) | "VerifyCandidates" >> VerifyCandidates(similarity)


def mark_near_duplicates(docs, config: DedupeConfig, unique_ids: bool = False):
  """docs -> ``(doc, mark)``; ``unique_ids``: no two documents share an id (see near_edges)."""
  edges = near_edges(docs, config, unique_ids) | "SmallestWinner" >> beam.CombinePerKey(min)
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
    # After exact dedupe one copy of each id is left (exact_decision).
    marked = (exact_dups, mark_near_duplicates(unique, config, unique_ids=config.exact)
              ) | "AllMarks" >> beam.Flatten()
  return marked | "Apply" >> beam.ParDo(ApplyDedupeDecisions()).with_outputs(
      common.REJECTS_TAG, main="kept")


# Input bytes per bucket (--shard_layout=per_input): a bucket's DoFn call holds only its output
# rows, ~100 bytes per document of its share, so buckets can be large; this is for parallelism.
DEFAULT_TARGET_BUCKET_BYTES = common.DEFAULT_TARGET_SHARD_BYTES


def add_args(parser) -> None:
  add_config_flags(parser, DedupeConfig)
  parser.add_argument(
      "--num_buckets", type=int, default=0,
      help=f"--shard_layout={common.PER_INPUT} only: buckets the groups are spread over, one DoFn "
      "call each (default 0: from the input's size, see --target_bucket_bytes).")
  parser.add_argument(
      "--target_bucket_bytes", type=int, default=DEFAULT_TARGET_BUCKET_BYTES,
      help=f"--shard_layout={common.PER_INPUT} only: input bytes per bucket when the bucket count "
      "comes from the data.")


def config_from(args) -> DedupeConfig:
  config = config_from_args(DedupeConfig, args)
  if config.num_bands < 1 or config.rows_per_band < 1 or not 0 < config.jaccard_threshold <= 1:
    raise common.StageError(f"Invalid LSH settings: {config}")
  return config


def build(args):
  """The stage's transform (docs -> kept + rejects) from its flags; the fused filter job uses it too."""
  config = config_from(args)
  return lambda docs: dedupe(docs, config)


def main(argv=None) -> dict[str, Any]:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  if args.shard_layout == common.PER_INPUT:
    # pylint: disable-next=import-outside-toplevel  # It imports this module.
    from pipelines import dedupe_shardwise
    return dedupe_shardwise.run(args, options, config_from(args))
  return common.run_doc_stage(STAGE, args, options, build(args))


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  main()
