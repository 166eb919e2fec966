"""Benchmark formats: metrics, answer extraction, pass@k, few-shot prompts, bad input, the table."""

import collections
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import seqio

import eval_fixtures as ef
from model import evaluate, gin_utils, hf_convert
from tasks.benchmarks import BENCHMARKS, BenchmarkDataError, code, fewshot, generation
from tasks.benchmarks import multiple_choice as mc
from tasks.benchmarks import registry


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return ef.train_tokenizer(str(path), ef.benchmark_texts())


def test_acc_and_acc_norm_follow_lm_eval_semantics():
  # Example 0: choice 0 ("a", 1 char) has the best total, choice 1 ("bbbbbbbb", 8 chars) the best
  # per character: acc picks 0 (gold 1 -> wrong), acc_norm picks 1 (right).
  # Example 1: gold 0 wins both ways. Rows arrive out of order.
  rows = [(((0, 0), 1, 1), -2.0), (((0, 1), 1, 8), -4.0), (((1, 1), 0, 3), -9.0), (((1, 0), 0, 3), -1.0)]
  per = mc.per_example_scores([t for t, _ in rows], [s for _, s in rows])
  assert per == {"acc": [0.0, 1.0], "acc_norm": [1.0, 1.0]}
  assert mc.mc_metrics([t for t, _ in rows], [s for _, s in rows])["acc"] == 0.5


def test_winogrande_partial_scoring_puts_the_option_in_the_context():
  item = mc.winogrande_doc({"sentence": "Ann gave Bo a book because _ was kind.", "option1": "Ann",
                            "option2": "Bo", "answer": "1"})
  assert item.query == ("Ann gave Bo a book because Ann", "Ann gave Bo a book because Bo")
  assert item.choices == ("was kind.",) and item.gold == 0


def test_gsm8k_strict_and_flexible_extraction():
  text = "She has 3 + 4 = 7 apples.\n#### 7\n\nQuestion: next"
  assert generation.extract_gsm8k_strict(text) == "7"
  assert generation.extract_gsm8k_strict("The answer is 7.") == generation.NO_MATCH
  assert generation.extract_gsm8k_flexible("3 + 4 = 7, so 1,200 dollars.") == "1,200"
  assert generation.extract_gsm8k_flexible("no numbers") == generation.NO_MATCH
  assert generation.clean_number("$1,200.") == "1200"


def test_boxed_answers_with_nested_braces():
  assert generation.extract_boxed(r"so \boxed{2} then \boxed{\frac{3}{4}}.") == r"\frac{3}{4}"
  assert generation.extract_boxed("no box") == generation.NO_MATCH


def test_exact_match_normalisation_and_majority_vote():
  norm = generation.normalize_answer
  assert norm("The  Nile!") == "nile" and norm("An Apple, a day") == "apple day"
  assert generation.exact_match("the nile.", ["River Nile", "Nile"], norm) == 1.0
  assert generation.exact_match("Amazon", ["Nile"], norm) == 0.0
  assert generation.majority(["5", "7", "7", "5"]) == "5"  # Tie: the first seen.
  targets = [{"extractors": ["gsm8k_strict"], "normalize": "number", "answers": ["12"]}]
  # maj@3: two of three samples say 12.
  per = generation.per_example_scores(targets, [["#### 12", "#### 1,2", "#### 9"]])
  assert per == {"gsm8k_strict": [1.0]}


def test_pass_at_k_is_the_unbiased_estimator():
  n, c = [10, 10, 5], [0, 3, 5]
  for k in (1, 2, 5):
    want = [1.0 - math.comb(ni - ci, k) / math.comb(ni, k) for ni, ci in zip(n, c)]
    np.testing.assert_allclose(code.pass_at_k(n, c, k), want, rtol=1e-12)
  with pytest.raises(ValueError, match="at least 5 samples"):
    code.pass_at_k([3], [1], 5)


def test_humaneval_comes_from_the_package_and_its_solutions_pass():
  from model.code_sandbox import SandboxConfig, run_program
  records = code.humaneval_records()
  assert len(records) == 164 and records[0]["task_id"] == "HumanEval/0"
  config = SandboxConfig(timeout_s=10)
  for doc in records[:2]:
    assert run_program(code.humaneval_program(doc, doc["canonical_solution"]), config).passed
    assert not run_program(code.humaneval_program(doc, "    return None\n"), config).passed


