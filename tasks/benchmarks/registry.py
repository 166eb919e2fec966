"""The benchmarks of the Gemma paper's Table 6: file layout, prompt format, setting, paper figures.

``BENCHMARKS[name]`` says which files (under a data root, in the public release's layout) hold the
evaluation and few-shot splits, which fields a record must have, the format
(``multiple_choice`` / ``generate_until`` / ``code``), the shots and metric the paper uses and the
paper's Gemma 2B / 7B scores (Gemma Team, "Gemma: Open Models Based on Gemini Research and
Technology", arXiv:2403.08295, Table 6), shown next to ours for reference only.

``register_benchmark_tasks`` registers one seqio Task ``gf_bench_<name>`` per benchmark whose
rows are lm-eval requests already tokenized the way lm-eval's HF backend does it (``encode_pair``),
with the format's metric function (``score_metric_fns`` for log-likelihood tasks,
``predict_metric_fns`` for generation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.benchmarks import code, fewshot, generation, multiple_choice as mc
from tasks.benchmarks.files import BenchmarkDataError, read_records
from tasks.special_tokens import special_tokens

MULTIPLE_CHOICE = "multiple_choice"
GENERATE_UNTIL = "generate_until"
CODE = "code"
TASK_PREFIX = "gf_bench_"
DEFAULT_DATA_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data", "benchmarks")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  format: str
  eval_file: Optional[str]            # Relative to the data root; None: built in (HumanEval).
  fields: Mapping[str, Any]
  num_shots: int = 0
  fewshot_file: Optional[str] = None
  metric: str = "acc"                 # The headline metric of the table.
  paper: tuple[Optional[float], Optional[float]] = (None, None)  # Gemma 2B, 7B (Table 6).
  paper_setting: str = ""
  mc_doc: Optional[Callable] = None   # multiple_choice: record -> MCItem.
  description: Callable = lambda doc: ""
  text: Optional[Callable] = None     # generation / code: record -> query.
  target: Optional[Callable] = None   # generation / code: record -> exemplar target text.
  answers: Optional[Callable] = None  # generation: record -> gold answers.
  extractors: tuple[str, ...] = ("exact_match",)
  normalize: str = "squad"
  until: tuple[str, ...] = ("\n\n",)
  target_delimiter: str = " "
  max_gen_toks: int = 256
  samples: int = 1                    # k of maj@k / n of pass@k.
  program: Optional[Callable] = None  # code: (record, completion) -> program.
  records_key: Optional[str] = None

  @property
  def partial_scoring(self) -> bool:
    return self.mc_doc is mc.winogrande_doc


S, L, I, D = str, list, int, dict  # Field types, short for the table below.

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("mmlu", MULTIPLE_CHOICE, "mmlu/test.jsonl", {"question": S, "subject": S, "choices": L, "answer": I},
              num_shots=5, fewshot_file="mmlu/dev.jsonl", paper=(42.3, 64.3), paper_setting="5-shot, top-1",
              mc_doc=mc.mmlu_doc, description=mc.mmlu_description),
    Benchmark("hellaswag", MULTIPLE_CHOICE, "hellaswag/validation.jsonl",
              {"activity_label": S, "ctx_a": S, "ctx_b": S, "endings": L, "label": (S, I)},
              metric="acc_norm", paper=(71.4, 81.2), paper_setting="0-shot", mc_doc=mc.hellaswag_doc),
    Benchmark("piqa", MULTIPLE_CHOICE, "piqa/validation.jsonl", {"goal": S, "sol1": S, "sol2": S, "label": I},
              metric="acc_norm", paper=(77.3, 81.2), paper_setting="0-shot", mc_doc=mc.piqa_doc),
    Benchmark("siqa", MULTIPLE_CHOICE, "siqa/validation.jsonl",
              {"context": S, "question": S, "answerA": S, "answerB": S, "answerC": S, "label": S},
              paper=(49.7, 51.8), paper_setting="0-shot", mc_doc=mc.siqa_doc),
    Benchmark("boolq", MULTIPLE_CHOICE, "boolq/validation.jsonl", {"question": S, "passage": S, "answer": bool},
              paper=(69.4, 83.2), paper_setting="0-shot", mc_doc=mc.boolq_doc),
    Benchmark("winogrande", MULTIPLE_CHOICE, "winogrande/validation.jsonl",
              {"sentence": S, "option1": S, "option2": S, "answer": S},
              paper=(65.4, 72.3), paper_setting="partial scoring", mc_doc=mc.winogrande_doc),
    Benchmark("commonsense_qa", MULTIPLE_CHOICE, "commonsense_qa/validation.jsonl",
              {"question": S, "choices": D, "answerKey": S}, num_shots=7,
              fewshot_file="commonsense_qa/train.jsonl", paper=(65.3, 71.3), paper_setting="7-shot",
              mc_doc=mc.commonsense_qa_doc),
    Benchmark("openbookqa", MULTIPLE_CHOICE, "openbookqa/test.jsonl", {"question_stem": S, "choices": D, "answerKey": S},
              metric="acc_norm", paper=(47.8, 52.8), mc_doc=mc.openbookqa_doc),
    Benchmark("arc_easy", MULTIPLE_CHOICE, "arc_easy/test.jsonl", {"question": S, "choices": D, "answerKey": S},
              metric="acc_norm", paper=(73.2, 81.5), mc_doc=mc.arc_doc),
    Benchmark("arc_challenge", MULTIPLE_CHOICE, "arc_challenge/test.jsonl", {"question": S, "choices": D, "answerKey": S},
              metric="acc_norm", paper=(42.1, 53.2), mc_doc=mc.arc_doc),
    Benchmark("agieval", MULTIPLE_CHOICE, "agieval_sat_en/test.jsonl",
              {"passage": S, "question": S, "options": L, "label": S}, paper=(24.2, 41.7),
              paper_setting="3-5-shot (here: SAT-en sample, 0-shot log-likelihood)", mc_doc=mc.agieval_doc),
    Benchmark("triviaqa", GENERATE_UNTIL, "triviaqa/validation.jsonl", {"question": S, "answer": D}, num_shots=5,
              fewshot_file="triviaqa/train.jsonl", metric="exact_match", paper=(53.2, 63.4), paper_setting="5-shot",
              text=generation.triviaqa_text, target=generation.triviaqa_target,
              answers=generation.triviaqa_answers, until=("\n", ".", ","), max_gen_toks=32),
    Benchmark("nq_open", GENERATE_UNTIL, "nq_open/validation.jsonl", {"question": S, "answer": L}, num_shots=5,
              fewshot_file="nq_open/train.jsonl", metric="exact_match", paper=(12.5, 23.0), paper_setting="5-shot",
              text=generation.nq_text, target=generation.nq_target, answers=generation.nq_answers,
              until=("\n", ".", ","), max_gen_toks=32),
    Benchmark("gsm8k", GENERATE_UNTIL, "gsm8k/test.jsonl", {"question": S, "answer": S}, num_shots=8,
              fewshot_file="gsm8k/train.jsonl", metric="gsm8k_strict", paper=(17.7, 46.4),
              paper_setting="maj@1, chain-of-thought exemplars", text=generation.gsm8k_text,
              target=generation.gsm8k_target, answers=generation.gsm8k_answers,
              extractors=("gsm8k_strict", "gsm8k_flexible"), normalize="number",
              until=("Question:", "</s>", "<|im_end|>")),
    Benchmark("math", GENERATE_UNTIL, "math/test.jsonl", {"problem": S, "solution": S}, num_shots=4,
              fewshot_file="math/train.jsonl", metric="boxed", paper=(11.8, 24.3), paper_setting="4-shot",
              text=generation.math_text, target=generation.math_target, answers=generation.math_answers,
              extractors=("boxed",), normalize="strip", until=("Problem:",)),
    Benchmark("bbh", GENERATE_UNTIL, "bbh/boolean_expressions.json", {"input": S, "target": S},
              metric="exact_match", paper=(35.2, 55.1), paper_setting="3-shot CoT (here: boolean_expressions, 0-shot)",
              text=generation.bbh_text, target=generation.bbh_target, answers=generation.bbh_answers,
              normalize="strip", until=("</s>", "Q:", "\n\n"), max_gen_toks=16, records_key="examples"),
    Benchmark("humaneval", CODE, None, {"task_id": S, "prompt": S, "test": S, "entry_point": S},
              metric="pass@1", paper=(22.0, 32.3), paper_setting="pass@1", text=code.humaneval_text,
              until=code.HUMANEVAL_UNTIL, max_gen_toks=256, target_delimiter="",
              program=code.humaneval_program),
    Benchmark("mbpp", CODE, "mbpp/test.jsonl", {"text": S, "code": S, "test_list": L}, num_shots=3,
              fewshot_file="mbpp/prompt.jsonl", metric="pass@1", paper=(29.2, 44.4), paper_setting="3-shot",
              text=code.mbpp_text, target=code.mbpp_target, until=code.MBPP_UNTIL, max_gen_toks=256,
              target_delimiter="", program=code.mbpp_program),
]}


def load_records(bench: Benchmark, data_root: str, which: str = "eval",
                 files: Optional[Mapping[str, str]] = None) -> list[dict[str, Any]]:
  """Records of the eval (or ``which="fewshot"``) split; ``files`` overrides paths by
  ``"<name>"`` / ``"<name>.fewshot"``."""
  files = files or {}
  key = bench.name if which == "eval" else f"{bench.name}.fewshot"
  relative = bench.eval_file if which == "eval" else bench.fewshot_file
  if bench.name == "humaneval" and key not in files:
    return code.humaneval_records()
  path = files.get(key) or (os.path.join(data_root, relative) if relative else None)
  if path is None:
    raise BenchmarkDataError(f"{bench.name} has no {which} split file")
  return read_records(path, bench.fields, bench.records_key)


# ---- requests: what the model is asked, per format ----

@dataclasses.dataclass(frozen=True)
class Request:
  """One lm-eval request: log-likelihood of ``continuation`` after ``context``, or generation."""
  example: int
  choice: int
  context: str
  continuation: str = ""


def build_requests(bench: Benchmark, records, fewshot_records, num_shots: int, seed: int,
                   sampler: str = "seeded", chat: bool = False,
                   chat_template: Optional[Callable[[str], str]] = None,
                   fewshot_path: Optional[str] = None) -> list[Request]:
  """The requests of every record, with its few-shot exemplars and (``chat``) the turn template."""
  if num_shots and bench.partial_scoring:
    raise ValueError(f"{bench.name}: partial scoring is evaluated 0-shot")
  if num_shots and bench.fewshot_file is None and fewshot_records is None:
    raise ValueError(f"{bench.name} has no few-shot split; it is evaluated 0-shot")
  where = f"{bench.name}'s few-shot file {fewshot_path or bench.fewshot_file}"
  delimiter = "" if chat else bench.target_delimiter
  out = []
  for index, doc in enumerate(records):
    pool = fewshot_records if fewshot_records is not None else []
    shots = fewshot.choose_exemplars(pool, num_shots, index, seed, sampler, where)
    if bench.format == MULTIPLE_CHOICE:
      item = bench.mc_doc(doc)
      exemplars = [(x.query, x.choice_texts[x.gold]) for x in map(bench.mc_doc, shots)]
      queries = item.query if isinstance(item.query, tuple) else (item.query,) * len(item.choices)
      conts = item.choices * len(queries) if len(item.choices) == 1 else item.choices
      for choice, (query, cont) in enumerate(zip(queries, conts)):
        context = fewshot.build_context(query, exemplars, bench.description(doc), bench.target_delimiter)
        if chat:
          context = chat_template(context)
        out.append(Request(index, choice, context, delimiter + cont))
    else:
      exemplars = [(bench.text(x), bench.target(x)) for x in shots]
      context = fewshot.build_context(bench.text(doc), exemplars, bench.description(doc),
                                      bench.target_delimiter)
      out.append(Request(index, 0, chat_template(context) if chat else context))
  return out


def encode_pair(vocab, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-eval's HF ``_encode_pair`` with BOS: trailing context spaces move to the continuation, the
  continuation's tokens are those of ``encode(context + continuation)`` after the context's."""
  bos = special_tokens(vocab).bos
  if not context:
    return [bos], vocab.tokenizer.encode(continuation)
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  context_ids = [bos] + vocab.tokenizer.encode(context)
  whole = [bos] + vocab.tokenizer.encode(context + continuation)
  return context_ids, whole[len(context_ids):]


