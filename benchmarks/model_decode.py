"""Greedy KV-cache decoding tokens/s of our Flax Gemma against transformers' GemmaForCausalLM.generate.

    python -m benchmarks.model_decode [--config=bench_100m] [--override FIELD=VALUE ...]
        [--dtype=float32|bfloat16] [--batch_size=4] [--seq_len=64 (prompt length)]
        [--new_tokens=32] [--repeats=3] [--attn eager sdpa] [--threads=0] [--json=out.json]

The prompts are `batch_size` rows of `seq_len` random tokens (BOS first, no
padding). Both sides decode exactly `new_tokens` tokens greedily with a KV cache:

  ours:          model.decoding.generate(..., max_decode_len=new_tokens, sampler=Sampler("greedy"),
                 stop_tokens=()): one jit-compiled prefill + lax.while_loop; with no stop
                 tokens the loop never exits early.
  transformers:  model.generate(do_sample=False, use_cache=True, max_new_tokens=new_tokens,
                 min_new_tokens=new_tokens) with generation_config.eos_token_id = None, so it
                 cannot stop early either (and no EOS logit is masked, keeping it greedy-exact).

decode tokens/s = batch * new_tokens / (wall time of one whole generate call,
prefill included), median over `--repeats` calls after one untimed warm-up call
(for ours, the warm-up compiles; its time is reported). The prefill alone (one
forward pass over the prompts that fills the cache) is timed the same way and
reported apart, with the per-token time of the rest. Note that our loop runs
one more single-token forward than transformers (it also computes logits after
the last token), which counts against us.

Before timing, the prefill's last-position logits are compared (max abs
difference; the benchmark stops above the dtype's tolerance) and the share of
identical generated tokens is printed. Prints a table and one
`ratio decode tokens/s ours/transformers[<attn>] = X` line per attention.
"""

from __future__ import annotations

import argparse
import functools
import time

from benchmarks import _common  # Sets JAX's GPU memory policy before jax starts.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model import decoding  # noqa: E402
from model.transformer import Transformer, init_cache  # noqa: E402

GREEDY = decoding.Sampler("greedy")


def random_prompts(config, batch_size: int, prompt_len: int, seed: int) -> np.ndarray:
  """int32 [B, prompt_len]: BOS then uniform non-special ids (no padding)."""
  rng = np.random.default_rng(seed + 2)
  prompts = rng.integers(3, config.vocab_size, size=(batch_size, prompt_len)).astype(np.int32)
  prompts[:, 0] = decoding.BOS_ID
  return prompts


@functools.partial(jax.jit, static_argnames=("config", "cache_len"))
def prefill(config, params, prompts, cache_len: int):
  """What generate does first: one cached forward pass over the prompts. Returns (last logits, cache)."""
  batch, length = prompts.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  logits, cache = Transformer(config).apply({"params": params}, prompts, positions,
                                            cache=init_cache(config, batch, cache_len), decode=True)
  return logits[:, -1], cache


def time_calls(call, repeats: int, sync):
  """(result, warm-up s, [timed s]) of 1 + repeats calls."""
  start = time.perf_counter()
  result = call()
  sync(result)
  warmup_s = time.perf_counter() - start
  return result, warmup_s, [_common.timed(call, sync) for _ in range(repeats)]


def bench_ours(config, params, prompts_np, args):
  params = jax.device_put(params)
  prompts = jax.device_put(prompts_np)
  rng = jax.random.PRNGKey(args.seed)
  cache_len = args.seq_len + args.new_tokens
  sync = jax.block_until_ready
  logits, prefill_warmup_s, prefill_times = time_calls(lambda: prefill(config, params, prompts, cache_len),
                                                       args.repeats, sync)
  (tokens, _), warmup_s, times = time_calls(
      lambda: decoding.generate(config, params, prompts, rng, max_decode_len=args.new_tokens, sampler=GREEDY,
                                stop_tokens=()), args.repeats, sync)
  return {"last_logits": np.asarray(logits[0], np.float32), "tokens": np.asarray(tokens),
          "warmup_s": warmup_s, "times": times, "prefill_warmup_s": prefill_warmup_s, "prefill_times": prefill_times}


