"""Heuristic quality filtering: Gopher quality and repetition rules, C4 line cleaning, URL blocklist.

Tag, then filter. :class:`TagQuality` computes every rule's value into ``doc["scores"]["quality.<rule>"]``
and the C4-cleaned text; :class:`ApplyQualityThresholds` compares the scores with
:class:`QualityConfig` and routes the document to the rejects with the first failing rule as its
reason (rules are checked in the order of :func:`rule_bounds`). Kept documents carry the cleaned
text; rejected ones keep their original text, so a reject can be read as it was judged.

All Gopher rules (Rae et al. 2021, appendix A) are measured on the C4-cleaned text, i.e. on what the
stage would keep: this way code blocks and navigation lines (which C4 removes line by line) do not
sink an otherwise good documentation page on the alphabetic-word or n-gram rules.

    python -m pipelines.quality --input=out/extract --output_dir=out/quality
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import urllib.parse
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from pipelines import text_utils

STAGE = "quality"

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "‣", "⁃", "◦", "●", "○", "▪", "▫", "■", "□", "-", "*", "–", "—")
ELLIPSES = ("...", "…")
# C4 keeps a line only if it ends like a sentence (C4 used . ? ! and a closing quote).
TERMINAL_PUNCTUATION = (".", "?", "!", '"', "”", "…")
# Lines with these substrings are cookie/terms boilerplate (the list C4 used).
POLICY_SUBSTRINGS = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
)
_SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """Thresholds; every field is also a command-line flag of the same name.

  Defaults are the Gopher and C4 papers' values except where noted in
  docs/pipelines_extract_quality_dedupe.md.
  """

  # Gopher quality rules.
  min_words: int = 50
  max_words: int = 100_000
  min_mean_word_length: float = 3.0
  max_mean_word_length: float = 10.0
  max_symbol_word_ratio: float = 0.1
  max_bullet_lines_frac: float = 0.9
  max_ellipsis_lines_frac: float = 0.3
  min_alpha_words_frac: float = 0.8
  min_stop_words: int = 2
  # Gopher repetition rules.
  max_dup_line_frac: float = 0.30
  max_dup_para_frac: float = 0.30
  max_dup_line_char_frac: float = 0.20
  max_dup_para_char_frac: float = 0.20
  max_top_2gram_char_frac: float = 0.20
  max_top_3gram_char_frac: float = 0.18
  max_top_4gram_char_frac: float = 0.16
  max_dup_5gram_char_frac: float = 0.15
  max_dup_6gram_char_frac: float = 0.14
  max_dup_7gram_char_frac: float = 0.13
  max_dup_8gram_char_frac: float = 0.12
  max_dup_9gram_char_frac: float = 0.11
  max_dup_10gram_char_frac: float = 0.10
  # C4 line cleaning (changes the text) and page rules.
  c4_min_words_per_line: int = 3
  c4_max_word_length: int = 1000
  c4_require_terminal_punct: bool = True
  c4_drop_javascript_lines: bool = True
  c4_drop_curly_bracket_lines: bool = True
  c4_drop_policy_lines: bool = True
  c4_min_sentences: int = 3
  c4_min_lines: int = 5
  c4_lorem_ipsum_page: bool = True
  # C4 dropped every page containing "{"; off by default because code documentation (e.g. the
  # Python docs) is exactly what we want to keep, and its code lines are removed line by line.
  c4_curly_bracket_page: bool = False


# ----------------------------------------------------------------------------- measurements


def c4_clean_lines(text: str, config: QualityConfig) -> list[str]:
  """C4's line filter: the lines of ``text`` that look like sentences of running prose."""
  kept = []
  for line in text_utils.split_lines(text):
    lower = line.lower()
    words = text_utils.split_words(line)
    if config.c4_require_terminal_punct and not line.endswith(TERMINAL_PUNCTUATION):
      continue
    if len(words) < config.c4_min_words_per_line:
      continue
    if max(map(len, line.split()), default=0) > config.c4_max_word_length:
      continue
    if config.c4_drop_javascript_lines and "javascript" in lower:
      continue
    if config.c4_drop_curly_bracket_lines and "{" in line:
      continue
    if config.c4_drop_policy_lines and any(p in lower for p in POLICY_SUBSTRINGS):
      continue
    kept.append(line)
  return kept


