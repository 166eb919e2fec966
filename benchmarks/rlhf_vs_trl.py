"""Post-training against TRL: one RLOO step, and reward-model training tokens/s, paired.

    python -m benchmarks.rlhf_vs_trl rloo_step [--config=small] [--prompts=4] [--group_size=4]
        [--prompt_len=32] [--completion_len=32] [--pairs=7] [--warmup=1] [--threads=1] [--result=PATH]
    python -m benchmarks.rlhf_vs_trl reward_model [--config=small] [--batch_size=8] [--seq_len=128] ...

Both run through benchmarks/harness.py (each side in its own pinned worker, interleaved rounds);
model, weights and data are the same on both sides (our Flax Gemma, its weights copied into
transformers' Gemma with `model.hf_convert`), all float32 on torch CPU.

rloo_step -- one run is one RLOO step: sample `group_size` completions of exactly
`completion_len` tokens for each of `prompts` prompts with the KV cache, score them with the
policy, the frozen reference (KL, k1 summed over the completion, times `kl_coef`, subtracted from
the reward) and the reward model, leave-one-out advantages, one AdamW update.

  ours  model.rlhf.rollout (jit) + model.train.Trainer.train_step on model.rlhf.PolicyObjective.
  trl   trl.RLOOTrainer's own training loop (transformers.Trainer), held between optimizer steps
        by a callback, so a run is exactly one iteration of that loop. Generation with
        transformers' generate (dynamic KV cache, sdpa attention), bf16 and activation
        (gradient) checkpointing off (its defaults are on), no logging, saving or evaluation.
  Equal: config, weights (policy = reference at start), prompts (no padding), B, G, lengths
  (no stop token on ours; `min_new_tokens` on TRL), temperature 1, KL estimator and coefficient,
  the reward model (a GemmaForSequenceClassification holding our RM's weights, called by a TRL
  reward function on the token ids, as TRL scores with a model but without re-tokenising), RLOO
  advantages, optimizer (AdamW, constant rate, clip 1.0). Not equal: the random samples (two
  RNGs), TRL's importance-ratio clipping (a no-op at ratio 1, one update per batch), its text
  decoding of completions for its reward-function API, and a sampled <pad> (id 0, rare), which
  our mask leaves out of the loss and TRL keeps. Before timing, both sides score one
  fixed probe batch (policy and reference log-probs, rewards), which must agree.

reward_model -- one run is one Bradley-Terry training step (forward + backward + AdamW) on the
same `batch_size` pairs (lengths seq_len/2..seq_len, right-padded to seq_len on both sides):

  ours  model.reward_model.RewardModel through model.train.Trainer.train_step.
  trl   trl.RewardTrainer (GemmaForSequenceClassification, pre-tokenised pairs, sequential
        sampler so every step sees the same pairs), held between steps the same way.
  The loss of every step is recorded on both sides; step 1 (same weights and pairs) must agree.
"""

from __future__ import annotations

import argparse
import functools
import threading

from benchmarks import _common, harness

ADAMW = dict(b1=0.9, b2=0.999, eps=1e-8)
CLIP_GRAD_NORM = 1.0
FIRST_ID = 3  # Random tokens avoid <pad> 0, <eos> 1 and <bos> 2.
BOS_ID = 2


# ---------------------------------------------------------------- shared data and weights


def reward_params(config, seed: int):
  """Our reward model's parameters (numpy): a random backbone and head, bias 0 (HF's head has none)."""
  import jax
  import numpy as np
  from model.reward_model import RewardModel
  params = RewardModel(config).init_params(jax.random.PRNGKey(seed + 1), _common.random_params(config, seed + 1))
  return jax.tree.map(np.asarray, params)


def rloo_prompts(config, prompts: int, prompt_len: int, seed: int):
  """int32 [B, P]: BOS then random ids, no padding (both sides then use the same positions)."""
  import numpy as np
  tokens = np.random.default_rng(seed + 3).integers(FIRST_ID, config.vocab_size, (prompts, prompt_len)).astype(np.int32)
  tokens[:, 0] = BOS_ID
  return tokens


def probe_completions(config, rows: int, completion_len: int, seed: int):
  """int32 [rows, C] fixed random completions that both sides score before timing."""
  import numpy as np
  return np.random.default_rng(seed + 4).integers(FIRST_ID, config.vocab_size, (rows, completion_len)).astype(np.int32)


