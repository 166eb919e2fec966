"""The benchmarks of the Gemma paper's Table 6: file layout, prompt format, setting, paper figures.

``BENCHMARKS[name]`` says which files (under a data root, in the public release's layout) hold the
evaluation and few-shot splits, which fields a record must have, the format
(``multiple_choice`` / ``generate_until`` / ``code``), the shots and metric the paper uses and the
paper's Gemma 2B / 7B scores (Gemma Team, "Gemma: Open Models Based on Gemini Research and
Technology", arXiv:2403.08295, Table 6), shown next to ours for reference only.

AGIEval and BBH are groups (``GROUPS``): one benchmark per sub-task, few-shot from the release's
prompt files (AGIEval's ``few_shot_prompts.csv``, BBH's ``cot-prompts/<task>.txt``), the group's
score the mean over its sub-tasks. ``gsm8k_maj_at_k`` / ``math_maj_at_k`` sample k answers at a
temperature and score their majority (run only when named: the paper's default is maj@1).

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
from tasks.benchmarks import files as files_lib
from tasks.benchmarks.files import BenchmarkDataError, read_records
from tasks.special_tokens import special_tokens

MULTIPLE_CHOICE = "multiple_choice"
GENERATE_UNTIL = "generate_until"
CODE = "code"
TASK_PREFIX = "gf_bench_"
RECORDS, BBH_COT_PROMPTS, AGIEVAL_CSV = "records", "bbh_cot_prompts", "agieval_csv"
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
  temperature: float = 0.0            # Sampling temperature when samples > 1.
  program: Optional[Callable] = None  # code: (record, completion) -> program.
  records_key: Optional[str] = None
  fewshot_format: str = RECORDS       # RECORDS, BBH_COT_PROMPTS or AGIEVAL_CSV.
  fewshot_column: Optional[str] = None  # AGIEVAL_CSV: the task's column.
  fewshot_sampler: Optional[str] = None  # Fixed sampler (the release's exemplars, in order).
  group: Optional[str] = None         # The group whose score averages this sub-task's.
  default: bool = True                # Run when no benchmarks are named.

  @property
  def partial_scoring(self) -> bool:
    return self.mc_doc is mc.winogrande_doc


@dataclasses.dataclass(frozen=True)
class Group:
  """Benchmarks reported as one number: the unweighted mean of the sub-tasks' scores."""
  name: str
  subtasks: tuple[str, ...]
  metric: str
  paper: tuple[Optional[float], Optional[float]]
  paper_setting: str


# ---- BBH chain of thought, as lm-eval's bbh/cot_fewshot ----

BBH_UNTIL = ("</s>", "Q", "\n\n")


def bbh_cot_text(doc) -> str:
  return f"Q: {doc['input']}{files_lib.BBH_COT_ANSWER}"




def _bbh(task: str) -> "Benchmark":
  return Benchmark(f"bbh_{task}", GENERATE_UNTIL, f"bbh/{task}.json", {"input": S, "target": S},
                   num_shots=3, fewshot_file=f"bbh/cot-prompts/{task}.txt",
                   fewshot_format=BBH_COT_PROMPTS, fewshot_sampler="first_n", metric="bbh_cot",
                   paper_setting="3-shot CoT", text=bbh_cot_text, target=generation.bbh_target,
                   answers=generation.bbh_answers, extractors=("bbh_cot",), normalize="strip",
                   until=BBH_UNTIL, target_delimiter="", max_gen_toks=256, records_key="examples",
                   group="bbh")


def _agieval(task: str, num_shots: int) -> "Benchmark":
  return Benchmark(f"agieval_{task.replace('-', '_')}", MULTIPLE_CHOICE, f"agieval/v1/{task}.jsonl",
                   AGIEVAL_FIELDS, num_shots=num_shots, fewshot_file="agieval/few_shot_prompts.csv",
                   fewshot_format=AGIEVAL_CSV, fewshot_column=task, fewshot_sampler="first_n",
                   paper_setting=f"{num_shots}-shot", mc_doc=mc.agieval_doc, group="agieval")


