"""Training-step time of our Flax Gemma (jax.jit) against transformers' GemmaForCausalLM, paired.

    python -m benchmarks.model_train_step [--config=bench_100m] [--override FIELD=VALUE ...]
        [--dtype=float32|bfloat16] [--batch_size=2] [--seq_len=128] [--optimizer=adamw|sgd]
        [--peers eager sdpa compile] [--pairs=7] [--warmup=2] [--threads=1] [--cpus=1] [--result=PATH]

One run = one training step: forward + backward + optimizer update on a fixed batch of random
tokens [batch, seq_len + 1] (inputs = all but the last, targets = all but the first; mean
next-token cross-entropy over batch * seq_len tokens). Sides (each in its own pinned worker
process, interleaved by benchmarks/harness.py):

  ours                       jax.jit(value_and_grad(DecoderOnlyModel.loss_fn) + optax update),
                             params and optimizer state donated, compiled ahead of time.
  ours[unfolded]             the same with the projections as [B, T] einsums, as before
                             model.modules.token_einsum (--variants unfolded).
  ours[copies]               the same with every stacked weight sliced (and q transposed) before
                             its matmul, as before model.modules.stacked_token_einsum (--variants copies).
  ours[softmax_autodiff]     the same with the attention softmax differentiated by autodiff, as
                             before model.modules.softmax (--variants softmax_autodiff).
  ours[full_square]          the same with the attention over the full [T, S] square, masked, as
                             before model.modules.causal_block_attention (--variants full_square).
  ours[rope_fused]           the same with RoPE's sin and cos left for XLA to fuse into (and recompute
                             in) every rotation, as before model.modules.materialized (--variants rope_fused).
  ours[autodiff_matmul]      the same with the token matmuls' weight gradients left to autodiff (a dot
                             contracting the leading token axis), as before model.modules.matmul.
  transformers[eager|sdpa]   model(input_ids).logits -> float32 cross-entropy -> backward ->
                             torch.optim step (AdamW: the fused kernel, transformers' Trainer
                             default) -> zero_grad(set_to_none).
  transformers[sdpa+adamw_for_loop]  the same with torch.optim.AdamW's default CPU kernel, a
                             per-tensor loop (--peers sdpa_for_loop): what the slow kernel costs.
  transformers[sdpa+compile] the same step with the model under torch.compile (inductor).

All start from the same weights and take the same optimizer (AdamW with equal hyper-parameters,
or SGD); every run returns its loss, so the loss of step 0 (forward pass) and of step 1 (after
one update: gradients + optimizer) are compared across sides before any figure is trusted.
"""

from __future__ import annotations

import argparse

from benchmarks import _common, harness

ADAMW = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
# peer flag -> (attention, torch.compile, AdamW kernel). transformers' Trainer defaults to the fused
# kernel (optim "adamw_torch_fused") since torch 2.8, and on the CPU it is much faster than
# torch.optim.AdamW's default for-loop one (docs/model_benchmarks.md), so every peer uses it but
# "sdpa_for_loop", kept to show what the slow kernel costs.
PEERS = {"eager": ("eager", False, "fused"), "sdpa": ("sdpa", False, "fused"), "compile": ("sdpa", True, "fused"),
         "sdpa_for_loop": ("sdpa", False, "for_loop")}


def random_tokens(config, batch_size: int, seq_len: int, seed: int):
  """int32 [B, seq_len + 1]: BOS then uniform non-special ids (no 0, so every target counts)."""
  import numpy as np
  rng = np.random.default_rng(seed + 1)
  tokens = rng.integers(3, config.vocab_size, size=(batch_size, seq_len + 1)).astype(np.int32)
  tokens[:, 0] = 2
  return tokens


def _unfold_tokens(equation, x, w, **kwargs):
  """model.modules.token_einsum as it was before: the einsum over [B, T] (for --variants unfolded)."""
  import jax.numpy as jnp
  return jnp.einsum(equation.replace("M", "BT"), x, w, **kwargs)


def ours_side(model: dict, batch_size: int, seq_len: int, optimizer: str, learning_rate: float, seed: int,
              variant: str = ""):
  """Worker factory: our jitted step; run() does one step and returns its loss.

  variant "unfolded" replaces modules.token_einsum by the [B, T] einsum it replaced, "copies"
  makes modules.weight_copy_is_cheaper always true (every stacked weight sliced, q transposed, as
  before stacked_token_einsum), and "softmax_autodiff" differentiates the attention softmax by
  autodiff instead of modules.softmax's own backward, and "full_square" computes every layer's
  attention over the full [T, S] square (config.attention_causal_blocks = 1), and "rope_fused"
  lets XLA fuse RoPE's sin and cos into the rotations (modules.materialized the identity), and
  "autodiff_matmul" differentiates the token matmuls by autodiff (modules.matmul plain jnp.matmul),
  so one paired run shows what a change bought.
  """
  import jax
  import optax
  from model import modules
  from model.models import DecoderOnlyModel

  if variant == "unfolded":
    modules.token_einsum = _unfold_tokens
  elif variant == "copies":  # Weights copied out of their stacks / transposed, as before stacked_token_einsum.
    modules.weight_copy_is_cheaper = lambda x, stacked: True
  elif variant == "softmax_autodiff":  # The attention softmax differentiated by autodiff, as before.
    modules.softmax = lambda logits: jax.nn.softmax(logits, axis=-1)
  elif variant == "full_square":  # Every query block against every key, as before causal_block_attention.
    model = {**model, "overrides": {**model["overrides"], "attention_causal_blocks": 1}}
  elif variant == "rope_fused":  # RoPE's sin and cos fused into every rotation, as before modules.materialized.
    modules.materialized = lambda x: x
  elif variant == "autodiff_matmul":  # The token matmuls differentiated by autodiff, as before modules.matmul.
    modules.matmul = jax.numpy.matmul
  elif variant:
    raise ValueError(f"unknown variant {variant!r}")

  config = _common.build_config(**model)
  params = jax.device_put(_common.random_params(config, seed))
  tokens = random_tokens(config, batch_size, seq_len, seed)
  opt = optax.adamw(learning_rate, **ADAMW) if optimizer == "adamw" else optax.sgd(learning_rate)
  decoder = DecoderOnlyModel(config)
  batch = {"decoder_input_tokens": jax.device_put(tokens[:, :-1]),
           "decoder_target_tokens": jax.device_put(tokens[:, 1:])}

  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: decoder.loss_fn(p, batch)[0])(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = [params, opt.init(params)]
  import time
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state, batch).compile()
  compile_s = time.perf_counter() - start

  def run():
    state[0], state[1], loss = compiled(state[0], state[1], batch)
    return float(loss)  # Also waits for the step.

  return run, {"compile_s": compile_s, "num_params": sum(int(x.size) for x in jax.tree.leaves(params))}