def gopher_quality_scores(text: str) -> dict[str, float]:
  words = text_utils.split_words(text)
  tokens = text.split()  # Gopher's "words" for the alphabetic rule: whitespace tokens.
  lines = text_utils.split_lines(text)
  num_words = len(words)
  symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
  return {
      "gopher_word_count": num_words,
      "gopher_mean_word_length": sum(map(len, words)) / num_words if num_words else 0.0,
      "gopher_symbol_word_ratio": symbols / num_words if num_words else 0.0,
      "gopher_bullet_lines_frac": _frac(sum(l.startswith(BULLETS) for l in lines), len(lines)),
      "gopher_ellipsis_lines_frac": _frac(sum(l.endswith(ELLIPSES) for l in lines), len(lines)),
      "gopher_alpha_words_frac": _frac(
          sum(any(map(str.isalpha, t)) for t in tokens), len(tokens)
      ),
      "gopher_stop_words": sum(map(STOP_WORDS.__contains__, map(str.lower, words))),
  }


def gopher_repetition_scores(text: str) -> dict[str, float]:
  scores = {}
  for unit, pieces in (
      ("line", text_utils.split_lines(text)),
      ("para", text_utils.split_paragraphs(text)),
  ):
    dup_count, dup_chars = _duplicates(pieces)
    scores[f"gopher_repetition_dup_{unit}_frac"] = _frac(dup_count, len(pieces))
    scores[f"gopher_repetition_dup_{unit}_char_frac"] = _frac(dup_chars, sum(map(len, pieces)))
  words = [w.lower() for w in text_utils.split_words(text)]
  lengths = [len(w) for w in words]
  total_chars = sum(lengths)
  for n in (2, 3, 4):
    scores[f"gopher_repetition_top_{n}gram_char_frac"] = _frac(
        _top_ngram_chars(words, n), total_chars
    )
  for n in range(5, 11):
    scores[f"gopher_repetition_dup_{n}gram_char_frac"] = _frac(
        _duplicated_ngram_chars(words, lengths, n), total_chars
    )
  return scores


def _frac(part: float, whole: float) -> float:
  return part / whole if whole else 0.0


def _duplicates(pieces: Sequence[str]) -> tuple[int, int]:
  """How many pieces repeat an earlier one, and their characters."""
  seen: set[str] = set()
  count = chars = 0
  for piece in pieces:
    if piece in seen:
      count += 1
      chars += len(piece)
    seen.add(piece)
  return count, chars


def _top_ngram_chars(words: Sequence[str], n: int) -> int:
  """Characters (summed word lengths) of all occurrences of the most frequent repeated n-gram."""
  counts = collections.Counter(text_utils.word_ngrams(words, n))
  top = max(counts.values(), default=0)
  if top <= 1:
    return 0
  # The most frequent n-gram; among equally frequent ones, the longest.
  return top * max(sum(map(len, g)) for g, c in counts.items() if c == top)


def _duplicated_ngram_chars(words: Sequence[str], lengths: Sequence[int], n: int) -> int:
  """Characters (summed word lengths) of the repeats of earlier n-grams, read left to right.

  Like datatrove's Gopher implementation: the first occurrence of an n-gram is not counted, and
  after a repeat the scan jumps past it, so overlapping repeats are not counted twice.

  Only positions whose n-gram also occurs earlier can be repeats; the scan goes from one such
  position to the next, adding the n-grams it walks over to ``seen`` in one step.
  """
  grams = text_utils.word_ngrams(words, n)
  first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))  # n-gram -> first position.
  if len(first) == len(grams):
    return 0  # No n-gram occurs twice (the usual case).
  seen: set[tuple[str, ...]] = set()
  chars = i = 0
  for position, gram in enumerate(grams):
    if position < i or first[gram] == position:
      continue  # Skipped after a repeat, or a first occurrence (never in ``seen``).
    seen.update(grams[i:position])
    if gram in seen:
      chars += sum(lengths[position : position + n])
      i = position + n
    else:
      seen.add(gram)
      i = position + 1
  return chars


def c4_page_scores(original: str, cleaned_lines: Sequence[str]) -> dict[str, float]:
  cleaned = "\n".join(cleaned_lines)
  return {
      "c4_lorem_ipsum": original.lower().count("lorem ipsum"),
      "c4_curly_bracket": original.count("{"),
      "c4_sentences": len(_SENTENCE_END_RE.findall(cleaned)),
      "c4_lines": len(cleaned_lines),
  }