# ---- seqio tasks ----

def _postprocess(output, example=None, is_target=False):
  if not is_target:
    return output
  if "gold" in example:  # multiple choice row
    return ((int(example["idx"][0]), int(example["idx"][1])), int(example["gold"]),
            int(example["choice_chars"]))
  return json.loads(example["answer_spec"].decode() if isinstance(example["answer_spec"], bytes)
                    else example["answer_spec"])


def register_benchmark_tasks(vocab, data_root: str = DEFAULT_DATA_ROOT,
                             names: Optional[Sequence[str]] = None,
                             num_shots: Optional[Mapping[str, int]] = None, seed: int = 0,
                             sampler: str = "seeded", files: Optional[Mapping[str, str]] = None,
                             limit: Optional[int] = None, chat: bool = False,
                             chat_template: Optional[Callable[[str], str]] = None) -> dict[str, dict]:
  """Registers ``gf_bench_<name>`` for each benchmark (replacing earlier ones).

  Returns ``{task name: {"benchmark", "records", "requests", "num_shots"}}``; every file is read
  and every prompt built here, so bad input fails before any model work.
  """
  names = list(names or BENCHMARKS)
  unknown = sorted(set(names) - set(BENCHMARKS))
  if unknown:
    raise ValueError(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARKS)}")
  out = {}
  for name in names:
    bench = BENCHMARKS[name]
    shots = (num_shots or {}).get(name, bench.num_shots)
    records = load_records(bench, data_root, "eval", files)[:limit]
    pool = load_records(bench, data_root, "fewshot", files) if shots and bench.fewshot_file else None
    fewshot_path = (files or {}).get(f"{name}.fewshot") or os.path.join(data_root, bench.fewshot_file or "")
    requests = build_requests(bench, records, pool, shots, seed, sampler, chat, chat_template,
                              fewshot_path)
    rows = _rows(bench, records, requests, vocab)
    task_name = TASK_PREFIX + name

    def dataset_fn(split, shuffle_files, seed=None, rows=rows):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=_signature(rows[0]))

    seqio.TaskRegistry.remove(task_name)
    metric = mc.mc_metrics if bench.format == MULTIPLE_CHOICE else generation.generation_metrics
    seqio.TaskRegistry.add(
        task_name, source=seqio.FunctionDataSource(dataset_fn, splits=("test",)),
        preprocessors=[],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
                         "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
        postprocess_fn=_postprocess, metric_fns=[metric] if bench.format != CODE else [])
    out[task_name] = {"benchmark": bench, "records": records, "requests": requests, "num_shots": shots}
  return out


