"""Tests for pipelines.quality: Gopher quality/repetition rules, C4 cleaning, URL blocklist."""

import json

import pytest

from pipelines import common
from pipelines import quality
from stage_dirs import read_out, write_stage_dir

# Shaped like a Python documentation page after extraction: headings, prose, a list, code.
DOCS_PAGE = "\n".join([
    "3. An Informal Introduction to Python",
    "In the following examples, input and output are distinguished by the presence or absence of prompts.",
    "To repeat the example, you must type everything after the prompt, when the prompt appears.",
    "Lines that do not begin with a prompt are output from the interpreter.",
    "Note that a secondary prompt on a line by itself in an example means you must type a blank line.",
    "This is used to end a multi-line command.",
    ">>> spam = {'eggs': 1}",
    ">>> print(spam)",
    "- numbers",
    "- strings",
    "Many of the examples in this manual, even those entered at the interactive prompt, include comments.",
    "Comments in Python start with the hash character and extend to the end of the physical line.",
    "A comment may appear at the start of a line or following whitespace or code, but not within a string literal.",
])
REPETITIVE = "\n".join(["Buy the best shoes with the lowest prices in town today."] * 20)
LOREM = DOCS_PAGE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod."
NUMBERS = "\n".join(
    ["Table 1234 5678 9012 3456 7890 1234 5678 9012 3456 and the totals."] * 3
    + [f"Row {i}: 1234 5678 9012 3456 7890 {i * 1111} 5678 9012 3456 with the sums." for i in range(1, 6)]
)
BOILERPLATE = "\n".join([
    "Home | Products | About us | Contact",
    "This site uses cookies to improve your experience.",
    "By continuing you agree to our Terms of Use and Privacy Policy.",
    "Please enable JavaScript to view this page.",
    "Sign in",
    "Copyright 2024",
])
TWO_SENTENCES = (
    "The first sentence of this page is long and it keeps going with more and more words so that "
    "the page has enough words to pass the word count rule of the Gopher filters without trouble.\n"
    "The second sentence is also quite long and it is here to show that a page with only two "
    "sentences is dropped by the page level rule of the C4 cleaning heuristics for the web."
)


def make_doc(doc_id, text, url="https://docs.python.org/3/tutorial/introduction.html"):
  return {"id": doc_id, "url": url, "text": text, "source": "web", "lang": "en", "lang_score": 1.0}


CASES = {
    "good": (make_doc("0" * 16, DOCS_PAGE), None),
    "short": (make_doc("1" * 16, "Too short to be a document. It has few words. Really."), "gopher_word_count"),
    "repetitive": (make_doc("2" * 16, REPETITIVE), "gopher_repetition_dup_line_frac"),
    "lorem": (make_doc("3" * 16, LOREM), "c4_lorem_ipsum"),
    "numbers": (make_doc("4" * 16, NUMBERS), "gopher_alpha_words_frac"),
    "boilerplate": (make_doc("5" * 16, BOILERPLATE), "gopher_word_count"),
    "two_sentences": (make_doc("6" * 16, TWO_SENTENCES), "c4_too_few_sentences"),
    "blocked": (make_doc("7" * 16, DOCS_PAGE, url="https://www.spam.example/page"), "url_blocklist"),
    "blocked_path": (make_doc("8" * 16, DOCS_PAGE, url="https://ok.example/ads/1"), "url_blocklist"),
}



