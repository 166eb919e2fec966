"""Greedy KV-cache decoding time of our Flax Gemma against transformers' GemmaForCausalLM.generate, paired.

    python -m benchmarks.model_decode [--config=bench_100m] [--override FIELD=VALUE ...]
        [--dtype=float32|bfloat16] [--batch_size=4] [--seq_len=64 (prompt length)] [--new_tokens=32]
        [--peers eager sdpa static compile] [--variants training_layout copies cache_copies rope_fused table_second]
        [--pairs=7] [--warmup=1] [--threads=1] [--cpus=1] [--result=PATH]

The prompts are `batch_size` rows of `seq_len` random tokens (BOS first, no padding). One run =
one whole generate call (prefill included) that decodes exactly `new_tokens` tokens greedily:

  ours                          model.decoding.generate(..., sampler=Sampler("greedy"), stop_tokens=()):
                                one jit-compiled prefill + lax.while_loop that never exits early,
                                over model.decoding.decoding_params(params), made once before timing
                                (as transformers' weights are loaded once).
  ours[training_layout]         (--variants training_layout) the same over the params as the model
                                initialises them, as before decoding_params. The variants below
                                use that layout too: they are states from before it.
  ours[copies]                  (--variants copies) the same, as decoding was before it stopped copying
                                weights at every step (see ours_side).
  ours[cache_copies]            (--variants cache_copies) the same, as decoding was before it stopped
                                copying the KV cache at every step (see ours_side).
  ours[rope_fused]              (--variants rope_fused) the same, with RoPE's sin and cos fused into
                                (and recomputed in) every rotation, as before model.modules.materialized.
  ours[table_second]            (--variants table_second) ours[training_layout] with the tied-embedding
                                logits as x @ table^T, as before model.modules.weights_first_matmul.
  transformers[eager|sdpa]      model.generate(do_sample=False, use_cache=True, max_new_tokens=n,
                                min_new_tokens=n), generation_config.eos_token_id = None (no early
                                stop, no EOS logit masked: greedy stays exact); dynamic KV cache.
  transformers[sdpa+static]     the same with cache_implementation="static".
  transformers[sdpa+static+compile]  static cache and generate's own torch.compile of the forward
                                (CompileConfig, forced on for CPU, mode "default").

Every run returns its generated tokens, which are compared across sides (float32 greedy decoding
is token-exact here). Both sides run the prefill and one single-token forward per generated token
but the last.
"""

from __future__ import annotations

import argparse

from benchmarks import _common, harness

# The model is random (no vocabulary); the released Gemma tokenizer's <bos>.
BOS_ID = 2
PEERS = {"eager": ("eager", None, False), "sdpa": ("sdpa", None, False), "static": ("sdpa", "static", False),
         "compile": ("sdpa", "static", True)}


def random_prompts(config, batch_size: int, prompt_len: int, seed: int):
  """int32 [B, prompt_len]: BOS then uniform non-special ids (no padding)."""
  import numpy as np
  rng = np.random.default_rng(seed + 2)
  prompts = rng.integers(3, config.vocab_size, size=(batch_size, prompt_len)).astype(np.int32)
  prompts[:, 0] = BOS_ID
  return prompts


def _copying_step(model, params, tokens, positions, segment_ids, cache):
  """model.decoding._step as it was before: logits for every position of the call."""
  logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache, decode=True)
  return logits[:, -1], cache


def _copying_attend_with_cache(query, key, value, mask, layer_cache, index, chunk_size=None):
  """model.modules.attend_with_cache as it was before: [B, S, K, H] keys and values, written into the
  cache first, then attended over the updated cache (XLA:CPU copied each cache at every step)."""
  from model import modules
  dtype = query.dtype
  new_cache = {name: modules.write_cache(layer_cache[name], x, "BSKH", index) for name, x in (("k", key), ("v", value))}
  cached_key, cached_value = new_cache["k"].astype(dtype), new_cache["v"].astype(dtype)
  attend = lambda q, m: modules.dot_product_attention(q, cached_key, cached_value, m)
  return (attend(query, mask) if chunk_size is None else modules.map_chunks(attend, (query, mask), chunk_size)), new_cache


def ours_side(model: dict, batch_size: int, prompt_len: int, new_tokens: int, seed: int, variant: str = ""):
  """Worker factory: run() is one jitted greedy generate call; returns the tokens as lists.

  Ours decodes over `decoding.decoding_params(params)`. Variants put back what decoding did before a
  change (docs/model_benchmarks.md), over the params as initialised: "training_layout", nothing more;
  "copies", every weight copied out of its stack or transposed at every step
  (model.modules.weight_copy_is_cheaper always true) and a prefill that computes the logits of every
  prompt position; "cache_copies", the
  KV cache in the [B, S, K, H] layout, written before the attention reads it
  (`_copying_attend_with_cache`); "rope_fused", RoPE's sin and cos left for XLA to fuse into every
  rotation (model.modules.materialized the identity); "table_second", the tied-embedding logits as
  x @ table^T at every token count (model.modules.FEW_TOKENS 0), not table @ x^T.
  """
  import jax
  import numpy as np
  from model import decoding, modules

  if variant == "copies":
    modules.weight_copy_is_cheaper = lambda x, stacked: True
    decoding._step = _copying_step
  elif variant == "cache_copies":
    modules.CACHE_AXES = {"k": "BSKH", "v": "BSKH"}
    modules.attend_with_cache = _copying_attend_with_cache
  elif variant == "rope_fused":
    modules.materialized = lambda x: x
  elif variant == "table_second":
    modules.FEW_TOKENS = 0
  elif variant and variant != "training_layout":
    raise ValueError(f"unknown variant {variant!r}")

  config = _common.build_config(**model)
  params = jax.device_put(_common.random_params(config, seed))
  if not variant:
    params = jax.block_until_ready(decoding.decoding_params(params))
  prompts = jax.device_put(random_prompts(config, batch_size, prompt_len, seed))
  rng = jax.random.PRNGKey(seed)

  def run():
    tokens, _ = decoding.generate(config, params, prompts, rng, max_decode_len=new_tokens,
                                  sampler=decoding.Sampler("greedy"), stop_tokens=())
    return np.asarray(tokens).tolist()

  return run


