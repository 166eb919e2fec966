"""Few-shot prompts in lm-evaluation-harness's layout, exemplars drawn from a dev/train split.

``description + exemplar_1 + "\\n\\n" + ... + exemplar_n + "\\n\\n" + query``, each exemplar being
``doc_to_text(ex) + target_delimiter + target_text(ex)``. Exemplars are chosen per evaluation
example by a ``random.Random`` seeded with ``(seed, example index)``, so the prompt of an example
does not depend on which other examples are evaluated or in what order (``sampler="first_n"``
takes the first n, as lm-eval's ``first_n`` sampler does).

With a chat template the prompt is a list of messages, as lm-eval's ``fewshot_context`` builds it:
the description as a system message, then either the exemplars and the query in one user turn
(``fewshot_as_multiturn=False``) or each exemplar's text a user turn and its target a model turn,
the query the last user turn (``fewshot_as_multiturn=True``). In turns the delimiters go: the chat
template separates the turns (and trims each one).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from tasks import chat_template as chat_lib
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


def build_messages(query: str, exemplars: Sequence[tuple[str, str]], description: str = "",
                   target_delimiter: str = " ", multiturn: bool = False) -> list[dict[str, str]]:
  """lm-eval's chat messages (role / content): with ``multiturn`` one user and one model turn per
  exemplar, else one user turn laid out as ``build_context``; an empty description adds none."""
  system = [{"role": chat_lib.SYSTEM, "content": description}] if description else []
  if not multiturn:
    return system + [{"role": chat_lib.USER, "content": build_context(query, exemplars, "", target_delimiter)}]
  shots = [turn for text, target in exemplars
           for turn in ({"role": chat_lib.USER, "content": text}, {"role": chat_lib.MODEL, "content": target})]
  return system + shots + [{"role": chat_lib.USER, "content": query}]