def bench_hf(config, state_dict, prompts_np, attn, args, torch, device):
  model = _common.hf_twin(config, state_dict, attn, torch, device).eval()
  model.generation_config.eos_token_id = None  # No stop token: always new_tokens tokens.
  model.generation_config.pad_token_id = decoding.PAD_ID
  input_ids = torch.from_numpy(prompts_np.astype(np.int64)).to(device)
  attention_mask = torch.ones_like(input_ids)
  sync = lambda _: _common.torch_sync(torch, device)

  def run_prefill():
    with torch.inference_mode():
      return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1).logits

  def run_generate():
    with torch.inference_mode():
      return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, use_cache=True,
                            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

  logits, prefill_warmup_s, prefill_times = time_calls(run_prefill, args.repeats, sync)
  output, warmup_s, times = time_calls(run_generate, args.repeats, sync)
  if tuple(output.shape) != (args.batch_size, args.seq_len + args.new_tokens):
    raise RuntimeError(f"transformers generated shape {tuple(output.shape)}, expected "
                       f"{(args.batch_size, args.seq_len + args.new_tokens)}")
  result = {"last_logits": logits[:, -1].float().cpu().numpy(), "tokens": output[:, args.seq_len:].cpu().numpy(),
            "warmup_s": warmup_s, "times": times, "prefill_warmup_s": prefill_warmup_s,
            "prefill_times": prefill_times}
  del model, logits, output
  _common.release_torch(torch)
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_common_flags(parser, batch_size=4, seq_len=64)
  parser.add_argument("--new_tokens", type=int, default=32, help="tokens generated per row")
  args = parser.parse_args(argv)
  _common.positive(args, "batch_size", "seq_len", "new_tokens", "repeats")

  config = _common.build_config(args.config, _common.parse_overrides(args.override), args.dtype)
  if args.seq_len + args.new_tokens > config.max_seq_len:
    raise SystemExit(f"--seq_len + --new_tokens = {args.seq_len + args.new_tokens} exceeds the config's "
                     f"max_seq_len {config.max_seq_len}")
  torch, device = _common.setup_torch(args.threads)
  params = _common.random_params(config, args.seed)
  prompts = random_prompts(config, args.batch_size, args.seq_len, args.seed)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  machine = _common.machine_description(torch, device)
  print(f"{machine}\nconfig {args.config} {config}\n{num_params / 1e6:.1f}M params, batch {args.batch_size}, "
        f"prompt {args.seq_len}, {args.new_tokens} new tokens, {args.dtype}, greedy, {args.repeats} timed calls",
        flush=True)

  runs = {}
  state_dict = _common.hf_state_dict(config, params, torch)
  for attn in args.attn:
    runs[f"transformers[{attn}]"] = bench_hf(config, state_dict, prompts, attn, args, torch, device)
    print(f"transformers[{attn}] done", flush=True)
  del state_dict
  ours = bench_ours(config, params, prompts, args)

  for name, run in runs.items():
    _common.check_close(f"prefill last-position logits vs {name}",
                        float(np.max(np.abs(ours["last_logits"] - run["last_logits"]))), args.dtype,
                        not args.no_check)
    same = ours["tokens"] == run["tokens"]
    print(f"check generated tokens vs {name}: {same.mean():.1%} identical, {int(same.all(axis=1).sum())}/"
          f"{len(same)} rows identical (greedy paths may part at near-ties, more so in bfloat16)", flush=True)

  new_tokens = args.batch_size * args.new_tokens
  results = {"machine": machine, "config_name": args.config, "config": config.__dict__, "num_params": num_params,
             "batch_size": args.batch_size, "prompt_len": args.seq_len, "new_tokens": args.new_tokens,
             "dtype": args.dtype, "implementations": {}}
  rows, ratio_lines = [], []
  ours_s = _common.median(ours["times"])
  for name, run in [("ours", ours)] + list(runs.items()):
    total_s, prefill_s = _common.median(run["times"]), _common.median(run["prefill_times"])
    ratio = total_s / ours_s  # = ours tokens/s / this tokens/s
    per_token_ms = (total_s - prefill_s) / args.new_tokens * 1e3
    label = "ours (jax.jit generate)" if name == "ours" else name
    rows.append([label, f"{total_s * 1e3:.1f}", f"{new_tokens / total_s:.1f}", f"{ratio:.2f}",
                 f"{prefill_s * 1e3:.1f}", f"{per_token_ms:.2f}", f"{run['warmup_s']:.2f} s"])
    results["implementations"][name] = {
        "median_generate_s": total_s, "generate_s": run["times"], "tokens_per_s": new_tokens / total_s,
        "median_prefill_s": prefill_s, "prefill_s": run["prefill_times"], "ms_per_token_after_prefill": per_token_ms,
        "warmup_generate_s": run["warmup_s"], "ratio_ours_over_this": ratio}
    if name != "ours":
      ratio_lines.append(f"ratio decode tokens/s ours/{name} = {ratio:.2f}")
  _common.print_table(f"greedy decoding, {args.batch_size} x {args.new_tokens} new tokens after a {args.seq_len}-token "
                      f"prompt (median of {args.repeats} calls)",
                      ["implementation", "generate ms", "tokens/s", "ours/this", "prefill ms", "ms/token after prefill",
                       "first call"], rows)
  print("\n" + "\n".join(ratio_lines), flush=True)
  _common.write_json(args.json, results)
  return results


if __name__ == "__main__":
  main()
