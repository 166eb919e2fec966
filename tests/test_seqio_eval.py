"""seqio evaluation: the next-line multiple-choice task, rank-classification accuracy, eval JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from model import data, eval as eval_lib, gin_utils, train
from model.checkpoints import CheckpointConfig
from model.partitioning import Partitioner
from tasks import eval_tasks
from test_tasks import data_dir  # noqa: F401  (module fixture: a registered data dir)

LENGTH = 64


def test_rank_classification_accuracy_on_known_scores():
  targets, scores = [], []
  # Example 0: the right choice (1) scores highest. Example 1: a wrong one does. Example 2: a
  # tie between the right choice (0) and a wrong one goes to the first.
  for example, right, choice_scores in [(0, 1, [-3.0, -1.0, -2.0]), (1, 2, [-1.0, -5.0, -2.0]),
                                        (2, 0, [-1.0, -1.0, -4.0])]:
    for choice, score in enumerate(choice_scores):
      targets.append(((example, choice), choice == right))
      scores.append(score)
  # Scores arrive in dataset order, which need not group the choices of an example together.
  order = np.random.default_rng(0).permutation(len(targets))
  metrics = eval_tasks.rank_classification_accuracy([targets[i] for i in order],
                                                    [scores[i] for i in order])
  assert metrics == {"accuracy": pytest.approx(2 / 3), "num_examples": 3.0,
                     "chance_accuracy": pytest.approx(1 / 3)}
  with pytest.raises(ValueError, match="2 correct choices"):
    eval_tasks.rank_classification_accuracy([((0, 0), True), ((0, 1), True)], [0.0, 1.0])


def test_next_line_examples_are_deterministic_and_answerable():
  docs = [(f"d{i}", "\n".join(f"document {i} line {j} with enough characters" + "x" * (i + j)
                              for j in range(4))) for i in range(5)]
  examples = eval_tasks.next_line_examples(docs, num_choices=3, max_examples=8)
  assert examples == eval_tasks.next_line_examples(docs, num_choices=3, max_examples=8)
  assert len(examples) == 8 and [e["index"] for e in examples] == list(range(8))
  for ex in examples:
    doc = ex["context"].split(" ")[1]
    line = int(ex["context"].split(" ")[3])
    answer = ex["choices"][ex["label"]]
    assert answer.startswith(f"document {doc} line {line + 1} ")
    others = [c for i, c in enumerate(ex["choices"]) if i != ex["label"]]
    assert len(others) == 2 and all(not c.startswith(f"document {doc} ") for c in others)
  assert len({e["label"] for e in examples}) > 1  # The answer is not always in one position.
  assert eval_tasks.next_line_examples(docs[:1]) == []  # No other document gives distractors.


class LengthScorer:
  """A 'model' whose score is the number of target tokens: it picks the longest choice."""

  def score_batch(self, params, batch):
    del params
    return jnp.sum(batch["decoder_loss_weights"], axis=-1).astype(jnp.float32)


def test_seqio_evaluator_with_a_hand_built_scorer(data_dir):  # noqa: F811
  path, _ = data_dir
  names = eval_tasks.register_eval_tasks(str(path), num_choices=4, max_examples=20)
  assert names == [eval_tasks.NEXT_LINE_TASK]
  examples = eval_tasks.next_line_examples(eval_tasks.validation_documents(str(path)), 4, 20)
  vocab = tasks.get_vocabulary(str(path))
  length = 64
  expected = []
  for ex in examples:  # The longest choice (in tokens, as truncated) wins; ties: the first.
    lengths = [min(len(vocab.encode(c)), length) for c in ex["choices"]]
    expected.append(int(np.argmax(lengths)) == ex["label"])
  assert 0 < sum(expected) < len(expected)  # Neither all right nor all wrong: a real check.
  evaluation = eval_lib.SeqioEvaluation(LengthScorer(), Partitioner(), names, batch_size=8,
                                        sequence_length={"inputs": length, "targets": length})
  metrics = evaluation.run({"unused": jnp.zeros(())})
  assert metrics[eval_tasks.NEXT_LINE_TASK] == {
      "accuracy": pytest.approx(np.mean(expected)), "chance_accuracy": 0.25,
      "num_examples": float(len(examples))}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):  # noqa: F811
  """Two steps of the tiny model on the data dir, with eval (loss + seqio) every step."""
  path, _ = data_dir
  model_dir = tmp_path_factory.mktemp("seqio_eval")
  model = gin_utils.build_model("tiny", data_dir=str(path), dtype="float32")
  cfg = data.DatasetConfig("gf_mixture", {"targets": LENGTH}, "train", 4, use_cached=True)
  val = data.DatasetConfig("gf_mixture", {"targets": LENGTH}, "validation", 4, shuffle=False,
                           use_cached=True)
  summary = train.train(model=model, train_dataset_cfg=cfg, eval_dataset_cfg=val,
                        partitioner=Partitioner(), model_dir=str(model_dir), total_steps=2,
                        eval_period=1, eval_batches=1, data_dir=str(path),
                        checkpoint_cfg=CheckpointConfig(save_period=2, async_save=False))
  return model_dir, model, val, summary


def test_training_runs_seqio_eval_every_period(trained):
  model_dir, _, _, summary = trained
  with open(model_dir / "metrics.jsonl") as f:
    evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
  key = f"{eval_tasks.NEXT_LINE_TASK}/accuracy"
  steps = sorted(r["step"] for r in evals if key in r)
  assert steps == [1, 2]
  assert summary["seqio_eval"][eval_tasks.NEXT_LINE_TASK]["accuracy"] == \
      [r for r in evals if key in r and r["step"] == 2][0][key]
  assert list((model_dir / "eval").glob("events.out.tfevents.*"))  # TensorBoard got them too.


def _accuracy_by_hand(model, model_dir, data_dir, examples):  # noqa: F811
  """Rank-classification accuracy computed without seqio: each choice scored as the sum of
  log-softmax of its tokens after BOS + the last context tokens + newline, from the logits."""
  from model import checkpoints

  vocab = tasks.get_vocabulary(data_dir)
  bos = data.targets_bos_id(eval_tasks.NEXT_LINE_TASK)
  half = LENGTH // 2  # eval_lib.seqio_sequence_length: inputs and targets share the length.
  params = checkpoints.load_params(checkpoints.resolve_checkpoint_path(None, str(model_dir)),
                                   model.abstract_params())
  rows, spans = [], []  # One padded row per (example, choice); spans: where its target is.
  for ex in examples:
    context = vocab.encode(ex["context"] + "\n")[-half:]
    for choice in ex["choices"]:
      target = vocab.encode(choice)[:half]
      rows.append(np.pad([bos] + context + target, (0, 2 * half - len(context) - len(target))))
      spans.append(range(len(context), len(context) + len(target)))  # Logit i predicts token i + 1.
  tokens = np.array(rows, np.int32)
  logits_fn = jax.jit(model.logits)
  scores = []
  for start in range(0, len(rows), 64):  # Fixed-shape chunks: one compilation.
    chunk = np.zeros((64, tokens.shape[1]), np.int32)
    chunk[:len(tokens[start:start + 64])] = tokens[start:start + 64]
    log_p = np.asarray(jax.nn.log_softmax(logits_fn(params, {
        "decoder_input_tokens": chunk[:, :-1], "decoder_target_tokens": chunk[:, 1:]}), axis=-1))
    for r in range(min(64, len(rows) - start)):
      scores.append(sum(log_p[r, i, chunk[r, i + 1]] for i in spans[start + r]))
  right, k = 0, 0
  for ex in examples:
    right += int(np.argmax(scores[k:k + len(ex["choices"])])) == ex["label"]
    k += len(ex["choices"])
  return right / len(examples)


def test_eval_json_has_loss_perplexity_and_seqio_metrics(trained, data_dir):  # noqa: F811
  model_dir, model, val, _ = trained
  out = model_dir / "eval.json"
  eval_lib.evaluate_checkpoint(model=model, dataset_cfg=val, partitioner=Partitioner(),
                               model_dir=str(model_dir), output_path=str(out), max_batches=1,
                               data_dir=str(data_dir[0]))
  report = json.loads(out.read_text())
  assert report["step"] == 2
  assert set(report["results"]) >= {"gf_docs", "gf_web", "all"}
  metrics = report["seqio_metrics"][eval_tasks.NEXT_LINE_TASK]
  examples = eval_tasks.next_line_examples(eval_tasks.validation_documents(str(data_dir[0])))
  assert metrics["num_examples"] == len(examples)
  expected = _accuracy_by_hand(model, model_dir, str(data_dir[0]), examples)
  assert metrics["accuracy"] == pytest.approx(expected)
  with pytest.raises(ValueError, match="No seqio Task or Mixture named 'gf_nope'"):
    eval_lib.resolve_seqio_eval_tasks(["gf_nope"], None)
  assert eval_lib.resolve_seqio_eval_tasks("auto", None) == []
