"""Real English prose for the labelled sets: sentences from the standard library's docstrings.

These are the kind of technical text the pipeline sees (numbers, versions, code words), so they
make honest backgrounds for planted PII and honest "clean" examples for the toxicity classifier.
"""

from __future__ import annotations

import importlib
import inspect
import re

# Two disjoint groups, so that training and evaluation never share a background sentence.
TRAIN_MODULES = (
    "argparse", "collections", "json", "logging", "os", "pathlib", "re", "string", "textwrap",
    "typing", "unittest", "urllib.parse", "shutil", "subprocess", "functools",
)
EVAL_MODULES = (
    "asyncio", "csv", "datetime", "decimal", "email", "http.client", "inspect", "itertools",
    "smtplib", "socket", "tarfile", "threading", "zipfile", "heapq", "difflib",
)

_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstrings(module_names: tuple[str, ...]) -> list[str]:
  """Docstrings of the modules and their public members, in a fixed order."""
  texts = []
  for name in module_names:
    module = importlib.import_module(name)
    texts.append(inspect.getdoc(module) or "")
    for attr in sorted(dir(module)):
      if attr.startswith("_"):
        continue
      texts.append(inspect.getdoc(getattr(module, attr, None)) or "")
  return texts


def sentences(module_names: tuple[str, ...], min_chars: int = 40, max_chars: int = 240) -> list[str]:
  """Prose sentences (no code lines, no emails), deduplicated, in first-seen order."""
  seen: dict[str, None] = {}
  for text in docstrings(module_names):
    for paragraph in text.split("\n\n"):
      if paragraph.lstrip().startswith((">>>", "...")) or "    " in paragraph:
        continue  # Doctests and code blocks are not prose.
      for sentence in _SENTENCE_END_RE.split(" ".join(paragraph.split())):
        if min_chars <= len(sentence) <= max_chars and "@" not in sentence and " " in sentence:
          seen.setdefault(sentence, None)
  return list(seen)
