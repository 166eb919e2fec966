"""Extraction fidelity on real pages that are not in the sample: main text kept, boilerplate removed.

    python -m benchmarks.extraction_fidelity [--languages=all] [--pages=0] [--result=PATH|none]

Pages: the Debian Administrator's Handbook (Debian package ``debian-handbook``; the sample is
built from python3.11-doc and debian-reference, see data/sample/README.md), DocBook HTML made by
Publican. Labels come from the DocBook structure of each page, never from an extractor:

* main content: every ``div.para`` / ``p`` of the page's content ``div`` (the one between the two
  ``ul.docnav`` navigation lists), including the ones inside sidebars and admonitions
  (``div.sidebar``, ``div.note``, ``div.tip``, ``div.warning``, ``div.important``, ``div.caution``),
  which are reported on their own, and the ones holding nested inline markup
  (``<code><em>``), reported on their own too;
* boilerplate: the banner, the page title bar and each item of the navigation lists.

A paragraph is kept when its whitespace-normalised text occurs in the extracted text; a
boilerplate item is removed when no extracted line equals it. Extractors compared side by side
on the same pages: ``pipelines.extract.html_to_text`` (what the extract stage runs), the same
without its pre-processing (``prepare=False``: trafilatura alone), and resiliparse's
``extract_plain_text(main_content=True)``. The tables go to
``benchmarks/results/extraction_fidelity.json`` (``harness.write_result``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import os
import re
import sys
import time
import unicodedata

import lxml.html

from benchmarks import harness
from pipelines import extract

HANDBOOK_DIR = "/usr/share/doc/debian-handbook/html"
ASIDE_CLASSES = ("sidebar", "note", "tip", "warning", "important", "caution")
_SPACE_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
  return _SPACE_RE.sub(" ", unicodedata.normalize("NFC", text)).strip()


@dataclasses.dataclass
class Labels:
  paragraphs: list[tuple[str, str]]  # (kind, text): kind is "body", "aside" or "nested_inline".
  boilerplate: list[str]


def label_page(html: bytes) -> Labels:
  """Main-content paragraphs and boilerplate items of one Publican page, from its structure."""
  root = lxml.html.fromstring(html)
  body = root.find("body")
  content = [child for child in body if child.tag == "div" and child.get("id") != "banner"]
  paragraphs = []
  for div in content:
    for element in div.iter("div", "p"):
      classes = (element.get("class") or "").split()
      if element.tag == "div" and "para" not in classes:
        continue
      if element.tag == "p" and "title" in classes:
        continue
      if any(child.tag == "div" and "para" in (child.get("class") or "") for child in element):
        continue  # A wrapper: its inner paragraphs are labelled instead.
      text = normalise(element.text_content())
      if len(text.split()) < 4 and len(text) < 16:
        continue  # Too short to tell kept from coincidence (by characters too: CJK has no spaces).
      in_aside = any(set((a.get("class") or "").split()) & set(ASIDE_CLASSES)
                     for a in element.iterancestors("div"))
      nested = any(e.tag in ("em", "strong", "span") for code in element.iter("code")
                   for e in code.iterdescendants())
      paragraphs.append(("aside" if in_aside else "nested_inline" if nested else "body", text))
  boilerplate = []
  for element in body:
    if element.get("id") in ("banner", "title") or "docnav" in (element.get("class") or ""):
      items = element.findall(".//li") or [element]
      boilerplate.extend(t for t in (normalise(i.text_content()) for i in items) if t)
  return Labels(paragraphs, boilerplate)


def score(labels: Labels, text: str) -> dict[str, tuple[int, int]]:
  """``{kind: (kept, total)}`` and ``boilerplate: (removed, total)``."""
  flat = normalise(text)
  lines = {normalise(line) for line in text.split("\n")}
  result: dict[str, list[int]] = {}
  for kind, paragraph in labels.paragraphs:
    counts = result.setdefault(kind, [0, 0])
    counts[0] += paragraph in flat
    counts[1] += 1
  removed = sum(item not in lines for item in labels.boilerplate)
  result["boilerplate"] = [removed, len(labels.boilerplate)]
  return {k: (v[0], v[1]) for k, v in result.items()}


def pages(language: str, limit: int) -> list[str]:
  directory = os.path.join(HANDBOOK_DIR, language)
  names = sorted(n for n in os.listdir(directory) if n.startswith("sect.") and n.endswith(".html"))
  return [os.path.join(directory, n) for n in names[:limit]]


def run(languages: list[str], limit: int, html_to_text) -> dict[str, dict[str, tuple[int, int]]]:
  table = {}
  for language in languages:
    totals: dict[str, list[int]] = {}
    for path in pages(language, limit):
      html = open(path, "rb").read()
      text = extract.clean_text(html_to_text(html.decode("utf-8"), "https://debian-handbook.info/"))
      for kind, (kept, total) in score(label_page(html), text).items():
        t = totals.setdefault(kind, [0, 0])
        t[0] += kept
        t[1] += total
    table[language] = {k: (v[0], v[1]) for k, v in totals.items()}
  return table


def print_table(title: str, table) -> None:
  print(title)
  kinds = ("body", "aside", "nested_inline", "boilerplate")
  print(f"{'language':<8} " + " ".join(f"{k:>20}" for k in kinds))
  for language, row in table.items():
    cells = []
    for kind in kinds:
      kept, total = row.get(kind, (0, 0))
      cells.append(f"{kept:>6}/{total:<6} {kept / total if total else float('nan'):>6.3f}")
    print(f"{language:<8} " + " ".join(f"{c:>20}" for c in cells))


def resiliparse_text(html: str, url: str) -> str:
  """resiliparse's main-content extraction, one block per line (no bullets: lines stay comparable)."""
  del url
  from resiliparse.extract.html2text import extract_plain_text  # Benchmark-only dependency.

  return extract_plain_text(html, main_content=True, list_bullets=False, alt_texts=False,
                            links=False, form_fields=False, noscript=False)