def test_few_shot_is_seeded_order_independent_and_checked():
  pool = list(range(20))
  a = fewshot.choose_exemplars(pool, 5, index=3, seed=1)
  assert a == fewshot.choose_exemplars(pool, 5, index=3, seed=1)
  assert a != fewshot.choose_exemplars(pool, 5, index=3, seed=2)
  assert fewshot.choose_exemplars(pool, 2, 0, 0, "first_n") == [0, 1]
  with pytest.raises(BenchmarkDataError, match="5-shot needs 5 exemplars but dev.jsonl has 3"):
    fewshot.choose_exemplars([1, 2, 3], 5, 0, 0, where="dev.jsonl")
  context = fewshot.build_context("Q3", [("Q1", "A1"), ("Q2", "A2")], "Intro\n\n")
  assert context == "Intro\n\nQ1 A1\n\nQ2 A2\n\nQ3"


def test_chat_messages_are_lm_eval_s_single_and_multi_turn_layouts():
  shots = [("Q1", "A1"), ("Q2", "A2")]
  single = fewshot.build_messages("Q3", shots, "Intro\n\n")
  assert single == [{"role": "system", "content": "Intro\n\n"}, {"role": "user", "content": "Q1 A1\n\nQ2 A2\n\nQ3"}]
  multi = fewshot.build_messages("Q3", shots, "Intro\n\n", multiturn=True)
  assert [(m["role"], m["content"]) for m in multi] == [
      ("system", "Intro\n\n"), ("user", "Q1"), ("model", "A1"), ("user", "Q2"), ("model", "A2"), ("user", "Q3")]
  for multiturn in (False, True):  # 0-shot, no description: one user turn either way.
    assert fewshot.build_messages("Q3", [], "", multiturn=multiturn) == [{"role": "user", "content": "Q3"}]
  assert evaluate.chat_prompt(multi) == ("<start_of_turn>user\nIntro\n\nQ1<end_of_turn>\n<start_of_turn>model\n"
                                         "A1<end_of_turn>\n<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n"
                                         "A2<end_of_turn>\n<start_of_turn>user\nQ3<end_of_turn>\n<start_of_turn>model\n")


