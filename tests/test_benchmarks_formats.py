"""Benchmark formats: metrics, answer extraction, pass@k, few-shot prompts, bad input, the table."""

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
  info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR)
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
                                           chat_template=evaluate.user_turn_prompt)
  request = next(iter(info.values()))["requests"][0]
  assert request.context.startswith("<start_of_turn>user\nQuestion: ")
  assert request.context.endswith("<end_of_turn>\n<start_of_turn>model\n")
  assert not request.continuation.startswith(" ")  # No target delimiter after the turn marker.


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


def test_one_command_writes_json_markdown_and_html(tmp_path, tokenizer):
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  model, params = ef.tiny_model(vocab.vocab_size)
  hf_convert.export_hf(params, model.config, str(tmp_path / "hf"))
  gin_utils.parse_gin(["gin/runs/benchmarks.gin"], [
      f"CHECKPOINT = '{tmp_path / 'hf'}'", f"TOKENIZER = '{tokenizer}'", f"OUTPUT_DIR = '{tmp_path / 'out'}'",
      "BENCHMARKS = ['piqa', 'bbh']", "EVAL_LIMIT = 3"])
  try:
    rows = evaluate.run_benchmarks()
  finally:
    import gin
    gin.clear_config()
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert [r["benchmark"] for r in results["benchmarks"]] == ["piqa", "bbh"] == [r["benchmark"] for r in rows]
  piqa = results["benchmarks"][0]
  assert piqa["paper_2b"] == BENCHMARKS["piqa"].paper[0] and piqa["num_examples"] == 3
  assert piqa["ci95"][0] <= piqa["score"] <= piqa["ci95"][1]
  table = (tmp_path / "out" / "results.md").read_text()
  assert "| piqa | 0-shot, acc_norm, plain template |" in table and "arXiv:2403.08295" in table
  assert "<td>bbh</td>" in (tmp_path / "out" / "results.html").read_text()