EXTRACTORS = {
    "pipelines.extract.html_to_text": extract.html_to_text,
    "trafilatura alone": functools.partial(extract.html_to_text, prepare=False),
    "resiliparse main_content": resiliparse_text,
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--languages", default="all", help="Comma-separated, or 'all' installed.")
  parser.add_argument("--pages", type=int, default=0, help="First N sect.*.html pages (0: all).")
  parser.add_argument("--result", default=None, help="JSON path (default benchmarks/results/"
                      "extraction_fidelity.json); 'none' to skip")
  args = parser.parse_args(argv)
  if not os.path.isdir(HANDBOOK_DIR):
    sys.exit(f"{HANDBOOK_DIR} is missing: apt-get install debian-handbook")
  languages = [l.strip() for l in args.languages.split(",") if l.strip()]
  if languages == ["all"]:
    languages = sorted(d for d in os.listdir(HANDBOOK_DIR) if d != "Common_Content")
  result = {"benchmark": "extraction_fidelity", "library_versions": harness.library_versions(),
            "machine": harness.machine(), "settings": vars(args), "extractors": {}}
  for lib in ("trafilatura", "resiliparse", "lxml"):
    result["library_versions"][lib] = importlib.metadata.version(lib)
  for name, fn in EXTRACTORS.items():
    start = time.perf_counter()
    table = run(languages, args.pages or 10**6, fn)
    seconds = time.perf_counter() - start
    print_table(f"\n{name} ({seconds:.1f}s): kept/total fraction", table)
    result["extractors"][name] = {"seconds": round(seconds, 1), "languages": {
        language: {kind: {"kept": kept, "total": total} for kind, (kept, total) in row.items()}
        for language, row in table.items()}}
  if args.result != "none":
    print("wrote", harness.write_result(result, args.result))


if __name__ == "__main__":
  main()
