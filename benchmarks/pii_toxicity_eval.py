"""Precision/recall of the PII detectors and the toxicity scorer on the labelled sets.

    python -m benchmarks.pii_toxicity_eval [--per_type=30] [--seed=0] [--result=PATH|none]
        [--sections=pii,secret_independent,secret_clean_docs,toxicity_template_eval,
                    toxicity_independent]

PII: Faker values (six locales) planted into stdlib docstring sentences plus hard negatives,
scored per type (pipelines/labelled/pii_data.py). Toxicity: the held-out eval set
(pipelines/labelled/toxicity_data.py) at the stage's default threshold and a few others, then
the independent set (pipelines/labelled/toxicity_independent.py: hand-written abuse, real clean
pages), with every miss and false positive printed. The figures go to
benchmarks/results/pii_toxicity_eval.json (``harness.write_result``). With ``--sections`` only those
are rerun: the other sections of an existing result file are kept as they were, and
``sections_rerun`` records when each rerun section was measured and with which detect-secrets
(so a PII change does not need the Debian handbook that the toxicity clean pages come from).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import time

from benchmarks import harness
from pipelines import pii, toxicity
from pipelines.labelled import (pii_data, secrets_independent, toxicity_data, toxicity_independent,
                                train_toxicity)

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
SECTIONS = ("pii", "secret_independent", "secret_clean_docs", "toxicity_template_eval",
            "toxicity_independent")
# Clean text for SECRET precision: the machine's package docs (what is there depends on the
# machine's packages; the file and word counts are recorded with the hits).
CLEAN_DOCS_DIR = "/usr/share/doc"
_CLEAN_DOC_NAME_RE = re.compile(r"^(?:changelog|readme|news|copyright)", re.IGNORECASE)


def pii_table(per_type: int, seed: int) -> dict:
  start = time.perf_counter()
  examples = pii_data.positives(per_type, seed) + pii_data.hard_negatives(per_type, seed)
  counts = pii_data.evaluate(examples)
  elapsed = time.perf_counter() - start
  planted = sum(len(e.planted) for e in examples)
  print(f"PII: {len(examples)} texts, {planted} planted values, "
        f"{len(examples) - sum(bool(e.planted) for e in examples)} hard negatives "
        f"({elapsed:.1f}s)")
  print(f"{'type':<12} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
  for name, c in counts.items():
    print(f"{name:<12} {c.tp:>5} {c.fp:>4} {c.fn:>4} {c.precision:>9.3f} {c.recall:>7.3f}")
  print(f"planted values left after redaction: {len(pii_data.leaks(examples))}")
  for example in examples:
    found = {(m.type, m.value) for m in pii.find_pii(example.text)}
    for pii_type, value in sorted(found - set(example.planted)):
      print(f"  false positive {pii_type}: {value!r}")
    for pii_type, value in sorted(set(example.planted) - found):
      print(f"  missed {pii_type}: {value!r}")
  return {name: {"tp": c.tp, "fp": c.fp, "fn": c.fn} for name, c in counts.items()}


def independent_secret_table(seed: int) -> dict:
  """Recall on secrets in vendor formats the detector was not written from (no redaction of the
  value's text may survive); precision on real pages is the clean-page check of docs."""
  table = secrets_independent.recall(seed=seed)
  print("\nSECRET, formats not in the detector's design (pipelines/labelled/secrets_independent.py):")
  for name, row in table.items():
    print(f"  {name:<24} {row['found']:>3}/{row['total']:<3}")
  found, total = sum(r["found"] for r in table.values()), sum(r["total"] for r in table.values())
  print(f"  {'all':<24} {found:>3}/{total:<3} recall {found / total:.3f}")
  return table


def _clean_doc_files() -> list[str]:
  files = []
  for root, dirs, names in os.walk(CLEAN_DOCS_DIR):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      if (_CLEAN_DOC_NAME_RE.match(name) and not os.path.islink(path)
          and (name.endswith(".gz") or "." not in name
               or name.lower().endswith((".md", ".txt", ".rst")))):
        files.append(path)
  return files


def clean_docs_secret_table() -> dict:
  """SECRET hits on clean text: the changelogs, READMEs, NEWS and copyright files under
  /usr/share/doc (no secrets planted; each hit is a false positive or a real published token,
  listed for reading). A hit's value is recorded only as its first 4 characters and length."""
  start = time.perf_counter()
  files, words, chars, hits = 0, 0, 0, []
  for path in _clean_doc_files():
    try:
      with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        text = f.read().decode("utf-8", "replace")
    except (OSError, EOFError):
      continue
    files += 1
    words += len(text.split())
    chars += len(text)
    for m in pii.find_pii(text, types=(pii.SECRET,)):
      hits.append({"file": os.path.relpath(path, CLEAN_DOCS_DIR), "start": m.start,
                   "value_prefix": m.value[:4], "length": len(m.value)})
  elapsed = time.perf_counter() - start
  print(f"\nSECRET on clean text ({CLEAN_DOCS_DIR} changelog/README/NEWS/copyright files): "
        f"{files} files, {words} words, {len(hits)} hits ({elapsed:.1f}s)")
  for hit in hits:
    print(f"  {hit['file']} @{hit['start']}: {hit['value_prefix']}… ({hit['length']} chars)")
  return {"dir": CLEAN_DOCS_DIR, "files": files, "words": words, "chars": chars,
          "secret_hits": len(hits), "hits": hits}


def _threshold_rows(scores, labels) -> dict:
  default = toxicity.ToxicityConfig().threshold
  print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6} {'fp':>4} {'fn':>4}")
  rows = {}
  for threshold in sorted({*THRESHOLDS, default}):
    m = train_toxicity.metrics(scores, labels, threshold)
    mark = "  <- default" if threshold == default else ""
    print(f"{threshold:>9.2f} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
          f"{m['fp']:>4} {m['fn']:>4}{mark}")
    rows[f"{threshold:.2f}"] = m
  return rows


