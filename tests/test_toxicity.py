"""Toxicity scorer: normalisation, ordering, tricky clean words, training determinism, Beam stage."""

import json
import os
import re

import numpy as np
import pytest

from pipelines import toxicity
from pipelines.labelled import sentences, toxicity_data, train_toxicity


@pytest.mark.parametrize("text,expected", [
    ("f*ck", "obscene"), ("f**k", "obscene"), ("F*CKING", "obscene"), ("sh1t", "obscene"),
    ("a$$hole", "obscene"), ("fuuuuuck", "obscene"), ("Scheiße", "obscene"), ("enculé", "obscene"),
    ("idiot", "insult"), ("Dick", "mild"),
])
def test_lexicon_normalises_obfuscation(text, expected):
  (token,) = toxicity.tokens(text)
  assert toxicity.lexicon().category(token) == expected


def test_spaced_letters_are_joined():
  assert toxicity.tokens("f u c k off") == ["fuck", "off"]


@pytest.mark.parametrize("word", [
    "Scunthorpe", "assess", "class", "cocktail", "Cavett", "passage", "Dickens", "shiitake",
    "retardant", "fickle", "grass", "*emphasis*", "3.11", "h2o",
])
def test_innocent_words_are_not_in_the_lexicon(word):
  assert all(toxicity.lexicon().category(t) is None for t in toxicity.tokens(word))


def test_score_orders_abuse_above_clean_text():
  abusive = toxicity.score("You are a worthless fucking idiot, shut up.")
  clean = toxicity.score("The function returns a list of the files in the directory.")
  assert 0.0 <= clean < 0.2 < 0.8 < abusive <= 1.0


@pytest.mark.parametrize("text", [
    "Scunthorpe United beat Grimsby on Saturday.",
    "Dick Cavett talked to John Lennon in 1971.",
    "We assess each class and order a cocktail afterwards.",
    "The cock crowed before dawn in Middlesex.",
])
def test_tricky_clean_sentences_are_not_flagged(text):
  assert toxicity.score(text) < toxicity.ToxicityConfig().threshold


def test_one_mild_word_in_long_text_is_density_discounted():
  page = " ".join(sentences.sentences(sentences.EVAL_MODULES)[:30])
  assert toxicity.score(page + " Damn, that was a long day.") < 0.2
  assert toxicity.score("Damn you, you useless idiot.") > 0.8


def test_train_and_eval_sets_are_disjoint():
  train = {t for t, _ in toxicity_data.build("train")}
  evaluation = {t for t, _ in toxicity_data.build("eval")}
  assert not train & evaluation


def test_training_is_deterministic():
  examples = toxicity_data.build("train")[::40]
  a = train_toxicity.train(examples, steps=5)
  b = train_toxicity.train(examples, steps=5)
  assert a.to_json() == b.to_json()
  assert np.any(a.hashed != 0)


def test_shipped_classifier_meets_floor_on_eval_set():
  # Floor 0.9 for precision and recall: the shipped weights give ~1.0 / 0.99 (see the docs);
  # the floor catches a stale or broken classifier.json, not the last hard example.
  evaluation = toxicity_data.build("eval")[::5]
  scores = [toxicity.score(t) for t, _ in evaluation]
  result = train_toxicity.metrics(scores, [y for _, y in evaluation],
                                  toxicity.ToxicityConfig().threshold)
  assert result["precision"] >= 0.9 and result["recall"] >= 0.9, result


def test_bad_word_list_line_is_a_clear_error(tmp_path):
  (tmp_path / "xx.txt").write_text("word\tnot_a_category\n")
  with pytest.raises(toxicity.common.StageError, match="xx.txt:1"):
    toxicity.Lexicon.from_dir(str(tmp_path))