def preference_pairs(config, batch_size: int, seq_len: int, seed: int):
  """(chosen, rejected) int32 [B, L], right-padded with 0; lengths in [L/2, L], one row of each exactly L."""
  import numpy as np
  rng = np.random.default_rng(seed + 5)
  out = []
  for _ in range(2):
    lengths = rng.integers(max(seq_len // 2, 2), seq_len + 1, batch_size)
    lengths[0] = seq_len
    rows = np.zeros((batch_size, seq_len), np.int32)
    for i, n in enumerate(lengths):
      rows[i, :n] = rng.integers(FIRST_ID, config.vocab_size, n)
      rows[i, 0] = BOS_ID
    out.append(rows)
  return tuple(out)


# ids 0-3 (Gemma's <pad>, <eos>, <bos>, <unk>); every other id i is the word "t{i}". Special words
# are matched anywhere in a text, so none may be a prefix of a "t{i}".
SPECIAL_WORDS = ("<pad>", "<eos>", "<bos>", "<unk>")


def words(ids) -> str:
  """Token ids as the text `word_tokenizer` maps back to exactly those ids."""
  return " ".join(SPECIAL_WORDS[i] if i < len(SPECIAL_WORDS) else f"t{i}" for i in ids)


def word_tokenizer(vocab_size: int):
  """A transformers tokenizer with one word per id: text <-> ids exactly, for TRL's text API."""
  import tokenizers
  import transformers
  vocab = {word: i for i, word in enumerate(words(range(vocab_size)).split(" "))}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                              bos_token="<bos>", unk_token="<unk>")


def hf_reward_model(config, params, torch):
  """transformers GemmaForSequenceClassification (1 label) holding our reward model's weights."""
  import numpy as np
  import transformers
  from model import hf_convert
  if float(params["head"]["b"]) != 0.0:
    raise ValueError("GemmaForSequenceClassification's score head has no bias; ours must be 0")
  hf_config = transformers.GemmaConfig(**{k: v for k, v in hf_convert.to_hf_config(config).items()
                                          if k not in ("architectures", "model_type", "torch_dtype", "dtype")},
                                       num_labels=1)
  model = transformers.GemmaForSequenceClassification._from_config(hf_config, dtype=torch.float32,
                                                                   attn_implementation="sdpa")
  state = _common.hf_state_dict(config, params["backbone"], torch)
  state["score.weight"] = torch.tensor(np.asarray(params["head"]["w"])[None, :], dtype=torch.float32)
  model.load_state_dict(state, strict=True)
  return model


def trl_args(config_cls, output_dir: str, seed: int, learning_rate: float, **kwargs):
  """TRL's config at its best on CPU: float32, no (gradient) activation checkpointing, no logging/saving/eval."""
  return config_cls(
      output_dir=output_dir, seed=seed, learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0,
      adam_beta1=ADAMW["b1"], adam_beta2=ADAMW["b2"], adam_epsilon=ADAMW["eps"], weight_decay=0.0,
      max_grad_norm=CLIP_GRAD_NORM, max_steps=10**6, bf16=False, fp16=False, activation_checkpointing=False,
      use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
      disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, **kwargs)


def our_optimizer(learning_rate: float):
  from model.optimizers import create_optimizer, create_schedule
  return create_optimizer("adamw", create_schedule("constant", peak_learning_rate=learning_rate, warmup_steps=0),
                          clip_grad_norm=CLIP_GRAD_NORM, weight_decay=0.0, **ADAMW)


# ---------------------------------------------------------------- driving a transformers.Trainer step by step


class TrainerSteps:
  """`trainer.train()` in a thread that waits after every optimizer step: calling this runs one more.

  A call lets exactly one iteration of the Trainer's own loop happen (batch, step, callbacks) and
  returns read(). Step 1, with train()'s start-up, happens in the constructor (`first`), so it
  counts as start-up. close() lets the loop end.
  """

  def __init__(self, trainer, read):
    import transformers
    self._go, self._done, self._failure, self._closing, self._read = (
        threading.Semaphore(0), threading.Semaphore(0), [], False, read)
    steps = self

    class Gate(transformers.TrainerCallback):
      def on_step_end(self, args, state, control, **kwargs):
        steps._done.release()
        steps._go.acquire()
        control.should_training_stop = steps._closing

    trainer.add_callback(Gate())
    threading.Thread(target=self._train, args=(trainer,), daemon=True).start()
    self._wait("start")
    self.first = read()

  def _train(self, trainer):
    try:
      trainer.train()
    except BaseException as e:  # Raised in the harness's thread by _wait.
      self._failure.append(e)
    self._done.release()

  def _wait(self, what):
    self._done.acquire()
    if self._failure:
      raise RuntimeError(f"the TRL trainer failed to {what}: {self._failure[0]!r}") from self._failure[0]

  def __call__(self):
    self._go.release()
    self._wait("step")
    return self._read()

  def close(self):
    self._closing = True
    self._go.release()
    self._wait("stop")


# ---------------------------------------------------------------- rloo_step


def rl_config(group_size: int, completion_len: int, kl_coef: float):
  """Our RLConfig set to TRL's RLOO: k1 KL in the reward, unclamped, no non-termination penalty."""
  from model import rlhf
  return rlhf.RLConfig(algorithm="rloo", group_size=group_size, max_decode_len=completion_len, temperature=1.0,
                       kl_coef=kl_coef, kl_estimator="k1", kl_clamp=1e9, nontermination_penalty=0.0)


def ours_rloo_side(model: dict, prompts: int, group_size: int, prompt_len: int, completion_len: int,
                   kl_coef: float, learning_rate: float, seed: int):
  """Worker factory: run() = rollout + one train step; returns the step's statistics."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from model import rlhf
  from model.models import DecoderOnlyModel
  from model.partitioning import Partitioner
  from model.reward_model import RewardModel
  from model.train import Trainer
  from model.transformer import Transformer

  config = _common.build_config(**model)
  rl = rl_config(group_size, completion_len, kl_coef)
  partitioner = Partitioner()
  trainer = Trainer(rlhf.PolicyObjective(DecoderOnlyModel(config), rl), our_optimizer(learning_rate), partitioner, 1,
                    seed)
  params = _common.random_params(config, seed)
  state = [trainer.init_state(jax.device_put(params, trainer.param_shardings))]
  ref_params = jax.device_put(params)  # Its own buffers: the train step donates the policy's.
  rm = RewardModel(config)
  rm_params = jax.device_put(reward_params(config, seed))
  tokens = rloo_prompts(config, prompts, prompt_len, seed)
  prompt_batch = partitioner.shard_batch({"prompt": tokens})["prompt"]

  # The probe: fixed completions scored by policy, reference and reward model, before any update.
  rows = np.repeat(tokens, group_size, axis=0)
  probe = probe_completions(config, len(rows), completion_len, seed)
  log_probs = jax.jit(functools.partial(rlhf.response_log_probs, Transformer(config)))  # One compile, not op by op.
  policy_lp, _ = log_probs(params, jnp.asarray(rows), jnp.asarray(probe))
  ref_lp, _ = log_probs(ref_params, jnp.asarray(rows), jnp.asarray(probe))
  probe_values = {"policy_logp": np.asarray(policy_lp).sum(axis=1).tolist(),
                  "ref_logp": np.asarray(ref_lp).sum(axis=1).tolist(),
                  "reward": np.asarray(jax.jit(rm.rewards)(rm_params, np.concatenate([rows, probe], axis=1))).tolist()}
  step = [0]

  def run():
    key = jax.random.fold_in(jax.random.PRNGKey(seed), step[0])
    with partitioner.activate():
      batch, stats = rlhf.rollout(config, rl, (), rm, state[0].params, ref_params, rm_params, prompt_batch, key)
    state[0], metrics = trainer.train_step(state[0], batch)
    step[0] += 1
    stats, metrics = jax.device_get((stats, metrics))  # Also waits for the step.
    # Sampled positions (ours never stops early: no stop token); a sampled <pad> is left out of the loss.
    return {"reward": float(stats["reward"]), "kl_per_token": float(stats["kl"]) / completion_len,
            "completion_tokens": int(batch["responses"].size), "loss_tokens": int(metrics["num_tokens"]),
            "entropy": float(stats["entropy"])}

  first = run()  # Compiles rollout and train step: start-up.
  return run, {"probe": probe_values, "first_step": first}


def trl_rloo_side(model: dict, prompts: int, group_size: int, prompt_len: int, completion_len: int,
                  kl_coef: float, learning_rate: float, seed: int):
  """Worker factory: run() = one iteration of RLOOTrainer's loop; returns the step's statistics."""
  import shutil
  import tempfile

  import datasets
  import numpy as np
  import torch
  import trl

  config = _common.build_config(**model)
  torch_mod, device = _common.setup_torch(0)
  work = tempfile.mkdtemp(prefix="rlhf_vs_trl_")
  policy = _common.hf_twin(config, _common.hf_state_dict(config, _common.random_params(config, seed), torch), "sdpa",
                           torch, device)
  policy.save_pretrained(f"{work}/policy")  # TRL loads its reference model from the policy's path.
  del policy
  reward_model = hf_reward_model(config, reward_params(config, seed), torch).eval()

  def reward_model_score(prompts, completions, completion_ids, prompt_ids, **kwargs):
    """Our RM's weights on the prompt + completion ids (right-padded, as TRL pads for a reward model)."""
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
      ids[i, :len(r)] = torch.tensor(r)
    with torch.inference_mode():
      return reward_model(input_ids=ids, attention_mask=(ids != 0).long()).logits[:, 0].tolist()

  tokens = rloo_prompts(config, prompts, prompt_len, seed)
  texts = [words(row) for row in tokens]
  tokenizer = word_tokenizer(config.vocab_size)
  if tokenizer(text=texts)["input_ids"] != tokens.tolist():
    raise RuntimeError("the word tokenizer does not give back the prompt ids")
  # Many copies of the B prompts, in order: every step takes the same B prompts, and epochs (with
  # their dataloader restarts) are rare, as in a real run.
  copies = 256
  dataset = datasets.Dataset.from_dict({"prompt": texts * copies, "prompt_ids": tokens.tolist() * copies})
  args = trl_args(trl.RLOOConfig, f"{work}/out", seed, learning_rate, per_device_train_batch_size=prompts * group_size,
                  num_generations=group_size, max_completion_length=completion_len, temperature=1.0, top_p=1.0,
                  top_k=0, beta=kl_coef, num_iterations=1, shuffle_dataset=False, remove_unused_columns=False,
                  model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
                  generation_kwargs={"min_new_tokens": completion_len}, log_completions=False)
  trainer = trl.RLOOTrainer(model=f"{work}/policy", reward_funcs=reward_model_score, args=args,
                            train_dataset=dataset, processing_class=tokenizer)
  shutil.rmtree(work, ignore_errors=True)  # Both models are loaded.

  rows = np.repeat(tokens, group_size, axis=0)
  probe = probe_completions(config, len(rows), completion_len, seed)
  ids = torch.from_numpy(np.concatenate([rows, probe], axis=1).astype(np.int64))
  mask = torch.ones_like(ids)
  with torch.no_grad():
    policy_lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, completion_len)
    ref_lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, completion_len)
  probe_values = {"policy_logp": policy_lp.sum(dim=1).tolist(), "ref_logp": ref_lp.sum(dim=1).tolist(),
                  "reward": reward_model_score(None, None, probe.tolist(), rows.tolist())}
  metrics = trainer._metrics["train"]
  seen = [0]

  def read():
    tokens_seen, seen[0] = trainer.state.num_input_tokens_seen - seen[0], trainer.state.num_input_tokens_seen
    return {"reward": metrics["reward"][-1], "kl_per_token": metrics["kl"][-1],
            "completion_tokens": int(round(metrics["completions/mean_length"][-1] * prompts * group_size)),
            "entropy": metrics["entropy"][-1], "tokens_seen": int(tokens_seen)}

  steps = TrainerSteps(trainer, read)
  return steps, {"probe": probe_values, "first_step": steps.first, "optim": str(trainer.args.optim),
               "attn_implementation": trainer.model.config._attn_implementation}