@pytest.fixture(scope="module")
def stage_input(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("quality")
  (tmp / "blocklist.txt").write_text("# domains and URL substrings\nspam.example\n/ads/\n")
  inp = write_stage_dir(tmp / "in", [doc for doc, _ in CASES.values()], extra_lines=["not json"])
  return tmp, inp


@pytest.fixture(scope="module")
def filtered(stage_input):
  tmp, inp = stage_input
  out = tmp / "out"
  stats = quality.main([f"--input={inp}", f"--output_dir={out}", "--num_shards=2",
                        f"--url_blocklist={tmp / 'blocklist.txt'}"])
  return out, stats


def test_each_document_gets_its_expected_reason(filtered):
  out, stats = filtered
  kept, rejects = read_out(out)
  reasons = {r["id"]: r["reason"] for r in rejects}
  for name, (doc, expected) in CASES.items():
    if expected is None:
      assert doc["id"] in {d["id"] for d in kept}, name
    else:
      assert reasons.get(doc["id"]) == expected, name
  assert reasons[""] == "bad_json"


def test_stats_and_accounting(filtered):
  out, stats = filtered
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["in"] == len(CASES) + 1
  assert stats["kept"] == 1
  assert stats["dropped"] == {
      "bad_json": 1, "gopher_word_count": 2, "gopher_repetition_dup_line_frac": 1,
      "c4_lorem_ipsum": 1, "gopher_alpha_words_frac": 1, "c4_too_few_sentences": 1,
      "url_blocklist": 2}
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  assert (out / "_SUCCESS").exists()


def test_kept_text_is_c4_cleaned_and_scored(filtered):
  out, _ = filtered
  (kept,), rejects = read_out(out)
  lines = kept["text"].split("\n")
  # Headings, list items and code lines go; the prose stays, one paragraph per line.
  assert lines[0].startswith("In the following examples")
  assert not any(l.startswith((">>>", "- ", "3.")) for l in lines)
  assert len(lines) == 8
  assert kept["scores"]["quality.c4_lines_removed"] == 5
  assert kept["scores"]["quality.gopher_word_count"] > 50
  assert kept["scores"]["quality.c4_curly_bracket"] == 1  # Recorded, but not a page rule by default.
  rule_scores = {k for k in kept["scores"] if k.startswith("quality.")}
  assert len(rule_scores) == 26
  # Rejects keep the original text and say why.
  lorem = next(r for r in rejects if r["reason"] == "c4_lorem_ipsum")
  assert "Lorem ipsum" in lorem["doc"]["text"]
  assert lorem["details"] == {"value": 1, "min": None, "max": 0}


def test_flags_override_thresholds(stage_input, tmp_path):
  _, inp = stage_input
  stats = quality.main([f"--input={inp}", f"--output_dir={tmp_path / 'o'}",
                        "--min_words=1000", "--c4_curly_bracket_page=true"])
  kept, rejects = read_out(tmp_path / "o")
  assert stats["kept"] == 0
  good = next(r for r in rejects if r["id"] == CASES["good"][0]["id"])
  assert good["reason"] == "c4_curly_bracket"
  assert stats["dropped"] == {"bad_json": 1, "c4_curly_bracket": 3, "c4_lorem_ipsum": 1,
                              "gopher_word_count": 5}


def test_rerun_is_byte_identical(stage_input, filtered, tmp_path):
  tmp, inp = stage_input
  out, _ = filtered
  again = tmp_path / "again"
  quality.main([f"--input={inp}", f"--output_dir={again}", "--num_shards=2",
                f"--url_blocklist={tmp / 'blocklist.txt'}"])
  files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
  for f in files:
    assert (out / f).read_bytes() == (again / f).read_bytes(), f


def test_unfinished_input_is_refused(tmp_path):
  inp = write_stage_dir(tmp_path / "in", [CASES["good"][0]], success=False)
  with pytest.raises(common.StageError, match="_SUCCESS"):
    quality.main([f"--input={inp}", f"--output_dir={tmp_path / 'out'}"])


def test_repetition_measures():
  scores = quality.gopher_repetition_scores("ab cd ab cd ab cd")
  assert scores["gopher_repetition_top_2gram_char_frac"] == 1.0  # "ab cd" x3 covers 12 of 12 chars
  assert scores["gopher_repetition_top_3gram_char_frac"] == pytest.approx(12 / 12)  # 2 x 6 chars
  # The repeat of a 5-gram (not its first occurrence) covers 5 of the 11 words.
  words = "aa bb cc dd ee xx aa bb cc dd ee"
  assert quality.gopher_repetition_scores(words)["gopher_repetition_dup_5gram_char_frac"] == pytest.approx(10 / 22)
  # A run of one repeated word: repeats are counted without overlap.
  assert quality.gopher_repetition_scores("ab " * 10)["gopher_repetition_dup_5gram_char_frac"] == pytest.approx(5 / 10)
  assert quality.gopher_repetition_scores(words)["gopher_repetition_dup_6gram_char_frac"] == 0.0
  lines = quality.gopher_repetition_scores("one line\nother\none line\n\nthird")
  assert lines["gopher_repetition_dup_line_frac"] == pytest.approx(1 / 4)
  assert lines["gopher_repetition_dup_line_char_frac"] == pytest.approx(8 / 26)


def test_gopher_quality_measures():
  s = quality.gopher_quality_scores("The cat ... #tag\n- item one\n- two ...\n12 34")
  assert s["gopher_word_count"] == 8
  assert s["gopher_symbol_word_ratio"] == pytest.approx(3 / 8)
  assert s["gopher_bullet_lines_frac"] == pytest.approx(2 / 4)
  assert s["gopher_ellipsis_lines_frac"] == pytest.approx(1 / 4)
  assert s["gopher_alpha_words_frac"] == pytest.approx(6 / 12)
  assert s["gopher_stop_words"] == 1


def test_blocklist_matching():
  blocklist = ("/ads/", "spam.example")
  assert quality.blocklist_match("https://SPAM.example/x", blocklist) == "spam.example"
  assert quality.blocklist_match("https://a.spam.example/x", blocklist) == "spam.example"
  assert quality.blocklist_match("https://notspam.example/x", blocklist) == ""
  assert quality.blocklist_match("https://ok.example/ads/x", blocklist) == "/ads/"