def hf_side(model: dict, batch_size: int, prompt_len: int, new_tokens: int, seed: int, attn: str,
            cache: str | None, compile: bool):
  """Worker factory: run() is one transformers generate call; returns the new tokens as lists."""
  import numpy as np
  import torch
  import transformers
  from model import decoding

  config = _common.build_config(**model)
  params = _common.random_params(config, seed)
  _, device = _common.setup_torch(0)
  hf = _common.hf_twin(config, _common.hf_state_dict(config, params, torch), attn, torch, device).eval()
  del params
  generation = hf.generation_config
  generation.eos_token_id = None  # No stop token: always new_tokens tokens.
  generation.pad_token_id = decoding.PAD_ID
  if cache:
    generation.cache_implementation = cache
  if compile:
    compile_config = transformers.CompileConfig(mode="default" if device.type == "cpu" else "reduce-overhead")
    compile_config._compile_all_devices = True  # generate compiles only on accelerators unless told.
    generation.compile_config = compile_config
  else:
    generation.disable_compile = True
  input_ids = torch.from_numpy(random_prompts(config, batch_size, prompt_len, seed).astype(np.int64)).to(device)
  attention_mask = torch.ones_like(input_ids)

  def run():
    with torch.inference_mode():
      output = hf.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, use_cache=True,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if tuple(output.shape) != (batch_size, prompt_len + new_tokens):
      raise RuntimeError(f"transformers generated shape {tuple(output.shape)}, expected "
                         f"{(batch_size, prompt_len + new_tokens)}")
    return output[:, prompt_len:].cpu().numpy().tolist()

  return run, {"attn_implementation": attn, "cache_implementation": cache or "dynamic", "torch_compile": compile}


def sides(args) -> list:
  model = {"name": args.config, "overrides": _common.parse_overrides(args.override), "dtype": args.dtype}
  common = dict(model=model, batch_size=args.batch_size, prompt_len=args.seq_len, new_tokens=args.new_tokens,
                seed=args.seed)
  out = [harness.Side("ours", "benchmarks.model_decode:ours_side", common)]
  for variant in args.variants:
    out.append(harness.Side(f"ours[{variant}]", "benchmarks.model_decode:ours_side", {**common, "variant": variant}))
  for peer in args.peers:
    attn, cache, compile = PEERS[peer]
    name = f"transformers[{attn}{'+' + cache if cache else ''}{'+compile' if compile else ''}]"
    out.append(harness.Side(name, "benchmarks.model_decode:hf_side",
                            {**common, "attn": attn, "cache": cache, "compile": compile}))
  return out


def check_tokens(result: dict, dtype: str, enforce: bool) -> None:
  """Share of generated tokens identical to ours, per peer; all must match in float32 unless --no_check."""
  import numpy as np
  ours = np.asarray(result["sides"]["ours"]["values"][-1])
  result["token_check"] = {}
  for name, side in result["sides"].items():
    if any(values != side["values"][-1] for values in side["values"]):
      raise SystemExit(f"{name} generated different tokens in different runs of the same greedy decode")
    if name == "ours":
      continue
    same = ours == np.asarray(side["values"][-1])
    result["token_check"][name] = float(same.mean())
    print(f"check generated tokens vs {name}: {same.mean():.1%} identical, {int(same.all(axis=1).sum())}/"
          f"{len(same)} rows identical", flush=True)
    if enforce and dtype == "float32" and not same.all():
      raise SystemExit(f"greedy float32 tokens of ours and {name} differ: the two models do not compute the same "
                       "function, so timing them would be meaningless (pass --no_check to time anyway)")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _common.add_model_flags(parser, batch_size=4, seq_len=64)
  parser.add_argument("--new_tokens", type=int, default=32, help="tokens generated per row")
  parser.add_argument("--peers", nargs="+", default=["eager", "sdpa", "static"], choices=sorted(PEERS))
  parser.add_argument("--variants", nargs="*", default=[],
                      choices=["training_layout", "copies", "cache_copies", "rope_fused", "table_second"],
                      help="ours as it was before a change, timed in the same run (see ours_side)")
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  _common.positive(args, "batch_size", "seq_len", "new_tokens", "pairs")
  config = _common.build_config(args.config, _common.parse_overrides(args.override), args.dtype)
  if args.seq_len + args.new_tokens > config.max_seq_len:
    raise SystemExit(f"--seq_len + --new_tokens = {args.seq_len + args.new_tokens} exceeds the config's "
                     f"max_seq_len {config.max_seq_len}")
  benchmark = args.name or f"decode_{args.config}_{args.dtype}_b{args.batch_size}_p{args.seq_len}_n{args.new_tokens}"

  def check(result):
    check_tokens(result, args.dtype, not args.no_check)
    for side in result["sides"].values():
      side["values"] = side["values"][-1:]  # All runs of a side were identical (checked); keep one.
      side["warmup_values"] = []

  return harness.run_from_flags(benchmark, sides(args), args, work_per_run=args.batch_size * args.new_tokens,
                                unit="tokens", settings={**vars(args), "config": config.__dict__},
                                allow_few_pairs=args.smoke, check=check)


if __name__ == "__main__":
  main()
