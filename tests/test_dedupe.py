"""Tests for pipelines.dedupe: exact and MinHash-LSH near-duplicate removal."""

import importlib
import json

import pytest

from pipelines import common
from pipelines import dedupe
from stage_dirs import read_out, write_stage_dir

# Real English prose that ships with Python: module docstrings of the standard library.
MODULES = ["argparse", "json", "subprocess", "unittest", "ftplib", "doctest", "ssl", "heapq",
           "statistics", "itertools", "csv", "hashlib", "uuid", "copy", "timeit", "shelve",
           "socket", "sched"]
BASE = {m: " ".join(importlib.import_module(m).__doc__.split()) for m in MODULES}


def edit_words(text, every, word="EDITED"):
  """Replaces every ``every``-th word: a near-duplicate with a controlled Jaccard similarity."""
  words = text.split()
  return " ".join(word if i % every == every // 2 else w for i, w in enumerate(words))


def true_jaccard(a, b):
  sa, sb = dedupe.shingles(a, 5), dedupe.shingles(b, 5)
  return len(sa & sb) / len(sa | sb)


def make_doc(doc_id, url, text):
  return {"id": doc_id, "url": url, "text": text, "source": "web", "lang": "en", "lang_score": 1.0}


def planted_corpus():
  """Originals, planted near-duplicates (expected to be dropped) and hard negatives."""
  docs, expected_near = [], {}
  for i, (name, text) in enumerate(sorted(BASE.items())):
    docs.append(make_doc(f"{i:016x}", f"https://a.example/{name}", text))
  for i, name in enumerate(MODULES[:8]):  # Near-duplicates: a few words changed or appended.
    variant = edit_words(BASE[name], 120) if i % 2 else BASE[name] + " Copied from the docs."
    doc = make_doc(f"{100 + i:016x}", f"https://b.example/{name}", variant)
    docs.append(doc)
    expected_near[doc["id"]] = f"{sorted(BASE).index(name):016x}"
  for i, name in enumerate(MODULES[8:12]):  # Hard negatives: heavy edits, Jaccard well below 0.8.
    docs.append(make_doc(f"{200 + i:016x}", f"https://c.example/{name}", edit_words(BASE[name], 4)))
  return docs, expected_near


def test_planted_set_is_what_it_claims():
  docs, expected = planted_corpus()
  by_id = {d["id"]: d["text"] for d in docs}
  for dup, orig in expected.items():
    assert true_jaccard(by_id[dup], by_id[orig]) >= 0.85
  for d in docs:
    if d["url"].startswith("https://c."):
      orig = BASE[d["url"].rsplit("/", 1)[1]]
      assert true_jaccard(d["text"], orig) < 0.5



def test_near_duplicates_recall_and_precision(tmp_path):
  docs, expected = planted_corpus()
  # One exact duplicate too: different case, punctuation and spacing, smaller URL -> it wins.
  (original,) = [d for d in docs if d["url"] == "https://a.example/uuid"]
  docs.append(make_doc("ffffffffffffffff", "https://0.example/first",
                       "  " + original["text"].upper().replace(".", " ; ") + "  "))
  inp = write_stage_dir(tmp_path / "in", docs, extra_lines=["{not json"])
  stats = dedupe.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}", "--num_shards=3"])
  kept, rejects = read_out(tmp_path / "out")

  near = {r["id"]: r["details"]["duplicate_of"] for r in rejects if r["reason"] == "near_duplicate"}
  true_positives = sum(near.get(d) == o for d, o in expected.items())
  assert true_positives / len(expected) >= 0.99  # recall
  assert true_positives / max(len(near), 1) >= 0.99  # precision
  assert all(r["details"]["jaccard"] >= 0.8 for r in rejects if r["reason"] == "near_duplicate")

  (exact,) = [r for r in rejects if r["reason"] == "exact_duplicate"]
  assert exact["id"] == original["id"]  # The larger URL loses, whatever the input order.
  assert exact["details"] == {"duplicate_of": "ffffffffffffffff"}
  assert stats == json.loads((tmp_path / "out/stats.json").read_text())
  assert stats["in"] == len(docs) + 1
  assert stats["dropped"] == {"bad_json": 1, "exact_duplicate": 1, "near_duplicate": len(expected)}
  assert stats["kept"] == len(kept) == len(docs) - 1 - len(expected)
  assert stats["in"] == stats["kept"] + stats["dropped_total"]


