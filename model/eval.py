r"""Validation loss and perplexity per task (t5x's eval.py, for language modelling).

  python -m model.eval --gin_file=gin/small_cpu.gin --gin_file=gin/runs/eval.gin \
      --gin.DATA_DIR="'out/demo/data'" --gin.MODEL_DIR="'/tmp/run'"      # latest checkpoint
  python -m model.eval ... --gin.CHECKPOINT_PATH="'/tmp/run/checkpoints/300'"

For every Task of the Mixture (or the one Task) the whole validation split is scored once, in order,
and the loss is token-weighted: `loss = -sum(log p(target) * weight) / sum(weight)`, perplexity =
`exp(loss)`. The `all` row weights every token of every task equally.

It also runs seqio evaluation (t5x's `score` mode): `seqio.Evaluator` converts the eval tasks
(SEQIO_EVAL_TASKS; by default `tasks.eval_tasks`' multiple-choice task built from DATA_DIR's
validation documents) with `PrefixLMFeatureConverter`, the model scores each target given its
inputs (`score_batch`), and the tasks' `metric_fns` (rank-classification accuracy) turn the
scores into metrics. Prints tables and writes JSON (EVAL_OUTPUT, default
MODEL_DIR/eval/eval_results_<step>.json) with `results` (loss/perplexity) and `seqio_metrics`.

The Gemma paper's academic benchmarks (MMLU, GSM8K, HumanEval, ...; lm-eval semantics, one table
with the paper's figures) are `model.evaluate`; see docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import gin
import jax
import seqio
import jax.numpy as jnp
import numpy as np

from model import checkpoints
from model import data as data_lib
from model import gin_utils
from model.partitioning import Partitioner

if __name__ == "__main__":
  # Run the importable `model.eval`, not this `__main__` copy: gin must see each configurable once.
  from model import eval as _eval_module
  gin_utils.run(_eval_module.main)


def _score_fn(model, partitioner: Partitioner, param_shardings):
  def score(params, batch):
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    return jnp.sum(model.score_batch(params, batch)), jnp.sum(weights)
  return jax.jit(score, in_shardings=(param_shardings, partitioner.batch_sharding),
                 out_shardings=partitioner.replicated)


def evaluate(model, params, dataset_cfg: data_lib.DatasetConfig, partitioner: Partitioner,
             max_batches: Optional[int] = None) -> dict[str, dict[str, float]]:
  """{task: {"loss", "perplexity", "num_tokens", "num_batches"}} plus an "all" row."""
  partitioner.check_batch_size(dataset_cfg.batch_size)
  shard_id, num_shards = partitioner.data_shard
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  score = _score_fn(model, partitioner, param_shardings)
  local_batch = dataset_cfg.batch_size // num_shards
  results = {}
  for task in data_lib.task_names(dataset_cfg.mixture_or_task_name):
    ds = data_lib.get_dataset(task, dataset_cfg.task_feature_lengths, dataset_cfg.split,
                              dataset_cfg.batch_size, shuffle=False, seed=dataset_cfg.seed,
                              use_cached=dataset_cfg.use_cached, shard_id=shard_id,
                              num_shards=num_shards, pack=dataset_cfg.pack, num_epochs=1,
                              drop_remainder=False)
    log_lik, tokens, batches = 0.0, 0.0, 0
    for batch in _named_errors(ds.as_numpy_iterator(), task, dataset_cfg.split):
      if max_batches is not None and batches >= max_batches:
        break
      batch = data_lib.pad_batch({k: np.asarray(v, np.int32) for k, v in batch.items()},
                                 local_batch)
      s, w = jax.device_get(score(params, partitioner.shard_batch(batch)))
      log_lik, tokens, batches = log_lik + float(s), tokens + float(w), batches + 1
    results[task] = _row(log_lik, tokens, batches)
  total_ll = sum(r["_log_lik"] for r in results.values())
  total_tokens = sum(r["num_tokens"] for r in results.values())
  results["all"] = _row(total_ll, total_tokens, sum(r["num_batches"] for r in results.values()))
  for r in results.values():
    del r["_log_lik"]
  return results


def _named_errors(batches, task: str, split: str):
  """The batches; a corrupt cache file is reported by name (`data_lib.naming_corrupt_files`)."""
  while True:
    with data_lib.naming_corrupt_files(task, split):
      batch = next(batches, None)
    if batch is None:
      return
    yield batch


def _row(log_lik: float, tokens: float, batches: int) -> dict[str, Any]:
  if tokens == 0:
    return {"loss": float("nan"), "perplexity": float("nan"), "num_tokens": 0.0,
            "num_batches": batches, "_log_lik": log_lik}
  loss = -log_lik / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "num_tokens": tokens,
          "num_batches": batches, "_log_lik": log_lik}


def format_table(results: dict[str, dict[str, float]], step: Optional[int] = None) -> str:
  header = f"{'task':<32} {'loss':>9} {'perplexity':>12} {'tokens':>12}"
  lines = [f"eval at step {step}" if step is not None else "eval", header, "-" * len(header)]
  for task, r in results.items():
    lines.append(f"{task:<32} {r['loss']:>9.4f} {r['perplexity']:>12.3f} {int(r['num_tokens']):>12d}")
  return "\n".join(lines)


# ---- seqio evaluation (metric_fns on scores) ----

AUTO = "auto"


def resolve_seqio_eval_tasks(spec: Any, data_dir: Optional[str]) -> list[str]:
  """Task names from SEQIO_EVAL_TASKS: 'auto' = the eval tasks `tasks.eval_tasks` registers for
  DATA_DIR (none without it); a list = registered tasks with metric_fns; None/[] = none."""
  if spec is None:
    return []
  if spec == AUTO:
    if not data_dir:
      return []
    gin_utils.register_data_dir(data_dir)
    from tasks import eval_tasks
    return eval_tasks.register_eval_tasks(data_dir)
  if isinstance(spec, str) or not all(isinstance(n, str) for n in spec):
    raise ValueError(f"SEQIO_EVAL_TASKS must be 'auto', None or a list of task names, got {spec!r}")
  for name in spec:
    task = data_lib.get_task_or_mixture(name)
    if not any(t.metric_objs for t in seqio.get_subtasks(task)):
      raise ValueError(f"seqio eval task {name} has no metric_fns")
  return list(spec)


def seqio_sequence_length(cfg: data_lib.DatasetConfig) -> dict[str, int]:
  """Inputs and targets share the eval sequence length (the model sees inputs + targets)."""
  length = int(cfg.task_feature_lengths["targets"])
  return {"inputs": length - length // 2, "targets": length // 2}


class SeqioEvaluation:
  """`seqio.Evaluator`s for score-based tasks, scored with the model's `score_batch`.

  Built once (seqio caches the converted eval examples); `run(params, step)` scores every
  example and returns `{task: {metric: value}}`.
  """

  def __init__(self, model, partitioner: Partitioner, task_names: list[str], batch_size: int,
               sequence_length: dict[str, int]):
    partitioner.check_batch_size(batch_size)
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    # bos_id: the task vocabulary's BOS starts the decoder inputs, the layout training uses.
    # seqio.Evaluator reads its datasets when built: a truncated TFRecord must name its file.
    self.evaluators = {}
    for name in task_names:
      with data_lib.naming_corrupt_files(name, "validation"):
        self.evaluators[name] = seqio.Evaluator(
            name, feature_converter=seqio.PrefixLMFeatureConverter(
                pack=False, bos_id=data_lib.targets_bos_id(name)),
            eval_split="validation", use_cached=False, sequence_length=sequence_length,
            async_compute_metrics=False)
    self._score = None

  def score_fn(self, params):
    """seqio's `score_fn`: enumerated model features -> [(index, log p(targets | inputs))]."""
    if self._score is None:
      shardings = jax.tree.map(lambda x: x.sharding, params)
      self._score = jax.jit(self.model.score_batch,
                            in_shardings=(shardings, self.partitioner.batch_sharding),
                            out_shardings=self.partitioner.replicated)
    shard_id, num_shards = self.partitioner.data_shard
    local = self.batch_size // num_shards
    keys = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")

    def fn(dataset):
      out = []
      for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
        batch = data_lib.pad_batch({k: np.asarray(features[k], np.int32) for k in keys},
                                   self.batch_size)
        mine = {k: v[shard_id * local:(shard_id + 1) * local] for k, v in batch.items()}
        scores = jax.device_get(self._score(params, self.partitioner.shard_batch(mine)))
        out.extend(zip(indices.tolist(), scores[:len(indices)].tolist()))
      return out
    return fn

  def run(self, params, step: Optional[int] = None) -> dict[str, dict[str, float]]:
    results = {}
    for name, evaluator in self.evaluators.items():
      metrics, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                      score_fn=self.score_fn(params))
      for task, values in metrics.result().items():
        results[task] = {k: float(getattr(v, "value", v)) for k, v in sorted(values.items())}
    return results


