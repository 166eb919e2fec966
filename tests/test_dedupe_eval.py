"""Smoke tests of benchmarks/dedupe_eval.py: planted near-duplicates of stdlib docstrings, real Beam job."""

import math

import numpy as np
import pytest

from benchmarks import dedupe_eval as ev
from pipelines import dedupe

CLEAR = [b for b in ev.BUCKETS if b[1] >= 0.9]  # normalised copies, 0.95-1, 0.90-0.95
FAR = [b for b in ev.BUCKETS if b[2] <= 0.7]  # 0.50-0.70, <0.50
NGRAM = dedupe.DedupeConfig().ngram_size


@pytest.fixture(scope="module")
def originals():
  return ev.pick_originals([ev.passing_quality(ev.stdlib_texts(200))], 8, 0, 200, 1500, NGRAM)


def test_originals_are_real_and_not_near_duplicates(originals):
  assert len(originals) == 8
  assert len({origin for origin, _ in originals}) == 8
  sets = [dedupe.shingles(text, NGRAM) for _, text in originals]
  for i, a in enumerate(sets):
    assert len(originals[i][1].split()) >= 200
    for b in sets[:i]:
      assert ev.true_jaccard(a, b) < ev.MAX_ORIGINAL_JACCARD


def test_planted_copies_hit_their_buckets_and_are_deterministic(originals):
  docs, pairs = ev.build_corpus(originals, 0, NGRAM)
  assert len(docs) == 8 * (1 + len(ev.BUCKETS)) and len(pairs) == 8 * len(ev.BUCKETS)
  assert (docs, pairs) == ev.build_corpus(originals, 0, NGRAM)
  assert docs != ev.build_corpus(originals, 1, NGRAM)[0]
  text = {d["id"]: d["text"] for d in docs}
  for pair in pairs:
    # The recorded similarity is the true one, with the stage's shingling.
    truth = ev.true_jaccard(dedupe.shingles(text[pair.copy_id], NGRAM),
                            dedupe.shingles(text[pair.original_id], NGRAM))
    assert pair.jaccard == truth
    if pair.edit == "normalise":
      assert truth == 1.0 and dedupe.exact_hash(text[pair.copy_id]) == dedupe.exact_hash(text[pair.original_id])
    else:
      assert truth < 1.0, pair
    if pair.edit == "substitute":  # Word steps are fine; a deleted sentence or moved paragraph is not.
      assert abs(truth - pair.target) < 0.03, pair
  landed = [ev.bucket_of(p.jaccard) == ev.bucket_of(p.target) for p in pairs]
  assert sum(landed) >= 0.8 * len(pairs)
  # Each of the five edits is used, on its own or with substitutions on top.
  assert {p.edit.split("+")[0] for p in pairs} == set(ev.EDITS) | {"normalise"}
  # Originals sort first, so the job keeps them.
  assert max(d["url"] for d in docs if d["id"].endswith("0" * 8)) < min(
      d["url"] for d in docs if not d["id"].endswith("0" * 8))


def test_edits_lower_similarity_with_strength(originals):
  text = max((t for _, t in originals), key=lambda t: t.count("\n"))  # Paragraphs to reorder.
  pool = ev.DonorPool.build([t for _, t in originals], 0)
  base = dedupe.shingles(text, NGRAM)
  for name, edit in ev.EDITS.items():
    max_k, apply = edit(text, ev.random.Random(name), pool)
    assert apply(0).split() == text.split() or name == "boilerplate"
    weak, strong = (ev.true_jaccard(dedupe.shingles(apply(k), NGRAM), base) for k in (1, max_k))
    assert strong < weak <= 1.0, name


def test_theory_matches_the_s_curve_and_a_simulation():
  assert ev.candidate_probability(0.8, 14, 8) == pytest.approx(0.9235, abs=1e-4)
  for s in (0.5, 0.75, 0.9):  # Without verification a candidate is always dropped.
    assert ev.drop_probability(s, 14, 8, 0.0) == pytest.approx(ev.candidate_probability(s, 14, 8))
  rng = np.random.default_rng(0)
  agree = rng.random((200_000, 14, 8)) < 0.8
  simulated = np.mean(agree.all(axis=2).any(axis=1) & (agree.mean(axis=(1, 2)) >= 0.8))
  assert ev.drop_probability(0.8, 14, 8, 0.8) == pytest.approx(simulated, abs=0.005)


def test_beam_job_finds_clear_pairs_and_leaves_far_ones(tmp_path):
  result = ev.evaluate(8, 0, "stdlib", str(tmp_path), exact_modes=(True,), buckets=CLEAR + FAR)
  run = result["runs"]["exact_on"]
  rows = {row["bucket"]: row for row in run["buckets"]}
  clear = [rows[label] for label, _, _ in CLEAR]
  far = [rows[label] for label, _, _ in FAR]
  assert sum(r["pairs"] for r in clear) >= 20 and sum(r["pairs"] for r in far) >= 12
  assert sum(r["dropped"] for r in clear) / sum(r["pairs"] for r in clear) >= 0.95  # recall
  assert run["near_precision"] >= 0.95 and run["near_drops"] >= 12
  assert sum(r["dropped"] for r in far) == 0  # far below the threshold: never flagged
  assert rows[CLEAR[0][0]]["exact"] == 8 and run["exact_drops_not_planted"] == []
  assert run["near_drops_of_originals"] == 0
  assert math.isclose(rows["0.95-1"]["theory_candidate"], 1.0, abs_tol=1e-3)


def test_command_line_prints_the_tables(tmp_path, capsys):
  result = ev.main(["--num_originals=2", "--texts=stdlib", f"--work_dir={tmp_path}",
                    f"--json={tmp_path / 'result.json'}"])
  out = capsys.readouterr().out
  assert "### dedupe with exact on" in out and "### dedupe with exact off" in out
  assert "| 0.80-0.85 |" in out and "| substitute |" in out
  assert result["runs"]["exact_off"]["exact_drops"] == 0
  assert result["runs"]["exact_on"]["exact_drops"] == 2
  assert (tmp_path / "result.json").exists()
  with pytest.raises(SystemExit):
    ev.main(["--num_originals=0"])