def check_rloo(result: dict, prompt_len: int, completion_len: int, rows: int, enforce: bool) -> None:
  """The probe (same completions, same weights) must score alike; every step must sample B*G*C tokens
  (and TRL see B*G*(P+C): its prompts are ours)."""
  import numpy as np
  ours, trl = (result["sides"][name]["setup_info"] for name in ("ours", "trl"))
  diffs = {key: float(np.max(np.abs(np.subtract(ours["probe"][key], trl["probe"][key])))) for key in ours["probe"]}
  for key, diff in diffs.items():
    _common.check_close(f"probe {key}", diff, "float32", enforce)
  want = rows * completion_len
  for name, side in result["sides"].items():
    counts = {v["completion_tokens"] for v in [side["setup_info"]["first_step"], *side["warmup_values"],
                                               *side["values"]]}
    if counts != {want}:
      raise SystemExit(f"{name} sampled {sorted(counts)} completion tokens per step, expected {want}")
  seen = {v["tokens_seen"] for v in [trl["first_step"], *result["sides"]["trl"]["warmup_values"],
                                     *result["sides"]["trl"]["values"]]}
  if seen != {rows * (prompt_len + completion_len)}:
    raise SystemExit(f"TRL processed {sorted(seen)} prompt + completion tokens per step, expected "
                     f"{rows * (prompt_len + completion_len)}")
  result["equality_check"] = {"probe_max_abs_diff": diffs, "completion_tokens_per_step": want,
                              "step_1": {"ours": ours["first_step"], "trl": trl["first_step"]}}