def toxicity_table() -> dict:
  evaluation = toxicity_data.build("eval")
  scores = [toxicity.score(text) for text, _ in evaluation]
  labels = [label for _, label in evaluation]
  print(f"\nToxicity: {len(evaluation)} eval texts ({sum(labels)} toxic), "
        f"disjoint from the {len(toxicity_data.build('train'))} training texts")
  rows = _threshold_rows(scores, labels)
  default = toxicity.ToxicityConfig().threshold
  for (text, label), s in zip(evaluation, scores):
    if (s > default) != bool(label):
      print(f"  {'missed' if label else 'false positive'} ({s:.3f}): {text[:100]!r}")
  return {"texts": len(evaluation), "toxic": sum(labels), "thresholds": rows}


def independent_toxicity_table() -> dict:
  """Hand-written abuse (recall) against real clean paragraphs (false positives)."""
  toxic = list(toxicity_independent.TOXIC)
  clean = toxicity_independent.clean_paragraphs()
  toxic_scores = [toxicity.score(t) for t in toxic]
  clean_scores = [toxicity.score(t) for _, t in clean]
  unlisted = [toxicity_independent.unlisted(t) for t in toxic]
  sources = sorted({where.split("/")[0] for where, _ in clean})
  print(f"\nToxicity, independent set: {len(toxic)} hand-written toxic texts "
        f"({sum(unlisted)} with no word-list entry), {len(clean)} clean paragraphs of real pages "
        f"({', '.join(sources)})")
  rows = _threshold_rows(toxic_scores + clean_scores, [1] * len(toxic) + [0] * len(clean))
  default = toxicity.ToxicityConfig().threshold
  found = [s > default for s in toxic_scores]
  for name, keep in (("with a word-list entry", False), ("with no word-list entry", True)):
    hits = [f for f, u in zip(found, unlisted) if u == keep]
    print(f"recall at {default} on texts {name}: {sum(hits)}/{len(hits)}")
  for text, s in zip(toxic, toxic_scores):
    if s <= default:
      print(f"  missed ({s:.3f}): {text[:100]!r}")
  false_positives = [{"where": w, "score": round(s, 3), "text": t}
                     for (w, t), s in zip(clean, clean_scores) if s > default]
  for fp in false_positives:
    print(f"  false positive ({fp['score']:.3f}) {fp['where']}: {fp['text'][:160]!r}")
  return {"toxic": len(toxic), "toxic_unlisted": sum(unlisted), "clean": len(clean),
          "clean_sources": sources, "thresholds": rows,
          "recall_unlisted": [sum(f for f, u in zip(found, unlisted) if u), sum(unlisted)],
          "recall_listed": [sum(f for f, u in zip(found, unlisted) if not u),
                            len(toxic) - sum(unlisted)],
          "false_positives_at_default": false_positives,
          "highest_clean": sorted(({"where": w, "score": round(s, 3), "text": t[:200]}
                                   for (w, t), s in zip(clean, clean_scores)),
                                  key=lambda r: -r["score"])[:10]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_type", type=int, default=30,
                      help="Planted values per locale and PII type.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--result", default=None, help="JSON path (default benchmarks/results/"
                      "pii_toxicity_eval.json); 'none' to skip")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help="Comma-separated sections to run (the others are kept from --result).")
  args = parser.parse_args(argv)
  sections = [s for s in args.sections.split(",") if s]
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
  result = {"benchmark": "pii_toxicity_eval", "library_versions": harness.library_versions(),
            "machine": harness.machine(), "settings": vars(args),
            "handbook_installed": os.path.isdir(toxicity_independent.clean_pages.HANDBOOK_DIR)}
  path = None if args.result == "none" else (
      args.result or os.path.join(harness.RESULTS_DIR, "pii_toxicity_eval.json"))
  if set(sections) != set(SECTIONS):
    if not path or not os.path.exists(path):
      parser.error("--sections needs an existing --result file to keep the other sections from")
    with open(path) as f:
      kept = json.load(f)
    rerun = kept.get("sections_rerun", {})
    result = {**kept, "sections_rerun": rerun}
    for name in sections:
      rerun[name] = {"date": datetime.date.today().isoformat(), "settings": vars(args),
                     "machine": harness.machine(),
                     "detect_secrets": _detect_secrets_version()}
  runners = {"pii": lambda: pii_table(args.per_type, args.seed),
             "secret_independent": lambda: independent_secret_table(args.seed),
             "secret_clean_docs": clean_docs_secret_table,
             "toxicity_template_eval": toxicity_table,
             "toxicity_independent": independent_toxicity_table}
  for name in SECTIONS:
    if name in sections:
      result[name] = runners[name]()
  if path:
    print("wrote", harness.write_result(result, path))


def _detect_secrets_version() -> str:
  from importlib import metadata
  return metadata.version("detect-secrets")


if __name__ == "__main__":
  main()
