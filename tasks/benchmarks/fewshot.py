"""Few-shot prompts in lm-evaluation-harness's layout, exemplars drawn from a dev/train split.

``description + exemplar_1 + "\\n\\n" + ... + exemplar_n + "\\n\\n" + query``, each exemplar being
``doc_to_text(ex) + target_delimiter + target_text(ex)``. Exemplars are chosen per evaluation
example by a ``random.Random`` seeded with ``(seed, example index)``, so the prompt of an example
does not depend on which other examples are evaluated or in what order (``sampler="first_n"``
takes the first n, as lm-eval's ``first_n`` sampler does).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from tasks.benchmarks.files import BenchmarkDataError

FEWSHOT_DELIMITER = "\n\n"
SAMPLERS = ("seeded", "first_n")


def choose_exemplars(pool: Sequence[Any], num_shots: int, index: int, seed: int,
                     sampler: str = "seeded", where: str = "the few-shot split") -> list[Any]:
  if num_shots == 0:
    return []
  if num_shots > len(pool):
    raise BenchmarkDataError(f"{num_shots}-shot needs {num_shots} exemplars but {where} has "
                             f"{len(pool)} records")
  if sampler == "first_n":
    return list(pool[:num_shots])
  if sampler != "seeded":
    raise ValueError(f"unknown few-shot sampler {sampler!r}; use one of {SAMPLERS}")
  return random.Random(f"{seed}/{index}").sample(list(pool), num_shots)


def build_context(query: str, exemplars: Sequence[tuple[str, str]], description: str = "",
                  target_delimiter: str = " ") -> str:
  """lm-eval's context: description, then exemplars (text, target), then the query."""
  shots = "".join(text + target_delimiter + target + FEWSHOT_DELIMITER for text, target in exemplars)
  return description + shots + query