# ---------------------------------------------------------------- reward_model


def ours_reward_side(model: dict, batch_size: int, seq_len: int, learning_rate: float, seed: int):
  """Worker factory: run() = one Bradley-Terry train step; returns its loss."""
  import jax
  from model.partitioning import Partitioner
  from model.reward_model import RewardModel
  from model.train import Trainer

  config = _common.build_config(**model)
  partitioner = Partitioner()
  trainer = Trainer(RewardModel(config), our_optimizer(learning_rate), partitioner, 1, seed)
  state = [trainer.init_state(jax.device_put(reward_params(config, seed), trainer.param_shardings))]
  chosen, rejected = preference_pairs(config, batch_size, seq_len, seed)
  batch = partitioner.shard_batch({"chosen": chosen, "rejected": rejected})

  def run():
    state[0], metrics = trainer.train_step(state[0], batch)
    return float(metrics["loss"])

  first = run()
  return run, {"first_step": first, "tokens": int((chosen != 0).sum() + (rejected != 0).sum())}


def trl_reward_side(model: dict, batch_size: int, seq_len: int, learning_rate: float, seed: int):
  """Worker factory: run() = one iteration of RewardTrainer's loop; returns its loss."""
  import shutil
  import tempfile

  import datasets
  import torch
  import trl

  config = _common.build_config(**model)
  _common.setup_torch(0)
  chosen, rejected = preference_pairs(config, batch_size, seq_len, seed)
  rows = {"chosen_ids": [r[r != 0].tolist() for r in chosen], "rejected_ids": [r[r != 0].tolist() for r in rejected]}
  dataset = datasets.Dataset.from_dict({k: v * 256 for k, v in rows.items()})  # In order: the same pairs every step.
  args = trl_args(trl.RewardConfig, tempfile.mkdtemp(prefix="rlhf_vs_trl_"), seed, learning_rate,
                  per_device_train_batch_size=batch_size, max_length=seq_len, train_sampling_strategy="sequential",
                  center_rewards_coefficient=None, remove_unused_columns=False)
  losses = []

  class Recording(trl.RewardTrainer):
    def training_step(self, *args, **kwargs):
      loss = super().training_step(*args, **kwargs)
      losses.append(loss)
      return loss

  trainer = Recording(model=hf_reward_model(config, reward_params(config, seed), torch), args=args,
                      train_dataset=dataset, processing_class=word_tokenizer(config.vocab_size))
  shutil.rmtree(args.output_dir, ignore_errors=True)  # Nothing is saved (save_strategy "no").
  steps = TrainerSteps(trainer, lambda: float(losses[-1]))
  return steps, {"first_step": steps.first, "optim": str(trainer.args.optim),
               "tokens": int(sum(len(r) for r in rows["chosen_ids"] + rows["rejected_ids"]))}