def _rows(bench: Benchmark, records, requests: Sequence[Request], vocab) -> list[dict[str, Any]]:
  rows = []
  bos = special_tokens(vocab).bos
  for r in requests:
    if bench.format == MULTIPLE_CHOICE:
      context_ids, cont_ids = encode_pair(vocab, r.context, r.continuation)
    else:  # A generation prompt is encoded whole, trailing whitespace included (lm-eval's tok_encode).
      context_ids, cont_ids = [bos] + vocab.tokenizer.encode(r.context), []
    row = {"inputs": np.asarray(context_ids, np.int32), "targets": np.asarray(cont_ids, np.int32),
           "idx": np.asarray([r.example, r.choice], np.int32)}
    if bench.format == MULTIPLE_CHOICE:
      item = bench.mc_doc(records[r.example])
      row["gold"] = np.int32(item.gold)
      row["choice_chars"] = np.int32(len(item.choice_texts[r.choice]))
    else:
      doc = records[r.example]
      spec = {"extractors": list(bench.extractors), "normalize": bench.normalize,
              "answers": bench.answers(doc) if bench.answers else []}
      row["answer_spec"] = json.dumps(spec, sort_keys=True)
    rows.append(row)
  return rows


def _signature(row):
  def spec(v):
    if isinstance(v, str):
      return tf.TensorSpec([], tf.string)
    v = np.asarray(v)
    return tf.TensorSpec([None] * v.ndim if v.ndim else [], tf.as_dtype(v.dtype))
  return {k: spec(v) for k, v in row.items()}
