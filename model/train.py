r"""Trains a Gemma decoder on a seqio Task/Mixture (t5x's train.py, on jax.sharding + orbax + clu).

  python -m model.train --gin_file=gin/small_cpu.gin --gin.MODEL_DIR="'/tmp/run'" \
      --gin.DATA_DIR="'out/demo/data'" --gin.TRAIN_STEPS=300

`train()` is a plain function whose arguments gin binds (see gin/runs/pretrain.gin). A restart
with the same MODEL_DIR resumes from the latest checkpoint: parameters, optimizer state and the
exact position in the data, so the per-step losses after the restart are those of an
uninterrupted run. With a staged mixture (STAGES, gin/small_cpu_staged.gin) that position is just
the step (see `model.data.ScheduledDataIterator`), and the resolved stages are written to
MODEL_DIR/mixture_schedule.json. Evaluation every EVAL_PERIOD steps reports validation loss per
task and seqio metrics (SEQIO_EVAL_TASKS).

Multi-host: every process runs this module with the same gin files plus --coordinator_address,
--num_processes and --process_id (`model.launch` starts N of them on one machine); each reads
its own input shards of every global batch (`Partitioner.data_layout`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Optional

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from model import gin_utils, launch, loop
from model.optimizers import Optimizer, create_optimizer
from model.partitioning import Partitioner
# The input pipeline (seqio, TensorFlow), checkpointing (orbax), eval and metric writers (clu) are
# imported by `train()` itself, so `Trainer` runs where only jax/flax/optax/gin are installed
# (benchmarks/train_throughput.py on a bare GPU machine).

launch.define_distributed_flags()

if __name__ == "__main__":
  # `python -m model.train` runs the importable module `model.train` instead of this `__main__`
  # copy, so gin registers each configurable once (`model.eval` imports it too).
  from model import train as _train_module
  gin_utils.run(_train_module.main)

# Metrics summed over microbatches; every other metric is a weight_sum-weighted mean.
_SUMMED_METRICS = ("num_tokens", "weight_sum", "invalid_tokens")


# ---- train state and step ----

@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any


class Trainer:
  """Sharded init and train step for one model/optimizer/partitioner."""

  def __init__(self, model, optimizer: Optimizer, partitioner: Partitioner,
               num_microbatches: int = 1, seed: int = 0):
    self.model = model
    self.optimizer = optimizer
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches
    self.seed = seed
    repl = partitioner.replicated
    self.abstract_params = model.abstract_params()
    self.param_shardings = partitioner.param_shardings(self.abstract_params, model.logical_axes())
    self.opt_state_shardings = partitioner.opt_state_shardings(
        optimizer.tx, self.abstract_params, self.param_shardings)
    self.abstract_opt_state = jax.eval_shape(optimizer.tx.init, self.abstract_params)
    self.state_shardings = TrainState(step=repl, params=self.param_shardings,
                                      opt_state=self.opt_state_shardings)
    self._train_step = jax.jit(
        self._step, in_shardings=(self.state_shardings, partitioner.batch_sharding),
        out_shardings=(self.state_shardings, repl), donate_argnums=(0,))

  def _with_shardings(self, abstract, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)

  def abstract_train_params(self):
    return self._with_shardings(self.abstract_params, self.param_shardings)

  def abstract_train_opt_state(self):
    return self._with_shardings(self.abstract_opt_state, self.opt_state_shardings)

  def init_state(self, params=None) -> TrainState:
    """Fresh state: random params from `seed`, or the given params (fine-tuning), new optimizer."""
    def init(rng, params):
      if params is None:
        params = self.model.init_params(rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.optimizer.tx.init(params))
    in_shardings = (None, self.param_shardings if params is not None else None)
    with self.partitioner.activate():
      return jax.jit(init, in_shardings=in_shardings, out_shardings=self.state_shardings)(
          jax.random.PRNGKey(self.seed), params)

  def state_from(self, step: int, params, opt_state) -> TrainState:
    step = jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated)
    return TrainState(step=step, params=params, opt_state=opt_state)

  def _grads(self, params, batch, rng):
    """Gradients and metrics for the global batch, accumulated over microbatches if asked.

    The accumulated gradient equals the big-batch gradient: each microbatch's token-mean loss
    is weighted by its share of loss weights (or summed when the loss has a fixed normaliser).
    """
    grad_fn = jax.value_and_grad(self.model.loss_fn, has_aux=True)
    n = self.num_microbatches
    if n == 1:
      (_, metrics), grads = grad_fn(params, batch, rng)
      return grads, metrics
    token_mean = getattr(self.model, "loss_normalizing_factor", None) is None

    def split(x):  # Microbatch i takes rows i, i+n, ...: every data shard feeds every microbatch.
      return x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)

    def body(carry, xs):
      grad_acc, metric_acc = carry
      micro, i = xs
      (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, i))
      w = metrics["weight_sum"] if token_mean else jnp.float32(1.0)
      grad_acc = jax.tree.map(lambda a, g: a + w * g.astype(jnp.float32), grad_acc, grads)
      metric_acc = {k: metric_acc[k] + (v if k in _SUMMED_METRICS else w * v)
                    for k, v in metrics.items()}
      return (grad_acc, metric_acc), None

    micro_batches = jax.tree.map(split, batch)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    metric_shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0],
                                                                       micro_batches), rng)[0][1])
    metric_zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metric_shapes)
    (grads, sums), _ = jax.lax.scan(body, (zeros, metric_zeros), (micro_batches, jnp.arange(n)))
    total = jnp.maximum(sums["weight_sum"], 1e-8) if token_mean else jnp.float32(1.0)
    grads = jax.tree.map(lambda g, p: (g / total).astype(p.dtype), grads, params)
    metrics = {k: (v if k in _SUMMED_METRICS else v / total) for k, v in sums.items()}
    return grads, metrics

  def _step(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
    grads, metrics = self._grads(state.params, batch, rng)
    updates, opt_state = self.optimizer.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params),
                   learning_rate=jnp.asarray(self.optimizer.learning_rate_fn(state.step),
                                             jnp.float32))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
    """One update on a global batch (sharded over 'data'); returns (new state, metrics)."""
    with self.partitioner.activate():
      return self._train_step(state, batch)


def run_fingerprint(trainer: Trainer, cfg: data_lib.DatasetConfig, num_shards: int,
                    mixture_schedule: Optional[dict] = None) -> dict:
  """What a checkpoint must share with this run to be resumed by it (saved with every step).

  `num_shards` is the number of input shards of the global batch (not of processes: a run may
  resume under another process count). A staged mixture adds its resolved stages: resuming
  under other stages would not continue the run's data (a fractional stage start moves when
  TRAIN_STEPS changes).
  """
  def shapes(tree):
    return {jax.tree_util.keystr(k): list(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  data = {"mixture_or_task_name": cfg.mixture_or_task_name,
          "task_feature_lengths": dict(cfg.task_feature_lengths), "split": cfg.split,
          "batch_size": cfg.batch_size, "shuffle": cfg.shuffle, "seed": cfg.seed,
          "pack": cfg.pack, "data_shards": num_shards}
  if mixture_schedule is not None:
    data["mixture_schedule"] = mixture_schedule
  return {
      "param_shapes": shapes(trainer.abstract_params),
      "opt_state_shapes": shapes(trainer.abstract_opt_state),
      "data": data,
  }


# ---- metrics ----

class MetricsLogger:
  """TensorBoard summaries (clu) under MODEL_DIR/{train,eval}, metrics.jsonl, console lines."""

  def __init__(self, model_dir: str, resume_step: int):
    from clu import metric_writers
    self.is_chief = jax.process_index() == 0
    self.writers = {split: metric_writers.create_default_writer(
        os.path.join(model_dir, split), just_logging=not self.is_chief, asynchronous=False)
        for split in ("train", "eval")}
    self.jsonl_path = os.path.join(model_dir, "metrics.jsonl")
    if self.is_chief:
      self._truncate_after(resume_step)

  def _read(self) -> list[dict]:
    """The records of metrics.jsonl. A torn last line (a kill during a write) is dropped with a
    warning; a bad line anywhere else is an error naming the file and line."""
    if not os.path.exists(self.jsonl_path):
      return []
    with open(self.jsonl_path) as f:
      lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        if any(rest.strip() for rest in lines[number:]):
          raise ValueError(f"{self.jsonl_path} line {number} is not JSON ({e}); only a torn "
                           "last line is tolerated") from None
        logging.warning("Dropping the torn last line %d of %s: %r", number, self.jsonl_path,
                        line[:200])
    return records

  def _truncate_after(self, step: int) -> None:
    """Drops records of steps a restart will redo, so the file reads as one clean run."""
    if not os.path.exists(self.jsonl_path):
      return
    keep = [r for r in self._read() if r["step"] <= step]
    tmp = self.jsonl_path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in keep)
    os.replace(tmp, self.jsonl_path)

  def write(self, split: str, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writers[split].write_scalars(step, scalars)
    if self.is_chief:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps({"split": split, "step": step, **scalars}, sort_keys=True) + "\n")

  def records(self, split: str = "train") -> list[dict]:
    return [r for r in self._read() if r["split"] == split]

  def close(self) -> None:
    for writer in self.writers.values():
      writer.flush()
      writer.close()


# ---- the training loop ----

@gin.configurable(denylist=["stop_after"])
def train(*,
          model,
          train_dataset_cfg: data_lib.DatasetConfig,
          partitioner: Partitioner,
          model_dir: str,
          total_steps: int,
          optimizer: Optional[Optimizer] = None,
          checkpoint_cfg: Optional[CheckpointConfig] = None,
          eval_dataset_cfg: Optional[data_lib.DatasetConfig] = None,
          eval_period: int = 0,
          eval_batches: Optional[int] = None,
          log_period: int = 10,
          num_microbatches: int = 1,
          seed: int = 0,
          init_checkpoint: Optional[str] = None,
          data_dir: Optional[str] = None,
          seqio_eval_tasks: Any = "auto",
          stop_after: Optional[Callable[[int], bool]] = None) -> dict:
  """Trains to `total_steps`, resuming from MODEL_DIR's latest checkpoint if there is one.

  Args:
    model: a `DecoderOnlyModel` (see `build_model`).
    train_dataset_cfg: the training pipeline; its batch size is global.
    partitioner: mesh and sharding rules.
    model_dir: checkpoints, TensorBoard summaries, metrics.jsonl and train_summary.json go here.
    total_steps: train until this many updates have been applied (counting earlier runs).
    optimizer: `create_optimizer()` by default (Adafactor, rsqrt schedule).
    checkpoint_cfg: save period, number kept, async.
    eval_dataset_cfg, eval_period, eval_batches: validation loss every `eval_period` steps
      and at the end (0 = never), on at most `eval_batches` batches per task.
    seqio_eval_tasks: seqio evaluation (metric_fns, e.g. rank-classification accuracy) at the
      same steps: a list of registered task names, or 'auto' for the eval tasks that
      `tasks.eval_tasks` builds from DATA_DIR (none without DATA_DIR); None or [] = off.
    log_period: a console line, TensorBoard and metrics.jsonl records every this many steps
      (the jsonl gets every step's record).
    num_microbatches: gradient accumulation; the global batch is split into this many parts.
    seed: parameter init and dropout.
    init_checkpoint: a step directory to take initial params from (fine-tuning), used only
      when MODEL_DIR has no checkpoint yet.
    data_dir: DATA_DIR; its gf_* tasks are registered first.
    stop_after: test hook: returns True to stop after that step (simulating pre-emption).

  Returns:
    The summary that is also written to MODEL_DIR/train_summary.json.
  """
  from model import data as data_lib
  from model import eval as eval_lib
  from model.checkpoints import CheckpointConfig, Checkpointer, load_params, resolve_checkpoint_path
  checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
  # Everything that can be wrong with the configuration is checked before any compute.
  for name, value in (("TRAIN_STEPS (train.total_steps)", total_steps),
                      ("LOG_PERIOD (train.log_period)", log_period),
                      ("NUM_MICROBATCHES (train.num_microbatches)", num_microbatches),
                      ("BATCH_SIZE (DatasetConfig.batch_size)", train_dataset_cfg.batch_size),
                      ("SAVE_PERIOD (CheckpointConfig.save_period)", checkpoint_cfg.save_period)):
    gin_utils.check_positive_int(name, value)
  if not model_dir or not isinstance(model_dir, str):
    raise ValueError(f"MODEL_DIR (train.model_dir) must be a non-empty path, got {model_dir!r}")
  gin_utils.register_data_dir(data_dir)
  cfg = train_dataset_cfg
  data_lib.get_task_or_mixture(cfg.mixture_or_task_name)
  gin_utils.check_vocab(model, cfg.mixture_or_task_name)
  partitioner.check_batch_size(cfg.batch_size, num_microbatches)
  if eval_period and eval_dataset_cfg is not None:
    data_lib.get_task_or_mixture(eval_dataset_cfg.mixture_or_task_name)
    partitioner.check_batch_size(eval_dataset_cfg.batch_size)
  init_step_dir = resolve_checkpoint_path(init_checkpoint, None) if init_checkpoint else None
  optimizer = optimizer if optimizer is not None else create_optimizer()
  print(f"Model: {model.config}\nPartitioner: {partitioner}", flush=True)

  seqio_eval_names = eval_lib.resolve_seqio_eval_tasks(seqio_eval_tasks, data_dir) \
      if eval_period and eval_dataset_cfg is not None else []
  os.makedirs(model_dir, exist_ok=True)
  layout = partitioner.data_layout(cfg.batch_size)
  num_shards = layout.num_shards
  data_iter = data_lib.get_sharded_train_iterator(cfg, total_steps, layout.local_shards,
                                                  num_shards, layout.saved_shards)
  staged = data_iter.staged
  schedule_json = write_mixture_schedule(data_iter.first, cfg, model_dir, total_steps) \
      if staged else None
  trainer = Trainer(model, optimizer, partitioner, num_microbatches, seed)
  checkpointer = Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_cfg)

  compat = run_fingerprint(trainer, cfg, num_shards, schedule_json and {
      k: schedule_json[k] for k in ("stages", "examples_per_step")})
  restored = checkpointer.restore_latest(trainer.abstract_train_params(),
                                         trainer.abstract_train_opt_state(), data_iter, compat)
  if restored is not None:
    start_step, params, opt_state = restored
    state = trainer.state_from(start_step, params, opt_state)
    if staged and any(it.step != start_step for it in data_iter.iterators.values()):
      raise ValueError(f"Checkpoint step {start_step} holds the data position of step "
                       f"{data_iter.first.step}; the checkpoint is inconsistent")
    print(f"Resuming from checkpoint step {start_step} in {model_dir}", flush=True)
  else:
    start_step = 0
    init_params = load_params(init_step_dir, trainer.abstract_train_params()) \
        if init_step_dir else None
    state = trainer.init_state(init_params)
    print(f"Starting at step 0 from {init_step_dir or f'random init (seed {seed})'}", flush=True)

  logger = MetricsLogger(model_dir, start_step)
  run_start = time.time()
  pending: list[tuple[int, dict]] = []
  period_start, period_tokens, run_tokens = time.time(), 0.0, 0.0

  def flush():
    nonlocal period_start, period_tokens, run_tokens
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), metrics in zip(pending, fetched):
      if float(metrics.get("invalid_tokens", 0)):
        raise ValueError(f"Step {s}: the batch held {int(metrics['invalid_tokens'])} token ids "
                         f"outside [0, {model.config.vocab_size}) (vocab_size); the data does not "
                         "match the model's vocabulary")
      period_tokens += float(metrics["num_tokens"])
      if jax.process_index() == 0:
        logger.write("train", s, {**metrics, "perplexity": math.exp(min(float(metrics["cross_ent_loss"]), 50.0))})
    elapsed = max(time.time() - period_start, 1e-9)
    last_step, last = pending[-1][0], fetched[-1]
    tokens_per_s = period_tokens / elapsed
    logger.writers["train"].write_scalars(last_step, {"tokens_per_second": tokens_per_s})
    print(f"step {last_step}/{total_steps} | loss {float(last['loss']):.4f} | "
          f"lr {float(last['learning_rate']):.2e} | grad_norm {float(last['grad_norm']):.3f} | "
          f"{tokens_per_s:,.0f} tok/s | {elapsed / len(pending):.3f} s/step", flush=True)
    run_tokens += period_tokens
    pending.clear()
    period_start, period_tokens = time.time(), 0.0

  seqio_evaluator, seqio_eval_results = None, None

  def run_eval(at_step):
    nonlocal seqio_evaluator, seqio_eval_results
    results = eval_lib.evaluate(model, state.params, eval_dataset_cfg, partitioner,
                                max_batches=eval_batches)
    for task, r in results.items():
      logger.write("eval", at_step, {f"{task}/loss": r["loss"], f"{task}/perplexity": r["perplexity"]})
    print(eval_lib.format_table(results, at_step), flush=True)
    if seqio_eval_names:
      if seqio_evaluator is None:  # Built once: seqio caches the eval examples.
        seqio_evaluator = eval_lib.SeqioEvaluation(
            model, partitioner, seqio_eval_names, eval_dataset_cfg.batch_size,
            eval_lib.seqio_sequence_length(eval_dataset_cfg))
      metrics = seqio_evaluator.run(state.params, at_step)
      for task, values in metrics.items():
        logger.write("eval", at_step, {f"{task}/{k}": v for k, v in values.items()})
      print(eval_lib.format_seqio_table(metrics, at_step), flush=True)
      seqio_eval_results = metrics
    return results

  eval_results = None

  def train_step(done):
    nonlocal state
    batch = partitioner.shard_batch(next(data_iter), cfg.batch_size)
    state, metrics = trainer.train_step(state, batch)
    if staged:  # Examples of the step's block that did not fit its rows (see data.py).
      metrics = dict(metrics, data_dropped_examples=float(data_iter.last_dropped))
    pending.append((done + 1, metrics))

  def save(at):
    checkpointer.save(at, state.params, state.opt_state, data_iter, {"compat": compat})

  def evaluate(at):
    nonlocal eval_results
    eval_results = run_eval(at)

  step = loop.run_steps(
      start_step, total_steps, train_step, log_period=log_period, log=lambda _: flush(),
      save_period=checkpoint_cfg.save_period, save=save, eval_period=eval_period,
      evaluate=evaluate if eval_period and eval_dataset_cfg is not None else None,
      stop_after=stop_after, finish=lambda: pending and flush(),
      close=(checkpointer.close, logger.close))

  records = logger.records("train")
  summary = {
      "steps": step,
      "start_step": start_step,
      "first_loss": records[0]["loss"] if records else None,
      "final_loss": records[-1]["loss"] if records else None,
      "final_loss_mean_last_10": float(np.mean([r["loss"] for r in records[-10:]])) if records else None,
      "tokens_this_run": run_tokens,
      "seconds_this_run": time.time() - run_start,
      "tokens_per_second": run_tokens / max(time.time() - run_start, 1e-9),
      "checkpoint_steps": checkpointer.all_steps(),
      "eval": eval_results,
      "seqio_eval": seqio_eval_results,
  }
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    print("Training summary: " + json.dumps({k: v for k, v in summary.items() if k not in ("eval", "seqio_eval")},
                                           sort_keys=True), flush=True)
  return summary


def write_mixture_schedule(data_iter, cfg, model_dir: str, total_steps: int) -> dict:
  """Writes MODEL_DIR/mixture_schedule.json: the resolved stages, in the format that
  `python -m pipelines.report --schedule=...` reads, plus how they were configured."""
  from tasks import schedule as schedule_lib
  import tasks
  sched = data_iter.schedule
  content = schedule_lib.schedule_to_json(
      sched, total_steps=total_steps, seed=data_iter.seed, rows_per_host=data_iter.rows,
      sequence_length=data_iter.length, mixture_or_task_name=cfg.mixture_or_task_name,
      stages_config=[[start, dict(weights)] for start, weights in cfg.stages],
      mean_example_tokens=sched.mean_example_tokens,
      task_tiers={t: tasks.TASK_TIERS.get(t) for t in sched.tasks})
  content = json.loads(json.dumps(content, sort_keys=True))
  if jax.process_index() == 0:
    path = os.path.join(model_dir, "mixture_schedule.json")
    with open(path + ".tmp", "w") as f:
      json.dump(content, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
  return content


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  launch.initialize_from_flags()  # Multi-process runs (model/launch.py); before any JAX use.
  from model import checkpoints, data  # noqa: F401  Their configurables appear in the gin files.
  gin_utils.parse_gin_flags()
  train()