def test_too_many_shots_names_the_few_shot_file(tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  with pytest.raises(BenchmarkDataError, match=r"9-shot needs 9 exemplars but mmlu's few-shot file .*mmlu/dev.jsonl has 5"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["mmlu"], {"mmlu": 9})


def test_bad_files_name_the_file_line_and_field(tmp_path, tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  missing = tmp_path / "piqa.jsonl"
  missing.write_text(json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
  with pytest.raises(BenchmarkDataError, match=r"piqa.jsonl:1: missing field 'sol2'"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["piqa"], files={"piqa": str(missing)})
  wrong_layout = os.path.join(ef.BENCH_DIR, "hellaswag", "validation.jsonl")  # Not MMLU's layout.
  with pytest.raises(BenchmarkDataError, match=r"validation.jsonl:1: missing field 'question'"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["mmlu"], {"mmlu": 0}, files={"mmlu": wrong_layout})
  bad_type = tmp_path / "boolq.jsonl"
  bad_type.write_text(json.dumps({"question": "q", "passage": "p", "answer": "yes"}) + "\n")
  with pytest.raises(BenchmarkDataError, match=r"boolq.jsonl:1: field 'answer' is str, expected bool"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["boolq"], files={"boolq": str(bad_type)})
  not_json = tmp_path / "arc.jsonl"
  not_json.write_text("{oops\n")
  with pytest.raises(BenchmarkDataError, match=r"arc.jsonl:1: not a JSON line"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["arc_easy"], files={"arc_easy": str(not_json)})
  with pytest.raises(BenchmarkDataError, match="does not exist"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["siqa"], files={"siqa": str(tmp_path / "none.jsonl")})


def test_every_bundled_sample_registers_as_a_seqio_task(tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  default = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR)
  assert sorted(i["benchmark"].name for i in default.values()) == sorted(
      n for n, b in BENCHMARKS.items() if b.default)
  assert "gf_bench_gsm8k_maj_at_k" not in default  # maj@k runs only when named (paper: maj@1).
  info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, list(BENCHMARKS))
  assert sorted(i["benchmark"].name for i in info.values()) == sorted(BENCHMARKS)
  for name, entry in info.items():
    task = seqio.get_mixture_or_task(name)
    rows = list(task.source.get_dataset(split="test", shuffle=False).as_numpy_iterator())
    assert len(rows) == len(entry["requests"])
    if entry["benchmark"].format == registry.MULTIPLE_CHOICE:
      assert task.score_metric_fns and len(rows) > len(entry["records"])
    elif entry["benchmark"].format == registry.GENERATE_UNTIL:
      assert task.predict_metric_fns and len(rows) == len(entry["records"])


def test_encode_pair_moves_trailing_space_and_splits_the_joint_encoding(tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  context, continuation = registry.encode_pair(vocab, "Question: why?\nAnswer: ", "because")
  assert context[0] == vocab.tokenizer.piece_to_id("<bos>")
  whole = vocab.tokenizer.encode("Question: why?\nAnswer: because")
  assert context[1:] + continuation == whole
  assert vocab.decode(continuation) == " because"


def test_chat_variant_wraps_the_prompt_in_gemma_turns(tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["arc_easy"], chat=True,
                                           chat_template=evaluate.chat_prompt)
  request = next(iter(info.values()))["requests"][0]
  assert request.context.startswith("<start_of_turn>user\nQuestion: ")
  assert request.context.endswith("<end_of_turn>\n<start_of_turn>model\n")
  assert not request.continuation.startswith(" ")  # No target delimiter after the turn marker.


def test_fewshot_as_multiturn_puts_each_exemplar_in_its_own_turns(tokenizer):
  """Unset, it follows chat (lm-eval's default); MMLU's exemplars become user / model turn pairs,
  the description opening the first; without the chat template it is refused."""
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  register = lambda **kw: next(iter(registry.register_benchmark_tasks(
      vocab, ef.BENCH_DIR, ["mmlu"], {"mmlu": 2}, sampler="first_n", limit=1, **kw).values()))
  default, multi, single = (register(chat=True, chat_template=evaluate.chat_prompt, fewshot_as_multiturn=m)
                            for m in (None, True, False))
  assert [r.context for r in default["requests"]] == [r.context for r in multi["requests"]]
  context = multi["requests"][0].context
  pool = registry.load_records(BENCHMARKS["mmlu"], ef.BENCH_DIR, "fewshot")
  doc = multi["records"][0]
  expected = "".join(f"<start_of_turn>user\n{p}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n"
                     for p, a in [(mc.mmlu_description(doc) + mc.mmlu_doc(pool[0]).query, "ABCD"[pool[0]["answer"]]),
                                  (mc.mmlu_doc(pool[1]).query, "ABCD"[pool[1]["answer"]])])
  assert context == expected + f"<start_of_turn>user\n{mc.mmlu_doc(doc).query}<end_of_turn>\n<start_of_turn>model\n"
  assert single["requests"][0].context.count("<start_of_turn>") == 2  # One user turn, the model's header.
  with pytest.raises(ValueError, match="needs the chat template"):
    register(fewshot_as_multiturn=True)
  with pytest.raises(ValueError, match="chat=True needs a chat_template"):
    register(chat=True)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
  values = [1.0] * 30 + [0.0] * 70
  low, high = evaluate.bootstrap_ci(values, seed=0)
  assert (low, high) == evaluate.bootstrap_ci(values, seed=0)
  assert low < 0.3 < high and high - low < 0.25


def test_checkpoint_tokenizer_mismatch_is_a_clear_error(tmp_path, tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  from model.config import get_config
  with pytest.raises(evaluate.CheckpointTokenizerMismatch, match=r"tokenizer .*tokenizer.model has \d+ pieces but checkpoint ck has vocab_size 64"):
    evaluate.check_tokenizer(get_config("tiny", vocab_size=64), vocab, tokenizer, "ck")
  config = get_config("tiny", vocab_size=vocab.vocab_size)
  evaluate.check_tokenizer(config, vocab, tokenizer, "ck", {"bos_token_id": 2, "eos_token_id": 1})  # Matches.
  with pytest.raises(evaluate.CheckpointTokenizerMismatch, match=r"ck/config.json field bos_token_id is 5"):
    evaluate.check_tokenizer(config, vocab, tokenizer, "ck", {"bos_token_id": 5, "eos_token_id": 1})


@pytest.fixture(scope="module")
def tiny(tokenizer):
  """The tiny model with random weights, for the tokenizer's vocabulary."""
  return ef.tiny_model(seqio.SentencePieceVocabulary(tokenizer).vocab_size)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, tiny):
  """The tiny model exported as an HF Gemma directory."""
  model, params = tiny
  path = tmp_path_factory.mktemp("ckpt") / "hf"
  hf_convert.export_hf(params, model.config, str(path))
  return path


def test_run_refuses_a_checkpoint_of_another_tokenizer_before_any_model_work(tmp_path, tokenizer, hf_checkpoint):
  import shutil
  other = tmp_path / "other"  # The same weights, but a config.json of other special ids.
  shutil.copytree(hf_checkpoint, other)
  config = json.loads((other / "config.json").read_text())
  config["bos_token_id"] = 5
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(evaluate.CheckpointTokenizerMismatch,
                     match=rf"{other / 'config.json'} field bos_token_id is 5 but tokenizer {tokenizer} has bos = 2"):
    evaluate.run_benchmarks(checkpoint=str(other), tokenizer=tokenizer, output_dir=str(tmp_path / "out"),
                            benchmarks=["piqa"], limit=1)
  assert not (tmp_path / "out").exists()
  with pytest.raises(FileNotFoundError, match=f"tokenizer {tmp_path / 'none.model'} does not exist"):
    evaluate.run_benchmarks(checkpoint=str(other), tokenizer=str(tmp_path / "none.model"),
                            output_dir=str(tmp_path / "out"))


def test_one_command_writes_json_markdown_and_html(tmp_path, tokenizer, hf_checkpoint):
  gin_utils.parse_gin(["gin/runs/benchmarks.gin"], [
      f"CHECKPOINT = '{hf_checkpoint}'", f"TOKENIZER = '{tokenizer}'", f"OUTPUT_DIR = '{tmp_path / 'out'}'",
      "BENCHMARKS = ['piqa', 'bbh', 'gsm8k_maj_at_k']", "EVAL_LIMIT = 3", "run_benchmarks.max_length = 384",
      "SAMPLES = {'gsm8k_maj_at_k': 3}", "TEMPERATURE = {'gsm8k_maj_at_k': 1.0}"])
  try:
    with pytest.MonkeyPatch.context() as mp:  # Short generations: the model is random.
      for name in registry.GROUPS["bbh"].subtasks + ("gsm8k_maj_at_k",):
        mp.setitem(registry.BENCHMARKS, name, dataclasses.replace(BENCHMARKS[name], max_gen_toks=8))
      rows = evaluate.run_benchmarks()
  finally:
    import gin
    gin.clear_config()
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  names = ["piqa", "bbh_boolean_expressions", "bbh_web_of_lies", "gsm8k_maj_at_k", "bbh"]
  assert [r["benchmark"] for r in results["benchmarks"]] == names == [r["benchmark"] for r in rows]
  piqa = results["benchmarks"][0]
  assert piqa["paper_2b"] == BENCHMARKS["piqa"].paper[0] and piqa["num_examples"] == 3
  assert piqa["ci95"][0] <= piqa["score"] <= piqa["ci95"][1]
  bbh = results["benchmarks"][-1]  # The group: the mean of its sub-tasks, the paper's figures.
  assert bbh["score"] == pytest.approx((rows[1]["score"] + rows[2]["score"]) / 2)
  assert bbh["num_examples"] == 6 and bbh["paper_7b"] == registry.GROUPS["bbh"].paper[1]
  assert rows[1]["num_shots"] == 3 and rows[1]["paper_7b"] is None
  table = (tmp_path / "out" / "results.md").read_text()
  assert "| piqa | 0-shot, acc_norm, plain template |" in table and "arXiv:2403.08295" in table
  assert "| bbh | 3-shot, bbh_cot, mean of 2 sub-tasks |" in table
  assert "| gsm8k_maj_at_k | 8-shot, gsm8k_strict, k=3, temperature 1, plain template |" in table
  assert "<td>bbh_web_of_lies</td>" in (tmp_path / "out" / "results.html").read_text()


def test_run_records_the_chat_few_shot_layout(tmp_path, tokenizer, hf_checkpoint):
  """The run says which layout it used (unset with chat: multi-turn, lm-eval's default), and
  refuses multi-turn without the chat template before any model work."""
  run = lambda out, **kw: evaluate.run_benchmarks(checkpoint=str(hf_checkpoint), tokenizer=tokenizer,
                                                  output_dir=str(tmp_path / out), benchmarks=["mmlu"],
                                                  num_shots={"mmlu": 1}, limit=1, **kw)
  for out, multiturn, layout in (("default", None, "exemplars as turns"), ("single", False, "exemplars in one turn")):
    rows = run(out, chat=True, fewshot_as_multiturn=multiturn)
    header = json.loads((tmp_path / out / "results.json").read_text())
    assert header["chat"] and header["fewshot_as_multiturn"] == (multiturn is None)
    assert rows[0]["setting"].endswith("chat template, " + layout)
  with pytest.raises(ValueError, match="needs the chat template"):
    run("plain", fewshot_as_multiturn=True)
  assert not (tmp_path / "plain").exists()


# ---- AGIEval and BBH few-shot, sub-task groups ----


def test_bbh_is_three_shot_chain_of_thought_from_the_cot_prompts_file(tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["bbh"])  # The group: its sub-tasks.
  assert list(info) == [registry.TASK_PREFIX + n for n in registry.GROUPS["bbh"].subtasks]
  assert len(info) >= 2
  for task_name, entry in info.items():
    task = task_name[len(registry.TASK_PREFIX + "bbh_"):]
    prompt_file = os.path.join(ef.BENCH_DIR, "bbh", "cot-prompts", f"{task}.txt")
    with open(prompt_file) as f:
      description = f.read().split("\n-----\n")[-1].split("\n\n")[0]
    assert entry["num_shots"] == 3
    for request, doc in zip(entry["requests"], entry["records"]):
      # lm-eval's bbh cot_fewshot: description, the 3 exemplars in file order, the question.
      assert request.context.startswith(description + "\n\nQ: ")
      assert request.context.count("A: Let's think step by step.\n") == 4
      assert request.context.endswith(f"Q: {doc['input']}\nA: Let's think step by step.\n")
      assert request.context.count("So the answer is ") == 3
    # The same exemplars for every example (first_n), even with the seeded sampler asked for.
    heads = {r.context[:r.context.rindex("\n\nQ: ")] for r in entry["requests"]}
    assert len(heads) == 1


def test_bbh_answer_extraction_matches_lm_eval_regex_filter():
  import yaml
  import lm_eval
  from lm_eval.filters.extraction import RegexFilter
  template = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "bbh", "cot_fewshot",
                          "_cot_fewshot_template_yaml")
  with open(template) as f:
    config = yaml.safe_load(f)
  pattern = config["filter_list"][0]["filter"][0]["regex_pattern"]
  theirs = RegexFilter(regex_pattern=pattern)
  outputs = ["Z = True. So the answer is True.", "so the answer is (B). Also the answer is (C).",
             "We know that Eli lies. So the answer is No", "no conclusion", "the answer is  Yes ."]
  got = [generation.extract_bbh_answer(o) for o in outputs]
  assert got == [r[0] for r in theirs.apply([[o] for o in outputs], [{}] * len(outputs))]
  assert got[:3] == ["True", "(B). Also the answer is (C)", "N"] and got[3] == generation.NO_MATCH
  target = {"extractors": ["bbh_cot"], "normalize": "strip", "answers": ["No"]}
  assert generation.per_example_scores([target] * 2, [["... So the answer is No."], ["the answer is Yes."]]) == {
      "bbh_cot": [1.0, 0.0]}


def test_agieval_is_few_shot_from_the_few_shot_prompts_csv(tokenizer):
  import ast
  import csv
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["agieval"])
  assert len(info) >= 2
  with open(os.path.join(ef.BENCH_DIR, "agieval", "few_shot_prompts.csv"), newline="") as f:
    rows = list(csv.reader(f))
  shots_seen = set()
  for entry in info.values():
    bench = entry["benchmark"]
    column = rows[0].index(bench.fewshot_column)
    demos = [ast.literal_eval(r[column]) for r in rows[1::2] if r[column]]  # Example rows, not explanations.
    assert entry["num_shots"] == len(demos)  # Every demonstration of the task (AGIEval's 3-5-shot).
    shots_seen.add(len(demos))
    request = entry["requests"][0]
    positions = [request.context.index(d["passage"]) for d in demos]
    assert positions == sorted(positions)  # In file order, before the question.
    for d in demos:  # Each exemplar is answered with its gold option's text.
      gold = d["options"]["ABCDE".index(d["label"])][3:]
      assert f"Question: {d['question']}\nAnswer: {gold}\n\n" in request.context
    assert request.context.endswith(entry["records"][0]["question"] + "\nAnswer:")
  assert shots_seen == {3, 5}


def test_group_score_is_the_mean_of_its_sub_tasks():
  group = registry.GROUPS["agieval"]
  per = {group.subtasks[0]: [1.0, 1.0, 0.0, 1.0], group.subtasks[1]: [0.0, 0.0]}
  rows = [{"benchmark": name, "score": float(np.mean(v)), "num_examples": len(v), "num_shots": s,
           "seconds": 1.0} for (name, v), s in zip(per.items(), (3, 5))]
  row, = evaluate.group_rows(rows, per)
  assert row["benchmark"] == "agieval" and row["score"] == pytest.approx((0.75 + 0.0) / 2)
  assert row["num_examples"] == 6 and row["setting"].startswith("3-5-shot")
  assert row["ci95"][0] <= row["score"] <= row["ci95"][1]
  assert (row["paper_2b"], row["paper_7b"]) == group.paper
  assert evaluate.group_rows(rows[:1], per) == []  # Not all sub-tasks ran: no group figure.


def test_bad_few_shot_prompt_files_name_the_file_and_field(tmp_path, tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  no_cot = tmp_path / "web_of_lies.txt"
  no_cot.write_text("A task.\n\nQ: Does Ann lie?\nA: No.\n")
  with pytest.raises(BenchmarkDataError, match=r"web_of_lies.txt: exemplar 1 is not 'Q: <input>"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["bbh_web_of_lies"],
                                      files={"bbh_web_of_lies.fewshot": str(no_cot)})
  csv_path = os.path.join(ef.BENCH_DIR, "agieval", "few_shot_prompts.csv")
  with pytest.raises(BenchmarkDataError, match=r"5-shot needs 5 exemplars but agieval_sat_en's few-shot file "
                                               r".*few_shot_prompts.csv has 3"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["agieval_sat_en"], {"agieval_sat_en": 5})
  wrong = tmp_path / "prompts.csv"
  wrong.write_text("lsat-ar\n\"{'passage': 'p'}\"\n")
  with pytest.raises(BenchmarkDataError, match=r"prompts.csv: no column 'sat-en'"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["agieval_sat_en"],
                                      files={"agieval_sat_en.fewshot": str(wrong)})
  wrong.write_text("sat-en\n\"{'passage': 'p', 'question': 'q', 'options': ['(A)x']}\"\n")
  with pytest.raises(BenchmarkDataError, match=r"prompts.csv row 1 column 'sat-en': missing field 'label'"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["agieval_sat_en"], {"agieval_sat_en": 1},
                                      files={"agieval_sat_en.fewshot": str(wrong)})
  flat = tmp_path / "web_of_lies.json"  # BBH's bbh/<task>.json is {"examples": [...]}, not a list.
  flat.write_text(json.dumps([{"input": "Does Ann lie?", "target": "No"}]))
  with pytest.raises(BenchmarkDataError, match=r"web_of_lies.json: expected an object with a 'examples' list"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["bbh_web_of_lies"], files={"bbh_web_of_lies": str(flat)})
  with pytest.raises(ValueError, match=r"unknown benchmark 'bbh_nope'.*groups: \['agieval', 'bbh'\]"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, ["bbh_nope"])


# ---- maj@k ----


def test_maj_at_k_samples_k_distinct_completions_and_votes(tokenizer, tiny):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  model, params = tiny
  lm = evaluate.LanguageModel(model, params, vocab, batch_size=2)
  name, k = "gsm8k_maj_at_k", 5
  with pytest.raises(ValueError, match="temperature above 0"):
    registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, [name], temperature={name: 0.0})

  def run(seed, samples):
    with pytest.MonkeyPatch.context() as mp:  # A random model: short generations are enough.
      mp.setitem(registry.BENCHMARKS, name, dataclasses.replace(BENCHMARKS[name], max_gen_toks=12))
      info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, [name], {name: 1}, limit=2,
                                               samples={name: samples}, temperature={name: 1.5})
      (task_name, entry), = info.items()
      return evaluate.evaluate_task(lm, task_name, entry, seed=seed, log=lambda *_: None)

  result = run(seed=0, samples=k)
  for outputs in result["outputs"]:
    assert len(outputs) == k and len(set(outputs)) > 1  # k samples, not one greedy output k times.
  for name_ in BENCHMARKS[name].extractors:  # The scored answer is the vote over the k answers.
    for outputs, voted in zip(result["outputs"], result["extracted"][name_]):
      answers = [generation.EXTRACTORS[name_](o) for o in outputs]
      counts = collections.Counter(answers)
      assert counts[voted] == max(counts.values()) and voted == next(a for a in answers if counts[a] == counts[voted])
  assert run(seed=0, samples=k)["outputs"] == result["outputs"]  # Seeded: the same samples again.
  assert run(seed=1, samples=k)["outputs"] != result["outputs"]