def hf_side(model: dict, batch_size: int, seq_len: int, optimizer: str, learning_rate: float, seed: int,
            attn: str, compile: bool, adamw: str = "fused"):
  """Worker factory: transformers' step (optionally torch.compile'd); run() returns its loss.

  adamw "fused" is torch's fused AdamW kernel (transformers' Trainer default), "for_loop" the
  per-tensor loop `torch.optim.AdamW` runs on the CPU when not told otherwise.
  """
  import numpy as np
  import torch

  config = _common.build_config(**model)
  params = _common.random_params(config, seed)
  torch_mod, device = _common.setup_torch(0)
  hf = _common.hf_twin(config, _common.hf_state_dict(config, params, torch), attn, torch, device).train()
  del params
  if optimizer == "adamw":
    opt = torch.optim.AdamW(hf.parameters(), lr=learning_rate, betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"], fused=adamw == "fused", foreach=False)
  else:
    opt = torch.optim.SGD(hf.parameters(), lr=learning_rate)
  tokens = random_tokens(config, batch_size, seq_len, seed)
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
  targets = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)
  forward = torch.compile(hf) if compile else hf

  def run():
    logits = forward(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _common.torch_sync(torch, device)
    return float(loss.detach())

  return run, {"attn_implementation": attn, "torch_compile": compile, "adamw": adamw if optimizer == "adamw" else None}


def sides(args) -> list:
  model = {"name": args.config, "overrides": _common.parse_overrides(args.override), "dtype": args.dtype}
  common = dict(model=model, batch_size=args.batch_size, seq_len=args.seq_len, optimizer=args.optimizer,
                learning_rate=args.learning_rate, seed=args.seed)
  out = [harness.Side("ours", "benchmarks.model_train_step:ours_side", common)]
  for variant in args.variants:
    out.append(harness.Side(f"ours[{variant}]", "benchmarks.model_train_step:ours_side", {**common, "variant": variant}))
  for peer in args.peers:
    attn, compile, adamw = PEERS[peer]
    name = f"transformers[{attn}{'+compile' if compile else ''}{'+adamw_for_loop' if adamw == 'for_loop' else ''}]"
    out.append(harness.Side(name, "benchmarks.model_train_step:hf_side",
                            {**common, "attn": attn, "compile": compile, "adamw": adamw}))
  return out


def check_losses(result: dict, dtype: str, enforce: bool) -> None:
  """Step-0 (and in float32 step-1) losses of every peer against ours."""
  losses = {name: side["warmup_values"] + side["values"] for name, side in result["sides"].items()}
  for name, values in losses.items():
    if name == "ours":
      continue
    _common.check_close(f"step-0 loss vs {name}", abs(losses["ours"][0] - values[0]), dtype, enforce)
    # After one update the losses also compare the gradients and the optimizer. In bfloat16 this is reported,
    # not enforced: AdamW's first update is about lr * sign(gradient), and gradients that are zero up to
    # bfloat16 rounding take either sign.
    _common.check_close(f"step-1 loss vs {name}", abs(losses["ours"][1] - values[1]), dtype,
                        enforce and dtype == "float32")
  result["loss_check"] = {name: values[:2] for name, values in losses.items()}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_model_flags(parser, batch_size=2, seq_len=128)
  parser.add_argument("--peers", nargs="+", default=["eager", "sdpa"], choices=sorted(PEERS))
  parser.add_argument("--variants", nargs="*", default=[],
                      choices=["unfolded", "copies", "softmax_autodiff", "full_square", "rope_fused",
                               "autodiff_matmul"],
                      help="earlier versions of ours to run beside it (what a change bought)")
  parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  harness.add_flags(parser)
  parser.set_defaults(warmup=2)
  args = parser.parse_args(argv)
  _common.positive(args, "batch_size", "seq_len", "pairs")
  if args.warmup < 1:
    raise SystemExit("--warmup must be >= 1 (the loss check reads the first step)")
  config = _common.build_config(args.config, _common.parse_overrides(args.override), args.dtype)
  if args.seq_len > config.max_seq_len:
    raise SystemExit(f"--seq_len {args.seq_len} exceeds the config's max_seq_len {config.max_seq_len}")
  tokens = args.batch_size * args.seq_len
  benchmark = args.name or f"train_step_{args.config}_{args.dtype}_b{args.batch_size}x{args.seq_len}"
  return harness.run_from_flags(benchmark, sides(args), args, work_per_run=tokens, unit="tokens",
                                settings={**vars(args), "config": config.__dict__}, allow_few_pairs=args.smoke,
                                check=lambda result: check_losses(result, args.dtype, not args.no_check))


if __name__ == "__main__":
  main()