S, L, I, D = str, list, int, dict  # Field types, short for the table below.
AGIEVAL_FIELDS = {"passage": S, "question": S, "options": L, "label": S}

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
    # AGIEval: every demonstration of the task's column of few_shot_prompts.csv (3 to 5).
    _agieval("sat-en", 3),
    _agieval("logiqa-en", 5),
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
    _bbh("boolean_expressions"),
    _bbh("web_of_lies"),
    Benchmark("humaneval", CODE, None, {"task_id": S, "prompt": S, "test": S, "entry_point": S},
              metric="pass@1", paper=(22.0, 32.3), paper_setting="pass@1", text=code.humaneval_text,
              until=code.HUMANEVAL_UNTIL, max_gen_toks=256, target_delimiter="",
              program=code.humaneval_program),
    Benchmark("mbpp", CODE, "mbpp/test.jsonl", {"text": S, "code": S, "test_list": L}, num_shots=3,
              fewshot_file="mbpp/prompt.jsonl", metric="pass@1", paper=(29.2, 44.4), paper_setting="3-shot",
              text=code.mbpp_text, target=code.mbpp_target, until=code.MBPP_UNTIL, max_gen_toks=256,
              target_delimiter="", program=code.mbpp_program),
]}
# maj@k (self-consistency): k samples at lm-eval's gsm8k_cot_self_consistency temperature, the
# most frequent extracted answer scored. Not in Table 6 (maj@1 there), so only run when named.
for _name in ("gsm8k", "math"):
  BENCHMARKS[f"{_name}_maj_at_k"] = dataclasses.replace(
      BENCHMARKS[_name], name=f"{_name}_maj_at_k", samples=8, temperature=0.2, default=False,
      paper=(None, None), paper_setting="maj@k, not in the paper's Table 6")

GROUPS: dict[str, Group] = {g.name: g for g in [
    Group("agieval", tuple(n for n, b in BENCHMARKS.items() if b.group == "agieval"), "acc",
          (24.2, 41.7), "3-5-shot, mean of sub-tasks"),
    Group("bbh", tuple(n for n, b in BENCHMARKS.items() if b.group == "bbh"), "bbh_cot",
          (35.2, 55.1), "3-shot CoT, mean of sub-tasks"),
]}


def expand_names(names: Optional[Sequence[str]]) -> list[str]:
  """Benchmark names with each group replaced by its sub-tasks; None: every default benchmark."""
  if names is None:
    return [n for n, b in BENCHMARKS.items() if b.default]
  out = []
  for name in names:
    if name in GROUPS:
      out.extend(GROUPS[name].subtasks)
    elif name in BENCHMARKS:
      out.append(name)
    else:
      raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}, "
                       f"groups: {sorted(GROUPS)}")
  return list(dict.fromkeys(out))


def _override(mapping: Optional[Mapping[str, Any]], bench: Benchmark, default):
  """A per-benchmark setting: by the benchmark's name, else its group's, else ``default``."""
  mapping = mapping or {}
  return mapping.get(bench.name, mapping.get(bench.group, default) if bench.group else default)