def test_hot_key_keeps_exactly_the_smallest_copy(tmp_path):
  text = BASE["json"]
  docs = [make_doc(f"{i:016x}", f"https://x.example/{(i * 7919) % 500:04d}", text) for i in range(500)]
  inp = write_stage_dir(tmp_path / "in", docs)
  stats = dedupe.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}", "--near=false"])
  kept, rejects = read_out(tmp_path / "out")
  winner = min(docs, key=lambda d: (d["url"], d["id"]))
  assert [d["id"] for d in kept] == [winner["id"]]
  assert stats["dropped"] == {"exact_duplicate": 499}
  assert {r["details"]["duplicate_of"] for r in rejects} == {winner["id"]}


def test_switches_and_rerun_is_byte_identical(tmp_path):
  docs, expected = planted_corpus()
  inp = write_stage_dir(tmp_path / "in", docs)
  off = dedupe.main([f"--input={inp}", f"--output_dir={tmp_path / 'off'}", "--near=false"])
  assert off["kept"] == len(docs) and off["dropped"] == {}
  outs = [tmp_path / "a", tmp_path / "b"]
  for out in outs:
    dedupe.main([f"--input={inp}", f"--output_dir={out}", "--num_shards=2", "--exact=false"])
  files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
  assert len(files) == 5  # 2 shards, rejects, stats, _SUCCESS
  for f in files:
    assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def test_unfinished_input_is_refused(tmp_path):
  inp = write_stage_dir(tmp_path / "in", [make_doc("a" * 16, "u", "text")], success=False)
  with pytest.raises(common.StageError, match="_SUCCESS"):
    dedupe.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}"])
  assert not (tmp_path / "out").exists()


def test_minhash_is_deterministic_and_estimates_jaccard():
  seeds = dedupe.permutation_seeds(112, 1)
  assert seeds.dtype.name == "uint64" and len(set(seeds.tolist())) == 112
  a, b = BASE["argparse"], edit_words(BASE["argparse"], 30)
  sig_a, sig_b = dedupe.minhash(a, 5, seeds), dedupe.minhash(b, 5, seeds)
  assert (sig_a == dedupe.minhash(a, 5, dedupe.permutation_seeds(112, 1))).all()
  assert abs(dedupe.estimated_jaccard(sig_a.tobytes(), sig_b.tobytes()) - true_jaccard(a, b)) < 0.15
  assert dedupe.estimated_jaccard(sig_a.tobytes(), dedupe.minhash(BASE["csv"], 5, seeds).tobytes()) < 0.1
  assert dedupe.minhash("", 5, seeds) is None
  assert len(dedupe.band_keys(sig_a, 14, 8)) == 14


def test_exact_hash_normalisation():
  assert dedupe.exact_hash("Hello,   World!\n") == dedupe.exact_hash("hello world")
  assert dedupe.exact_hash("hello world") != dedupe.exact_hash("hello word")


def test_rejects_can_be_sharded(tmp_path):
  docs, expected = planted_corpus()
  inp = write_stage_dir(tmp_path / "in", docs)
  stats = dedupe.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}", "--num_shards=2",
                       "--num_reject_shards=3"])
  shards = sorted((tmp_path / "out" / "rejects").glob("rejects-*.jsonl"))
  assert [p.name for p in shards] == [f"rejects-{i:05d}-of-00003.jsonl" for i in range(3)]
  rejects = [json.loads(l) for p in shards for l in p.read_text().splitlines()]
  assert len(rejects) == stats["dropped_total"] == len(expected)