def format_seqio_table(metrics: dict[str, dict[str, float]], step: Optional[int] = None) -> str:
  lines = [f"seqio eval at step {step}" if step is not None else "seqio eval"]
  for task, values in metrics.items():
    lines.append(f"{task:<32} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
  return "\n".join(lines)


@gin.configurable
def evaluate_checkpoint(*, model, dataset_cfg: data_lib.DatasetConfig, partitioner: Partitioner,
                        checkpoint_path: Optional[str] = None, model_dir: Optional[str] = None,
                        output_path: Optional[str] = None, max_batches: Optional[int] = None,
                        data_dir: Optional[str] = None, seqio_eval_tasks: Any = AUTO) -> dict:
  """Loads the params of a checkpoint (CHECKPOINT_PATH, or MODEL_DIR's latest) and evaluates:
  loss/perplexity per task of `dataset_cfg`, and seqio metrics on `seqio_eval_tasks`
  (see `resolve_seqio_eval_tasks`)."""
  step_dir = checkpoints.resolve_checkpoint_path(checkpoint_path, model_dir)
  gin_utils.register_data_dir(data_dir)
  seqio_names = resolve_seqio_eval_tasks(seqio_eval_tasks, data_dir)
  data_lib.get_task_or_mixture(dataset_cfg.mixture_or_task_name)
  gin_utils.check_vocab(model, dataset_cfg.mixture_or_task_name)
  partitioner.check_batch_size(dataset_cfg.batch_size)
  abstract = model.abstract_params()
  shardings = partitioner.param_shardings(abstract, model.logical_axes())
  params = checkpoints.load_params(step_dir, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings))
  step = checkpoints.read_meta(step_dir).get("step")
  results = evaluate(model, params, dataset_cfg, partitioner, max_batches)
  print(format_table(results, step), flush=True)
  seqio_metrics = {}
  if seqio_names:
    seqio_metrics = SeqioEvaluation(model, partitioner, seqio_names, dataset_cfg.batch_size,
                                    seqio_sequence_length(dataset_cfg)).run(params, step)
    print(format_seqio_table(seqio_metrics, step), flush=True)
  if output_path is None:
    base = model_dir or os.path.dirname(os.path.dirname(step_dir.rstrip("/")))
    output_path = os.path.join(base, "eval", f"eval_results_{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w") as f:
      json.dump({"checkpoint": step_dir, "step": step, "split": dataset_cfg.split,
                 "results": results, "seqio_metrics": seqio_metrics}, f, indent=2,
                sort_keys=True)
    print(f"wrote {output_path}", flush=True)
  return results


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  from model import train  # noqa: F401  Registers train's configurables: run files bind them.
  gin_utils.parse_gin_flags()
  evaluate_checkpoint()

