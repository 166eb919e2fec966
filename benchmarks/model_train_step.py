"""Training-step tokens/s of our Flax Gemma (jax.jit) against transformers' GemmaForCausalLM (PyTorch).

    python -m benchmarks.model_train_step [--config=bench_100m] [--override FIELD=VALUE ...]
        [--dtype=float32|bfloat16] [--batch_size=2] [--seq_len=128] [--steps=3] [--warmup=2]
        [--repeats=3] [--optimizer=adamw|sgd] [--attn eager sdpa] [--threads=0] [--json=out.json]

One step = forward + backward + optimizer update on a fixed batch of random
tokens [batch, seq_len + 1] (inputs = all but the last, targets = all but the
first; mean next-token cross-entropy over batch * seq_len tokens).

  ours:          jax.jit(value_and_grad(DecoderOnlyModel.loss_fn) + optax update), params and
                 optimizer state donated; compiled ahead of time, compile time reported apart.
  transformers:  model(input_ids).logits -> float32 cross-entropy -> loss.backward() ->
                 torch.optim step -> zero_grad, once per attention implementation (eager, sdpa).

Both start from the same weights and take the same optimizer (AdamW with equal
hyper-parameters, or SGD), so their loss after step 0 (the forward pass) and
after step 1 (gradients + update) must agree; the differences are printed and
the benchmark stops if step 0's exceeds the dtype's tolerance. Each side runs
`--warmup` untimed steps, then `--repeats` x `--steps` timed steps, each
synchronised with its device; tokens/s = batch * seq_len / median step time.
Implementations run one after another (transformers first, so torch can hand
its GPU memory back before JAX allocates). Prints a table and one
`ratio train_step tokens/s ours/transformers[<attn>] = X` line per attention.
"""

from __future__ import annotations

import argparse
import functools
import time

from benchmarks import _common  # Sets JAX's GPU memory policy before jax starts.

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from model.models import DecoderOnlyModel  # noqa: E402

ADAMW = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)


def random_tokens(config, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
  """int32 [B, seq_len + 1]: BOS then uniform non-special ids (no 0, so every target counts)."""
  rng = np.random.default_rng(seed + 1)
  tokens = rng.integers(3, config.vocab_size, size=(batch_size, seq_len + 1)).astype(np.int32)
  tokens[:, 0] = 2
  return tokens


def optax_optimizer(name: str, learning_rate: float):
  if name == "adamw":
    return optax.adamw(learning_rate, **ADAMW)
  return optax.sgd(learning_rate)


def torch_optimizer(name: str, learning_rate: float, parameters, torch):
  if name == "adamw":
    return torch.optim.AdamW(parameters, lr=learning_rate, betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                             weight_decay=ADAMW["weight_decay"])
  return torch.optim.SGD(parameters, lr=learning_rate)


def run_steps(step, warmup: int, repeats: int, steps: int, sync):
  """Runs warmup + repeats * steps calls of step(); returns (losses as floats, first-call s, timed step s)."""
  losses, times = [], []
  for i in range(warmup + repeats * steps):
    start = time.perf_counter()
    loss = step()
    sync(loss)
    times.append(time.perf_counter() - start)
    losses.append(loss)
  return [float(loss) for loss in losses], times[0], times[warmup:]


def bench_ours(config, params, tokens, args):
  """(losses, compile s, first step s, timed step s) of the jitted JAX/optax step."""
  model = DecoderOnlyModel(config)
  optimizer = optax_optimizer(args.optimizer, args.learning_rate)
  batch = {"decoder_input_tokens": jax.device_put(tokens[:, :-1]),
           "decoder_target_tokens": jax.device_put(tokens[:, 1:])}
  params = jax.device_put(params)
  opt_state = optimizer.init(params)

  def loss_only(p, b):
    return model.loss_fn(p, b)[0]

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_only)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  compiled = train_step.lower(params, opt_state, batch).compile()
  compile_s = time.perf_counter() - start
  state = {"params": params, "opt_state": opt_state}

  def step():
    state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"], batch)
    return loss

  losses, first_s, times = run_steps(step, args.warmup, args.repeats, args.steps, jax.block_until_ready)
  del state
  return losses, compile_s, first_s, times