# ----------------------------------------------------------------------------- URL blocklist


def load_blocklist(path: str) -> tuple[str, ...]:
  """Reads a blocklist: one domain (``example.com``) or URL substring per line, ``#`` comments."""
  if not path:
    return ()
  with FileSystems.open(path) as f:
    lines = f.read().decode("utf-8").splitlines()
  entries = [line.split("#", 1)[0].strip().lower() for line in lines]
  return tuple(sorted({e for e in entries if e}))


def blocklist_match(url: str, blocklist: Sequence[str]) -> str:
  """The first blocklist entry matching ``url`` ('' if none).

  An entry without ``/`` is a domain and matches that host and its subdomains; any other entry
  matches as a substring of the lowercased URL.
  """
  url = url.lower()
  host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
  for entry in blocklist:
    if "/" not in entry:
      if host == entry or host.endswith("." + entry):
        return entry
    elif entry in url:
      return entry
  return ""


# ----------------------------------------------------------------------------- tag, then filter


def score_document(
    doc: common.Doc, config: QualityConfig, blocklist: Sequence[str] = ()
) -> tuple[dict[str, float], str]:
  """All rule values (keys without the ``quality.`` prefix) and the C4-cleaned text."""
  text = doc["text"]
  cleaned_lines = c4_clean_lines(text, config)
  cleaned = "\n".join(cleaned_lines)
  scores: dict[str, float] = {
      "url_blocklist": int(bool(blocklist_match(str(doc.get("url", "")), blocklist))),
      "c4_lines_removed": len(text_utils.split_lines(text)) - len(cleaned_lines),
  }
  scores.update(c4_page_scores(text, cleaned_lines))
  scores.update(gopher_quality_scores(cleaned))
  scores.update(gopher_repetition_scores(cleaned))
  return {k: round(v, 6) for k, v in scores.items()}, cleaned


def rule_bounds(config: QualityConfig) -> dict[str, tuple[float | None, float | None]]:
  """``rule -> (min, max)`` allowed score, in the order rules are checked (None: unbounded)."""
  c = config
  bounds = {
      "url_blocklist": (None, 0),
      "c4_lorem_ipsum": (None, 0 if c.c4_lorem_ipsum_page else None),
      "c4_curly_bracket": (None, 0 if c.c4_curly_bracket_page else None),
      "gopher_word_count": (c.min_words, c.max_words),
      "gopher_mean_word_length": (c.min_mean_word_length, c.max_mean_word_length),
      "gopher_symbol_word_ratio": (None, c.max_symbol_word_ratio),
      "gopher_bullet_lines_frac": (None, c.max_bullet_lines_frac),
      "gopher_ellipsis_lines_frac": (None, c.max_ellipsis_lines_frac),
      "gopher_alpha_words_frac": (c.min_alpha_words_frac, None),
      "gopher_stop_words": (c.min_stop_words, None),
      "gopher_repetition_dup_line_frac": (None, c.max_dup_line_frac),
      "gopher_repetition_dup_para_frac": (None, c.max_dup_para_frac),
      "gopher_repetition_dup_line_char_frac": (None, c.max_dup_line_char_frac),
      "gopher_repetition_dup_para_char_frac": (None, c.max_dup_para_char_frac),
  }
  for n in (2, 3, 4):
    bounds[f"gopher_repetition_top_{n}gram_char_frac"] = (
        None, getattr(c, f"max_top_{n}gram_char_frac"))
  for n in range(5, 11):
    bounds[f"gopher_repetition_dup_{n}gram_char_frac"] = (
        None, getattr(c, f"max_dup_{n}gram_char_frac"))
  bounds["c4_too_few_sentences"] = (c.c4_min_sentences, None)
  bounds["c4_too_few_lines"] = (c.c4_min_lines, None)
  return bounds


# Rules whose reason name differs from the score they read.
_RULE_SCORE = {"c4_too_few_sentences": "c4_sentences", "c4_too_few_lines": "c4_lines"}


def first_failure(
    scores: dict[str, Any], config: QualityConfig
) -> tuple[str, dict[str, Any]] | None:
  """``(rule, details)`` of the first rule the scores fail, or None if the document passes."""
  for rule, (low, high) in rule_bounds(config).items():
    value = scores[f"{STAGE}.{_RULE_SCORE.get(rule, rule)}"]
    if (low is not None and value < low) or (high is not None and value > high):
      return rule, {"value": value, "min": low, "max": high}
  return None


