"""Fast, dependency-free text helpers shared by the filter and dedup stages.

Words are found with one regular expression (no NLP toolkit): a word is a run of letters, digits
or underscores, optionally joined by an apostrophe, hyphen or dot (``don't``, ``e-mail``, ``3.11``,
``os.path``). Everything else (punctuation, symbols, whitespace) separates words. The same splitter
is used by quality rules and by dedup shingles, so both stages agree on what a word is.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from typing import Sequence

_WORD_RE = re.compile(r"\w+(?:['’\-.]\w+)*")
_NOT_WORD_OR_SPACE_RE = re.compile(r"[^\w\s]+")
_SPACE_RE = re.compile(r"\s+")
_PARAGRAPH_SPLIT_RE = re.compile(r"\n\s*\n")


# Python codecs that decode bytes to str but are not web page encodings (the WHATWG Encoding
# standard has none of them): escapes that can make lone surrogates, host-name codecs, and
# codecs that always fail.
_NOT_PAGE_CODECS = frozenset(
    ["unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "utf-7"])


def text_codec(label: str) -> str | None:
  """The Python codec a charset label names, if it is a text encoding a page can be in; else None.

  ``codecs.lookup`` also knows bytes-to-bytes codecs (``hex``, ``base64``, ``zlib``, ``rot13``)
  that ``bytes.decode`` refuses with a LookupError: a page that names one gets the fallback
  decoding, as a browser would do with an unknown label.
  """
  try:
    info = codecs.lookup(label.strip().strip("\"'"))
  except (LookupError, ValueError, TypeError):
    return None
  if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_PAGE_CODECS:
    return None
  return info.name


def split_words(text: str) -> list[str]:
  """The words of ``text``, in order (see the module docstring for what a word is)."""
  return _WORD_RE.findall(text)


def split_lines(text: str) -> list[str]:
  """Non-empty lines, stripped."""
  return [line.strip() for line in text.split("\n") if line.strip()]


def split_paragraphs(text: str) -> list[str]:
  """Blocks separated by blank lines, stripped (extract's output has one paragraph per line)."""
  return [p.strip() for p in _PARAGRAPH_SPLIT_RE.split(text) if p.strip()]


def normalize_for_hash(text: str) -> str:
  """Canonical form used by exact dedup.

  NFKC (so full-width and compatibility characters compare equal), lowercase, punctuation and
  symbols removed, whitespace runs collapsed to one space, stripped. Two pages that differ only
  in case, punctuation or layout therefore hash the same.
  """
  text = unicodedata.normalize("NFKC", text).lower()
  text = _NOT_WORD_OR_SPACE_RE.sub(" ", text).replace("_", " ")
  return _SPACE_RE.sub(" ", text).strip()


def word_ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
  """All ``n``-grams of ``words`` (none if there are fewer than ``n`` words)."""
  if n < 1:  # Degenerate sizes keep their literal meaning (empty or clipped slices).
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
  # zip of the n shifted lists builds every ``tuple(words[i : i + n])`` in C.
  return list(zip(*(words[i:] for i in range(n))))
