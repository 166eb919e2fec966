"""Toxicity scorer: normalisation, ordering, tricky clean words, training determinism, Beam stage."""

import json
import os

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