class TagQuality(beam.DoFn):
  """Adds every ``quality.*`` score; emits ``(doc, cleaned_text)`` and decides nothing."""

  def __init__(self, config: QualityConfig, blocklist: Sequence[str]):
    self._config = config
    self._blocklist = tuple(blocklist)

  @common.per_element(STAGE, "quality_error")
  def process(self, doc: common.Doc):
    scores, cleaned = score_document(doc, self._config, self._blocklist)
    old = doc.get("scores")
    doc = dict(doc, scores={**(old if isinstance(old, dict) else {}),
                            **{f"{STAGE}.{k}": v for k, v in scores.items()}})
    yield doc, cleaned


class ApplyQualityThresholds(beam.DoFn):
  """Keeps documents that pass every rule (with their cleaned text); rejects the rest."""

  def __init__(self, config: QualityConfig):
    self._config = config

  @common.per_element(STAGE, "quality_error")
  def process(self, doc_and_cleaned):
    doc, cleaned = doc_and_cleaned
    failure = first_failure(doc["scores"], self._config)
    if failure is not None:
      rule, details = failure
      yield common.reject(STAGE, rule, doc, **details)
    else:
      yield common.keep(STAGE, dict(doc, text=cleaned))


def filter_quality(docs, config: QualityConfig, blocklist: Sequence[str] = ()):
  """The stage's transform: tagged output with ``kept`` and ``rejects``."""
  return apply_steps(docs, TagQuality(config, blocklist), ApplyQualityThresholds(config))


def apply_steps(docs, tag: TagQuality, apply: ApplyQualityThresholds):
  """The two DoFns of :func:`steps` as ParDos (the default layout)."""
  tagged = docs | "TagQuality" >> beam.ParDo(tag).with_outputs(common.REJECTS_TAG, main="tagged")
  decided = tagged.tagged | "ApplyThresholds" >> beam.ParDo(apply).with_outputs(
      common.REJECTS_TAG, main="kept")
  rejects = (tagged[common.REJECTS_TAG], decided[common.REJECTS_TAG]) | (
      "QualityRejects" >> beam.Flatten())
  return {"kept": decided.kept, common.REJECTS_TAG: rejects}


# ----------------------------------------------------------------------------- command line


def parse_bool(value: str) -> bool:
  if value.lower() in ("1", "true", "yes", "on"):
    return True
  if value.lower() in ("0", "false", "no", "off"):
    return False
  raise ValueError(f"not a boolean: {value!r}")


def add_config_flags(parser, config_cls) -> None:
  """One ``--<field>`` flag per field of the config dataclass, defaulting to its value."""
  for field in dataclasses.fields(config_cls):
    kind = parse_bool if isinstance(field.default, bool) else type(field.default)
    parser.add_argument(f"--{field.name}", type=kind, default=field.default)


def config_from_args(config_cls, args):
  return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def add_args(parser) -> None:
  add_config_flags(parser, QualityConfig)
  parser.add_argument("--url_blocklist", default="",
                      help="File of blocked domains / URL substrings, one per line.")


def build(args):
  """The stage's transform (docs -> kept + rejects) from its flags; the fused filter job uses it too."""
  return transform(steps(args))


def transform(dofns: tuple[beam.DoFn, ...]):
  """The transform that applies :func:`steps`' DoFns as ParDos (the default layout)."""
  return lambda docs: apply_steps(docs, *dofns)


def steps(args) -> tuple[beam.DoFn, ...]:
  """The stage's DoFns in order: ParDos in the default layout (:func:`apply_steps`), run on each
  input file in the per-input one (pipelines/shardwise.py)."""
  config = config_from_args(QualityConfig, args)
  return TagQuality(config, load_blocklist(args.url_blocklist)), ApplyQualityThresholds(config)


def main(argv=None) -> dict[str, Any]:
  args, options = common.parse_stage_args(__doc__.splitlines()[0], argv, add_args, per_input=True)
  dofns = steps(args)  # Built once: the blocklist is read once, both layouts get these DoFns.
  return common.run_doc_stage(STAGE, args, options, transform(dofns), dofns)


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  main()