def check_reward_model(result: dict, enforce: bool) -> None:
  """Step 1 (same weights, same pairs) must give the same loss; later steps are reported."""
  import numpy as np
  losses = {name: [side["setup_info"]["first_step"], *side["warmup_values"], *side["values"]]
            for name, side in result["sides"].items()}
  _common.check_close("step-1 reward-model loss", abs(losses["ours"][0] - losses["trl"][0]), "float32", enforce)
  result["equality_check"] = {"losses": losses,
                              "max_abs_diff_all_steps": float(np.max(np.abs(np.subtract(losses["ours"],
                                                                                        losses["trl"]))))}
  print(f"check reward-model losses over {len(losses['ours'])} steps: max |ours - trl| = "
        f"{result['equality_check']['max_abs_diff_all_steps']:.3g}", flush=True)


# ---------------------------------------------------------------- command line


def sides(args) -> list:
  model = {"name": args.config, "overrides": _common.parse_overrides(args.override), "dtype": "float32"}
  common = dict(model=model, learning_rate=args.learning_rate, seed=args.seed)
  if args.benchmark == "rloo_step":
    common.update(prompts=args.prompts, group_size=args.group_size, prompt_len=args.prompt_len,
                  completion_len=args.completion_len, kl_coef=args.kl_coef)
    return [harness.Side("ours", "benchmarks.rlhf_vs_trl:ours_rloo_side", common),
            harness.Side("trl", "benchmarks.rlhf_vs_trl:trl_rloo_side", common)]
  common.update(batch_size=args.batch_size, seq_len=args.seq_len)
  return [harness.Side("ours", "benchmarks.rlhf_vs_trl:ours_reward_side", common),
          harness.Side("trl", "benchmarks.rlhf_vs_trl:trl_reward_side", common)]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("benchmark", choices=["rloo_step", "reward_model"])
  parser.add_argument("--config", default="small", help="model/config.py name or a benchmarks/_common.py preset")
  parser.add_argument("--override", nargs="*", default=[], metavar="FIELD=VALUE")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--prompts", type=int, default=4, help="rloo_step: prompts per step (B)")
  parser.add_argument("--group_size", type=int, default=4, help="rloo_step: completions per prompt (G)")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--completion_len", type=int, default=32)
  parser.add_argument("--kl_coef", type=float, default=0.05)
  parser.add_argument("--batch_size", type=int, default=8, help="reward_model: pairs per step")
  parser.add_argument("--seq_len", type=int, default=128, help="reward_model: longest (padded) row")
  parser.add_argument("--name", default="", help="benchmark name (the result file's stem); default from the flags")
  parser.add_argument("--no_check", action="store_true", help="time even if the sides disagree")
  parser.add_argument("--smoke", action="store_true", help="allow fewer than harness.MIN_PAIRS rounds (tests)")
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  _common.positive(args, "prompts", "group_size", "prompt_len", "completion_len", "batch_size", "seq_len", "pairs")
  config = _common.build_config(args.config, _common.parse_overrides(args.override), "float32")
  if args.benchmark == "rloo_step":
    if args.group_size < 2:
      raise SystemExit("--group_size must be >= 2 (the leave-one-out baseline needs others)")
    if args.prompt_len + args.completion_len > config.max_seq_len:
      raise SystemExit(f"--prompt_len + --completion_len exceed the config's max_seq_len {config.max_seq_len}")
    rows = args.prompts * args.group_size
    name = args.name or (f"rlhf_rloo_step_{args.config}_b{args.prompts}g{args.group_size}"
                         f"_p{args.prompt_len}c{args.completion_len}")
    work, unit = rows * args.completion_len, "completion_tokens"
  else:
    if args.seq_len > config.max_seq_len:
      raise SystemExit(f"--seq_len exceeds the config's max_seq_len {config.max_seq_len}")
    name = args.name or f"rlhf_reward_model_{args.config}_b{args.batch_size}x{args.seq_len}"
    chosen, rejected = preference_pairs(config, args.batch_size, args.seq_len, args.seed)
    work, unit = int((chosen != 0).sum() + (rejected != 0).sum()), "tokens"
  if args.benchmark == "rloo_step":
    check = lambda result: check_rloo(result, args.prompt_len, args.completion_len, rows, not args.no_check)
  else:
    check = lambda result: check_reward_model(result, not args.no_check)
  return harness.run_from_flags(name, sides(args), args, work_per_run=work, unit=unit,
                                settings={**vars(args), "config": config.__dict__},
                                allow_few_pairs=args.smoke, check=check)


if __name__ == "__main__":
  main()