def test_beam_stage_drops_toxic_documents(tmp_path):
  docs = [
      {"id": "a" * 16, "text": "The parser reads the configuration file and returns a dict.",
       "scores": {"quality": 0.9}},
      {"id": "b" * 16, "text": "Shut up, you fucking moron. Nobody wants you here, asshole."},
  ]
  os.makedirs(tmp_path / "in")
  (tmp_path / "in" / "docs-00000-of-00001.jsonl").write_text(
      "\n".join(json.dumps(d) for d in docs) + "\n[1, 2]\n")
  (tmp_path / "in" / "_SUCCESS").write_text("")
  argv = [f"--input={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}", "--num_shards=1"]
  stats = toxicity.main(argv)
  assert stats["in"] == 3 == stats["kept"] + stats["dropped_total"]
  assert stats["dropped"] == {"toxic": 1, "bad_record": 1}
  (kept,) = [json.loads(l) for l in (tmp_path / "out" / "docs-00000-of-00001.jsonl").open()]
  assert kept["id"] == "a" * 16 and kept["scores"]["quality"] == 0.9
  assert kept["scores"]["toxicity"] < 0.5
  rejects = [json.loads(l) for l in (tmp_path / "out" / "rejects" / "rejects-00000-of-00001.jsonl").open()]
  toxic = [r for r in rejects if r["reason"] == "toxic"][0]
  assert toxic["id"] == "b" * 16 and toxic["details"]["toxicity"] > 0.5
  first = sorted((p.relative_to(tmp_path / "out"), p.read_bytes())
                 for p in (tmp_path / "out").rglob("*") if p.is_file())
  toxicity.main(argv)
  assert sorted((p.relative_to(tmp_path / "out"), p.read_bytes())
                for p in (tmp_path / "out").rglob("*") if p.is_file()) == first
  # A threshold of 1.0 keeps everything that parses.
  stats = toxicity.main(argv + ["--threshold=1.0"])
  assert stats["kept"] == 2 and stats["dropped"] == {"bad_record": 1}


# ----------------------------------------------------------------------------- fast paths


def _scan_category(lex, token):
  """The lexicon rule written as a plain scan over every stem in sorted order (the reference)."""
  for form in toxicity._forms(token):
    if form in lex.exact:
      return lex.exact[form]
    for stem, category in lex.prefixes:
      if form.startswith(stem):
        return category
    for stem, category in lex.suffixes:
      if form.endswith(stem) and len(form) > len(stem):
        return category
  return None


def test_lexicon_lookup_takes_the_first_stem_in_sorted_order():
  lex = toxicity.Lexicon(exact={"xhole": "mild"}, prefixes=(("ab", "mild"), ("abc", "slur")),
                         suffixes=(("ahole", "obscene"), ("hole", "insult")))
  assert lex.category("abcd") == "mild"  # Both prefixes fit: "ab" sorts first.
  assert lex.category("xahole") == "obscene"  # Both suffixes fit: "ahole" sorts first (longer).
  assert lex.category("yhole") == "insult"
  assert lex.category("hole") is None  # A suffix stem must be shorter than the token.
  assert lex.category("xhole") == "mild"  # Exact words come first.


def test_lexicon_lookup_matches_a_scan_over_every_stem():
  lex = toxicity.lexicon()
  words = [w for w, _ in lex.prefixes + lex.suffixes] + list(lex.exact)
  text = " ".join(sentences.sentences(sentences.EVAL_MODULES)[:200])
  candidates = set(toxicity.tokens(text))
  for w in words:  # Each stem alone, extended on either side, and cut short.
    candidates.update({w, w + "ing", "un" + w, w[:-1], "x" + w + "s", w + w[-1] * 3})
  for token in sorted(candidates):
    if not any(ch in toxicity._MASK_CHARS for ch in token):
      assert lex.category(token) == _scan_category(lex, token), token


def _features_per_position(text):
  """``features`` computed position by position, without any memoisation (the reference)."""
  import collections
  import math

  words = toxicity.tokens(text)
  hits = collections.Counter(toxicity.lexicon().category(w) for w in words)
  n = max(len(words), 1)
  you = sum(w in toxicity.SECOND_PERSON for w in words)
  dense = np.array([math.log1p(100.0 * hits[c] / n) for c in toxicity.CATEGORIES]
                   + [math.log1p(100.0 * you / n)])
  counts = collections.Counter()
  head = words[:toxicity.MAX_TOKENS]
  for i, word in enumerate(head):
    counts[toxicity._hash("w:" + word)] += 1
    if i:
      counts[toxicity._hash(f"b:{head[i - 1]} {word}")] += 1
    padded = f" {word} "
    for size in (3, 4, 5):
      for j in range(len(padded) - size + 1):
        counts[toxicity._hash("c:" + padded[j:j + size])] += 1
  indices = np.array(sorted(counts), dtype=np.int64)
  values = np.array([counts[i] for i in indices], dtype=np.float64)
  if values.size:
    values /= np.linalg.norm(values)
  return indices, values, dense


