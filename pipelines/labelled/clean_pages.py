"""PII detector hits on clean real pages: the Debian Administrator's Handbook (not in the sample).

    python -m pipelines.labelled.clean_pages [--languages=en-US,de-DE,fr-FR,nl-NL] [--pages=0]

The handbook holds no personal data of private persons: what the detectors find there is
either a false positive (a section number read as an IP address, a ZIP code read as a phone
number) or a published project address (``debian-user@lists.debian.org``). Every hit is printed
with its context, so each can be judged by eye; the counts per type and per 1,000 words are the
precision figures in docs/pii_and_toxicity.md. Pages are extracted the way the pipeline does
(``pipelines.extract.html_to_text``), from the Debian package ``debian-handbook``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

from pipelines import extract, pii

HANDBOOK_DIR = "/usr/share/doc/debian-handbook/html"


def page_texts(language: str, limit: int = 0) -> list[tuple[str, str]]:
  """``(path, text)`` of the language's pages, sorted; ``limit`` > 0 keeps the first ones."""
  directory = os.path.join(HANDBOOK_DIR, language)
  names = sorted(n for n in os.listdir(directory) if n.endswith(".html"))
  if limit:
    names = names[:limit]
  out = []
  for name in names:
    html = open(os.path.join(directory, name), "rb").read().decode("utf-8")
    out.append((name, extract.clean_text(extract.html_to_text(html, "https://debian-handbook.info/"))))
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--languages", default="en-US,de-DE,fr-FR,nl-NL")
  parser.add_argument("--pages", type=int, default=0, help="First N pages per language (0: all).")
  args = parser.parse_args(argv)
  if not os.path.isdir(HANDBOOK_DIR):
    sys.exit(f"{HANDBOOK_DIR} is missing: apt-get install debian-handbook")
  config = pii.PiiConfig()
  for language in args.languages.split(","):
    texts = page_texts(language.strip(), args.pages)
    words = sum(len(t.split()) for _, t in texts)
    hits: collections.Counter = collections.Counter()
    dropped = 0
    for name, text in texts:
      matches = pii.find_pii(text)
      dropped += config.too_much(len(matches), len(text.split()))
      for m in matches:
        hits[m.type] += 1
        context = text[max(0, m.start - 30):m.end + 10].replace("\n", " ")
        print(f"  {language} {name} {m.type}: {m.value!r} in {context!r}")
    summary = ", ".join(f"{t} {n}" for t, n in sorted(hits.items())) or "none"
    print(f"{language}: {len(texts)} pages, {words} words, hits: {summary}; "
          f"{1000 * sum(hits.values()) / max(words, 1):.2f} per 1,000 words; "
          f"pages dropped as too_much_pii: {dropped}")


if __name__ == "__main__":
  main()