def bench_hf(config, state_dict, tokens, attn, args, torch, device):
  """(losses, first step s, timed step s) of transformers' eager PyTorch step."""
  model = _common.hf_twin(config, state_dict, attn, torch, device).train()
  optimizer = torch_optimizer(args.optimizer, args.learning_rate, model.parameters(), torch)
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
  targets = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)

  def step():
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  losses, first_s, times = run_steps(step, args.warmup, args.repeats, args.steps,
                                     lambda _: _common.torch_sync(torch, device))
  del model, optimizer
  _common.release_torch(torch)
  return losses, first_s, times


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_common_flags(parser, batch_size=2, seq_len=128)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (ours: the first runs compiled code)")
  parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  args = parser.parse_args(argv)
  _common.positive(args, "batch_size", "seq_len", "steps", "warmup", "repeats")

  config = _common.build_config(args.config, _common.parse_overrides(args.override), args.dtype)
  if args.seq_len > config.max_seq_len:
    raise SystemExit(f"--seq_len {args.seq_len} exceeds the config's max_seq_len {config.max_seq_len}")
  torch, device = _common.setup_torch(args.threads)
  params = _common.random_params(config, args.seed)
  tokens = random_tokens(config, args.batch_size, args.seq_len, args.seed)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  machine = _common.machine_description(torch, device)
  print(f"{machine}\nconfig {args.config} {config}\n{num_params / 1e6:.1f}M params, batch {args.batch_size} x "
        f"seq {args.seq_len}, {args.dtype}, {args.optimizer}, warmup {args.warmup}, "
        f"{args.repeats} x {args.steps} timed steps", flush=True)

  results = {"machine": machine, "config_name": args.config, "config": config.__dict__, "num_params": num_params,
             "batch_size": args.batch_size, "seq_len": args.seq_len, "dtype": args.dtype,
             "optimizer": args.optimizer, "implementations": {}}
  runs = {}
  state_dict = _common.hf_state_dict(config, params, torch)
  for attn in args.attn:
    runs[f"transformers[{attn}]"] = bench_hf(config, state_dict, tokens, attn, args, torch, device)
    print(f"transformers[{attn}] done", flush=True)
  del state_dict
  ours_losses, compile_s, first_s, ours_times = bench_ours(config, params, tokens, args)

  for name, (losses, _, _) in runs.items():
    _common.check_close(f"step-0 loss vs {name}", abs(ours_losses[0] - losses[0]), args.dtype, not args.no_check)
    # After one update the losses also compare the gradients and the optimizer. In bfloat16 this is reported,
    # not enforced: AdamW's first update is about lr * sign(gradient), and gradients that are zero up to
    # bfloat16 rounding take either sign, which at 2B parameters can move the loss by whole units.
    _common.check_close(f"step-1 loss (after one update) vs {name}", abs(ours_losses[1] - losses[1]), args.dtype,
                        not args.no_check and args.dtype == "float32")
    print(f"  losses of the first steps: ours {[round(x, 4) for x in ours_losses[:4]]}, "
          f"{name} {[round(x, 4) for x in losses[:4]]}", flush=True)

  tokens_per_step = args.batch_size * args.seq_len
  ours_step = _common.median(ours_times)
  rows = [["ours (jax.jit)", f"{ours_step * 1e3:.1f}", f"{tokens_per_step / ours_step:.1f}", "1.00",
           f"compile {compile_s:.1f} s, first step {first_s:.2f} s", f"{ours_losses[0]:.4f}"]]
  results["implementations"]["ours"] = {"median_step_s": ours_step, "step_s": ours_times, "compile_s": compile_s,
                                        "first_step_s": first_s, "losses": ours_losses,
                                        "tokens_per_s": tokens_per_step / ours_step}
  ratio_lines = []
  for name, (losses, first, times) in runs.items():
    step_s = _common.median(times)
    ratio = step_s / ours_step  # = ours tokens/s / their tokens/s
    rows.append([name, f"{step_s * 1e3:.1f}", f"{tokens_per_step / step_s:.1f}", f"{ratio:.2f}",
                 f"first step {first:.2f} s", f"{losses[0]:.4f}"])
    results["implementations"][name] = {"median_step_s": step_s, "step_s": times, "first_step_s": first,
                                        "losses": losses, "tokens_per_s": tokens_per_step / step_s,
                                        "ratio_ours_over_this": ratio}
    ratio_lines.append(f"ratio train_step tokens/s ours/{name} = {ratio:.2f}")
  _common.print_table(f"training step, {tokens_per_step} tokens/step (median of {len(ours_times)} steps)",
                      ["implementation", "step ms", "tokens/s", "ours/this", "start-up", "loss[0]"], rows)
  print("\n" + "\n".join(ratio_lines), flush=True)
  _common.write_json(args.json, results)
  return results


if __name__ == "__main__":
  main()