@pytest.mark.parametrize("text", [
    "",
    "!!! ### ***",
    "you you you idiot idiot, f*ck f u c k off. The the the cat sat on the mat the mat.",
    "Shut up, you fucking moron. Nobody wants you here, asshole. " * 3,
    # Longer than MAX_TOKENS: hashed features use the head, lexicon densities every word.
    "you " * 10 + "the quick brown fox jumps over the lazy dog " * 700 + "idiot " * 100,
])
def test_memoised_features_are_bit_identical_to_per_position_counting(text):
  toxicity._word_features.cache_clear()
  expected = _features_per_position(text)
  for _ in range(2):  # Cold, then warm cache.
    got = toxicity.features(text)
    for g, e in zip(got, expected):
      assert g.dtype == e.dtype and g.tobytes() == e.tobytes()


def test_word_caches_are_bounded():
  for cached in (toxicity._word_features, toxicity._token_of):
    assert cached.cache_info().maxsize == toxicity.WORD_CACHE_SIZE
  toxicity._word_features.cache_clear()
  toxicity.score(" ".join(f"w{i}x" for i in range(3000)))
  assert toxicity._word_features.cache_info().currsize == 3000


def _template_regex(template: str) -> re.Pattern:
  """What ``toxicity_data`` can make of one template, masked and re-cased forms included."""
  fill = {"adj": "|".join(map(re.escape, toxicity_data._ADJECTIVES)),
          "insult": "|".join(map(re.escape, toxicity_data._INSULTS))}
  parts = re.split(r"\{(adj|insult)\}", template)
  pattern = "".join(f"(?:{fill[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts))
  return re.compile(pattern, re.I)


def test_independent_toxic_set_is_not_made_by_the_training_generator():
  from pipelines.labelled import toxicity_independent as independent

  texts = independent.TOXIC
  assert len(set(texts)) == len(texts) >= 80
  generated = [_template_regex(t) for t in toxicity_data._TOXIC_TRAIN + toxicity_data._TOXIC_EVAL]
  assert generated[0].fullmatch(toxicity_data._TOXIC_TRAIN[0].format(adj="STUPID", insult="moron"))
  # The generator only masks listed words, so unmasking with the detector's own normalisation
  # must not turn a text into a template's output either.
  for text in texts:
    plain = " ".join(toxicity.tokens(text))
    assert not any(r.fullmatch(text) or r.fullmatch(plain) for r in generated), text
  fixed = set(toxicity_data._HARD_TOXIC_TRAIN + toxicity_data._HARD_TOXIC_EVAL +
              toxicity_data._OTHER_LANGS_TOXIC + toxicity_data._MILD_ASIDES)
  assert not fixed & set(texts)
  share = sum(map(independent.unlisted, texts)) / len(texts)
  assert share >= independent.MIN_UNLISTED, share
  # The check itself: a listed word, even obfuscated as the training generator does it, counts.
  assert not independent.unlisted("You are a f*cking idiot.") and independent.unlisted("You clown.")
  # Italian, Dutch and Portuguese abuse is there, and no word list covers those languages.
  assert {"Vaffanculo, brutto stronzo.", "Rot op, stomme trut.", "Morre, desgraçado."} <= set(texts)
  assert not {"it.txt", "nl.txt", "pt.txt"} & set(os.listdir(toxicity.WORDS_DIR))


def test_independent_clean_sentences_are_new_to_the_classifier():
  from pipelines.labelled import toxicity_independent as independent

  used = set(independent.sentences.TRAIN_MODULES + independent.sentences.EVAL_MODULES)
  assert not used & set(independent.CLEAN_MODULES)
  clean = [t for where, t in independent.clean_paragraphs(pages=1) if where == "stdlib docstrings"]
  assert len(clean) >= 200
  assert not set(clean) & set(sentences.sentences(sentences.TRAIN_MODULES + sentences.EVAL_MODULES))