def split_path(bench: Benchmark, data_root: str, which: str = "eval",
               files: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """The file of the eval (or ``which="fewshot"``) split; ``files`` overrides paths by
  ``"<name>"`` / ``"<name>.fewshot"``."""
  files = files or {}
  relative = bench.eval_file if which == "eval" else bench.fewshot_file
  key = bench.name if which == "eval" else f"{bench.name}.fewshot"
  return files.get(key) or (os.path.join(data_root, relative) if relative else None)


def load_records(bench: Benchmark, data_root: str, which: str = "eval",
                 files: Optional[Mapping[str, str]] = None) -> list[dict[str, Any]]:
  """Records of the eval (or ``which="fewshot"``) split, see ``split_path``."""
  if which != "eval":
    return load_fewshot(bench, data_root, files)[1]
  if bench.name == "humaneval" and "humaneval" not in (files or {}):
    return code.humaneval_records()
  path = split_path(bench, data_root, which, files)
  if path is None:
    raise BenchmarkDataError(f"{bench.name} has no {which} split file")
  return read_records(path, bench.fields, bench.records_key)


def load_fewshot(bench: Benchmark, data_root: str, files: Optional[Mapping[str, str]] = None
                 ) -> tuple[Optional[str], list[dict[str, Any]]]:
  """(description from the prompt file or None, exemplar records) of the few-shot split."""
  path = split_path(bench, data_root, "fewshot", files)
  if path is None:
    raise BenchmarkDataError(f"{bench.name} has no fewshot split file")
  if bench.fewshot_format == BBH_COT_PROMPTS:
    description, records = files_lib.read_bbh_cot_prompts(path)
    return description + fewshot.FEWSHOT_DELIMITER, records
  if bench.fewshot_format == AGIEVAL_CSV:
    return None, files_lib.read_agieval_fewshot(path, bench.fewshot_column, bench.fields)
  return None, read_records(path, bench.fields, bench.records_key)


# ---- requests: what the model is asked, per format ----

@dataclasses.dataclass(frozen=True)
class Request:
  """One lm-eval request: log-likelihood of ``continuation`` after ``context``, or generation."""
  example: int
  choice: int
  context: str
  continuation: str = ""


def resolve_multiturn(chat: bool, fewshot_as_multiturn: Optional[bool]) -> bool:
  """lm-eval's rule: unset, few-shot is multi-turn exactly when a chat template is applied; set,
  it needs one."""
  if fewshot_as_multiturn is None:
    return chat
  if fewshot_as_multiturn and not chat:
    raise ValueError("fewshot_as_multiturn=True needs the chat template (chat=True)")
  return fewshot_as_multiturn


def _prompt(bench: Benchmark, query: str, exemplars, description: str, chat: bool,
            chat_template: Optional[Callable[[list], str]], multiturn: bool) -> str:
  """The context: plain few-shot text, or (``chat``) lm-eval's chat messages rendered."""
  if not chat:
    return fewshot.build_context(query, exemplars, description, bench.target_delimiter)
  return chat_template(fewshot.build_messages(query, exemplars, description, bench.target_delimiter, multiturn))


def build_requests(bench: Benchmark, records, fewshot_records, num_shots: int, seed: int,
                   sampler: str = "seeded", chat: bool = False,
                   chat_template: Optional[Callable[[list], str]] = None,
                   fewshot_path: Optional[str] = None,
                   description: Optional[str] = None,
                   fewshot_as_multiturn: Optional[bool] = None) -> list[Request]:
  """The requests of every record, with its few-shot exemplars and (``chat``) ``chat_template``,
  which renders a list of role / content messages (``fewshot.build_messages``; exemplars as
  turns per ``resolve_multiturn``); ``description`` (from a prompt file) replaces the
  benchmark's own."""
  multiturn = resolve_multiturn(chat, fewshot_as_multiturn)
  if chat and chat_template is None:
    raise ValueError(f"{bench.name}: chat=True needs a chat_template to render the messages")
  if num_shots and bench.partial_scoring:
    raise ValueError(f"{bench.name}: partial scoring is evaluated 0-shot")
  if num_shots and bench.fewshot_file is None and fewshot_records is None:
    raise ValueError(f"{bench.name} has no few-shot split; it is evaluated 0-shot")
  where = f"{bench.name}'s few-shot file {fewshot_path or bench.fewshot_file}"
  delimiter = "" if chat else bench.target_delimiter
  sampler = bench.fewshot_sampler or sampler
  describe = bench.description if description is None or not num_shots else lambda doc: description
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
        context = _prompt(bench, query, exemplars, describe(doc), chat, chat_template, multiturn)
        out.append(Request(index, choice, context, delimiter + cont))
    else:
      exemplars = [(bench.text(x), bench.target(x)) for x in shots]
      context = _prompt(bench, bench.text(doc), exemplars, describe(doc), chat, chat_template, multiturn)
      out.append(Request(index, 0, context))
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
                             chat_template: Optional[Callable[[list], str]] = None,
                             samples: Optional[Mapping[str, int]] = None,
                             temperature: Optional[Mapping[str, float]] = None,
                             fewshot_as_multiturn: Optional[bool] = None) -> dict[str, dict]:
  """Registers ``gf_bench_<name>`` for each benchmark (a group: each of its sub-tasks), replacing
  earlier ones. ``num_shots`` / ``samples`` / ``temperature`` override by benchmark or group name;
  ``chat`` / ``chat_template`` / ``fewshot_as_multiturn`` as in ``build_requests``.

  Returns ``{task name: {"benchmark", "records", "requests", "num_shots"}}``; every file is read
  and every prompt built here, so bad input fails before any model work.
  """
  out = {}
  for name in expand_names(names):
    bench = BENCHMARKS[name]
    k, t = _override(samples, bench, bench.samples), _override(temperature, bench, bench.temperature)
    if k < 1 or (k > 1 and t <= 0):
      raise ValueError(f"{name}: {k} samples at temperature {t}: maj@k / pass@k needs k >= 1 and, "
                       "for k > 1, a temperature above 0 (else the k samples are one greedy output)")
    bench = dataclasses.replace(bench, samples=k, temperature=t)
    shots = _override(num_shots, bench, bench.num_shots)
    records = load_records(bench, data_root, "eval", files)[:limit]
    description, pool = (load_fewshot(bench, data_root, files) if shots and bench.fewshot_file
                         else (None, None))
    fewshot_path = split_path(bench, data_root, "fewshot", files)
    requests = build_requests(bench, records, pool, shots, seed, sampler, chat, chat_template,
                              fewshot_path, description, fewshot_as_multiturn)
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
