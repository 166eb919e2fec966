"""How fast could any implementation run the model benchmarks on this CPU? A roofline.

    python -m benchmarks.cpu_roofline [--pairs=7] [--cpus=1] [--result=PATH]

A speed-up target against a peer is only meaningful if it is reachable: if the peer already runs
near what the machine can do, no code is 2x faster. This measures, with the harness's method (each
side in its own pinned one-thread process, interleaved), what one core does at best:

  jax_matmul / torch_matmul   a float32 [2048, 2048] x [2048, 2048] product (17.2 GFLOP), XLA:CPU
                              and torch (oneDNN / MKL); the faster of the two is the peak rate.
  read[<bytes>]               numpy's sum over a float32 buffer the size of a benchmarked model's
                              weights: the rate at which one core streams them, unless a gemv side
                              below streams that many bytes faster (then the faster one counts).

Then, for each committed result of benchmarks/model_train_step.py and benchmarks/model_decode.py
(benchmarks/results/train_step_*.json, decode_*.json; the model shape comes from the result's own
settings), the least CPU time one run can take on this core:

  training step   3 x 2 x tokens x (matmul parameters) + the attention products, at the peak rate,
                  plus AdamW's traffic (read params, grads, both moments; write params and moments:
                  7 x 4 bytes per parameter) at the read rate.
  decoding        the prefill's products (last position's logits only) at the peak rate, plus one
                  read of every matmul weight per generated token after the first, at the read rate.

Everything else (softmax, norms, the optimizer's arithmetic, the loss) is left out, so the bound is
generous. The largest ratio any implementation could reach against a peer is the peer's median CPU
time over the bound; the result says, per target of the issue, whether it is reachable here.

A JAX program does not get to pick its kernels: every product is XLA:CPU's. So a training row
also has an *XLA floor*, the same sum with the FLOPs at jax_matmul's rate (XLA's best, on a large
square product; the model's smaller ones run slower, so it is still a lower bound). The peer's
median over it is the most any JAX program could reach against that peer on this machine
(``max_ratio_with_xla_kernels``, ``target_reachable_with_xla_kernels``).

Decoding is bounded by how fast a kernel streams weights at a few rows, so a decode row records
that rate for both libraries (``kernel_stream_rates``):

  jax_gemv[<config>_b<batch>][<layout>] / torch_gemv[...]   [batch, in] x every matmul weight of
                              the model, stored [in, out] or [out, in] (and, for XLA, [out, in]
                              with the weight as the dot's left operand, or as a multiply-and-sum
                              that XLA emits as a reduction rather than a dot), in one call per run.

Where the model's weights are larger than the last-level cache, every decoding step reads them
from memory as one gemv run does, so a decode row gets an XLA floor too: the prefill at
jax_matmul's rate plus one read of the weights per generated token at the stream rate of the
fastest XLA form measured (a form not tried here could be faster). Where they fit in the cache
(``small``) the step re-reads weights the previous step left there and can beat the isolated
products (it does), so that row has no XLA floor.
Writes benchmarks/results/cpu_roofline.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from benchmarks import harness

MATMUL_SIZE = 2048
# The targets: ours at least this many times the peer's best path.
TARGETS = {"train_step": 1.5, "decode": 2.0}


def jax_matmul_side(size: int):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  product = jax.jit(lambda a, b: a @ b)
  product(a, b).block_until_ready()
  return lambda: float(product(a, b).block_until_ready()[0, 0])


def torch_matmul_side(size: int):
  import torch
  gen = torch.Generator().manual_seed(0)
  a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
  return lambda: float((a @ b)[0, 0])


def read_side(num_bytes: int):
  import numpy as np
  buffer = np.ones(num_bytes // 4, np.float32)
  return lambda: float(buffer.sum(dtype=np.float32))


def decode_weight_shapes(c: dict) -> list[tuple[int, int]]:
  """(in, out) of every product a decoding step makes, one per weight matrix: q, k and v, the
  attention output, gate and up, down per layer, and the logits over the tied embedding."""
  attention = [(c["embed_dim"], c["num_heads"] * c["head_dim"]),
               (c["embed_dim"], 2 * c["num_kv_heads"] * c["head_dim"]),
               (c["num_heads"] * c["head_dim"], c["embed_dim"])]
  mlp = [(c["embed_dim"], 2 * c["hidden_dim"]), (c["hidden_dim"], c["embed_dim"])]
  return (attention + mlp) * c["num_layers"] + [(c["embed_dim"], c["vocab_size"])]


# How a product with a weight is written, per layout of jax_gemv_side: x [batch, in] times each
# weight stored [in, out] ("in_out", as the layers store theirs), stored [out, in] ("out_in", as the
# tied embedding is), or stored [out, in] with the weight as the dot's left operand
# ("weights_first": model.modules.weights_first_matmul, the decoding logits' form), or stored
# [out, in] and multiplied elementwise then summed over `in` ("multiply_reduce": a reduce fusion, the
# one form in which XLA:CPU emits the product without a dot kernel).
JAX_LAYOUTS = ("in_out", "out_in", "weights_first", "multiply_reduce")
TORCH_LAYOUTS = ("in_out", "out_in")


def jax_gemv_side(config: dict, batch: int, layout: str):
  """x [batch, in] times each decode weight, laid out and multiplied as `layout` (JAX_LAYOUTS)
  names, all in one jitted call."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from model import modules
  rng = np.random.default_rng(0)
  shapes = decode_weight_shapes(config)
  stored_out_in = layout != "in_out"
  weights = [jnp.asarray(rng.standard_normal((n, k) if stored_out_in else (k, n), np.float32))
             for k, n in shapes]
  xs = [jnp.asarray(rng.standard_normal((batch, k), np.float32)) for k, _ in shapes]
  product = {"in_out": lambda x, w: jnp.einsum("bk,kn->bn", x, w),
             "out_in": lambda x, w: jnp.einsum("bk,nk->bn", x, w),
             "weights_first": modules.weights_first_matmul,
             "multiply_reduce": lambda x, w: jnp.sum(x[:, None, :] * w[None], axis=-1)}[layout]
  products = jax.jit(lambda xs, ws: [product(x, w) for x, w in zip(xs, ws)])
  jax.block_until_ready(products(xs, weights))
  return lambda: float(jax.block_until_ready(products(xs, weights))[-1][0, 0])


def torch_gemv_side(config: dict, batch: int, layout: str):
  """The same products with torch's kernels (``F.linear`` on [out, in] weights: its layout)."""
  transposed = layout == "out_in"
  import torch
  gen = torch.Generator().manual_seed(0)
  shapes = decode_weight_shapes(config)
  weights = [torch.randn((n, k) if transposed else (k, n), generator=gen) for k, n in shapes]
  xs = [torch.randn(batch, k, generator=gen) for k, _ in shapes]
  if transposed:
    return lambda: float(sum(float(torch.nn.functional.linear(x, w)[0, 0]) for x, w in zip(xs, weights)))
  return lambda: float(sum(float((x @ w)[0, 0]) for x, w in zip(xs, weights)))


def matmul_params(c: dict) -> int:
  """Parameters that a forward pass multiplies by (the tied embedding once, as the logits)."""
  per_layer = (c["num_heads"] * c["embed_dim"] * c["head_dim"] * 2  # q and the output projection
               + 2 * c["num_kv_heads"] * c["embed_dim"] * c["head_dim"]  # k, v
               + 3 * c["embed_dim"] * c["hidden_dim"])  # gate, up, down
  return c["num_layers"] * per_layer + c["vocab_size"] * c["embed_dim"]


def attention_flops(c: dict, batch: int, length: int) -> int:
  """Forward FLOPs of q.k and p.v over the full [length, length] square (both sides compute it)."""
  return c["num_layers"] * batch * 2 * 2 * length * length * c["num_heads"] * c["head_dim"]


def train_step_bound(settings: dict, peak_flops: float, read_bytes_per_s: float) -> dict:
  c, batch, length = settings["config"], settings["batch_size"], settings["seq_len"]
  flops = 3 * (2 * batch * length * matmul_params(c) + attention_flops(c, batch, length))
  optimizer_bytes = 7 * 4 * (matmul_params(c) + (2 * c["num_layers"] + 1) * c["embed_dim"])
  return {"flops": flops, "bytes": optimizer_bytes,
          "bound_cpu_s": flops / peak_flops + optimizer_bytes / read_bytes_per_s}


def decode_bound(settings: dict, peak_flops: float, read_bytes_per_s: float) -> dict:
  c, batch, prompt = settings["config"], settings["batch_size"], settings["seq_len"]
  logits_params = c["vocab_size"] * c["embed_dim"]
  flops = (2 * batch * prompt * (matmul_params(c) - logits_params) + 2 * batch * logits_params
           + attention_flops(c, batch, prompt))
  weight_bytes = 4 * matmul_params(c) * (settings["new_tokens"] - 1)
  return {"flops": flops, "bytes": weight_bytes,
          "bound_cpu_s": flops / peak_flops + weight_bytes / read_bytes_per_s}


def last_level_cache_bytes(cpu: int) -> int | None:
  """Size of the highest-level cache `cpu` uses (sysfs), or None where the kernel does not say."""
  units = {"K": 2**10, "M": 2**20, "G": 2**30}
  levels = {}
  for index in glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cache/index*"):
    try:
      level = int(open(os.path.join(index, "level")).read())
      size = open(os.path.join(index, "size")).read().strip()
    except (OSError, ValueError):
      continue
    levels[level] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
  return levels[max(levels)] if levels else None


def fastest_streams(read_rates: dict[int, float], gemv_rates: dict[str, float],
                    gemv_bytes: dict[str, int]) -> dict[int, dict]:
  """Per buffer size, the fastest measured stream of that many bytes: numpy's sum, or any gemv side
  that reads weights of that total size (a kernel that streams faster than the sum shows the core can)."""
  out = {}
  for num_bytes, rate in read_rates.items():
    best = {"bytes_per_cpu_s": rate, "side": f"read[{num_bytes}]"}
    for name, gemv_rate in gemv_rates.items():
      if gemv_bytes[name] == num_bytes and gemv_rate > best["bytes_per_cpu_s"]:
        best = {"bytes_per_cpu_s": gemv_rate, "side": name}
    out[num_bytes] = best
  return out


def model_results(results_dir: str, cpu: dict) -> list[tuple[str, str, dict]]:
  """(kind, path, result) of the committed float32 model benchmark results with peers that were
  measured on a CPU of this model name and `cpu_id` (harness.machine(); a roofline of one machine
  says nothing about another's runs, and a result without a cpu_id cannot be placed)."""
  out = []
  for kind, pattern in (("train_step", "train_step_*.json"), ("decode", "decode_*.json")):
    for path in sorted(glob.glob(os.path.join(results_dir, pattern))):
      result = json.load(open(path))
      settings, machine = result.get("settings", {}), result.get("environment", {}).get("machine", {})
      same_cpu = all(machine.get(key) == cpu[key] for key in ("cpu_model", "cpu_id"))
      if settings.get("dtype") == "float32" and "config" in settings and same_cpu:
        out.append((kind, path, result))
  return out


def weight_bytes(result: dict) -> int:
  return 4 * matmul_params(result["settings"]["config"])


def gemv_key(result: dict) -> str:
  """The config and batch a decode result's gemv sides are measured at."""
  return f"{result['sides']['ours']['kwargs']['model']['name']}_b{result['settings']['batch_size']}"


def bound_row(kind: str, path: str, result: dict, peak_flops: float, read_rate: float,
              xla_flops: float, stream_rates: dict[str, float], cache_bytes: int | None = None) -> dict:
  """``xla_flops``: XLA's matmul rate (a training step's XLA floor); ``stream_rates``: the gemv
  rates measured at a decode row's config and batch; ``cache_bytes``: the last-level cache, above
  which a decode row's XLA floor reads its weights at the fastest XLA form's rate."""
  bound_fn = train_step_bound if kind == "train_step" else decode_bound
  bound = bound_fn(result["settings"], peak_flops, read_rate)
  medians = {name: side["cpu"]["median"] for name, side in result["sides"].items()}
  peers = {name: t for name, t in medians.items() if name.startswith("transformers")}
  best_peer = min(peers, key=peers.get)
  max_ratio = peers[best_peer] / bound["bound_cpu_s"]
  row = {
      "result": os.path.relpath(path), "kind": kind, **bound,
      "ours_median_cpu_s": medians["ours"], "ours_over_bound": medians["ours"] / bound["bound_cpu_s"],
      "best_peer": best_peer, "best_peer_median_cpu_s": peers[best_peer],
      "measured_ratio_vs_best_peer": result["ratios"][best_peer]["cpu"]["median"],
      "max_possible_ratio_vs_best_peer": max_ratio, "target": TARGETS[kind],
      "target_reachable": max_ratio >= TARGETS[kind],
  }
  xla_floor = None
  if kind == "train_step":
    xla_floor = bound_fn(result["settings"], xla_flops, read_rate)["bound_cpu_s"]
  else:
    row["kernel_stream_rates"] = stream_rates
    xla_rates = {name: rate for name, rate in stream_rates.items() if name.startswith("jax_")}
    if cache_bytes is not None and weight_bytes(result) > cache_bytes and xla_rates:
      fastest = max(xla_rates, key=xla_rates.get)
      xla_floor = bound_fn(result["settings"], xla_flops, xla_rates[fastest])["bound_cpu_s"]
      row["xla_floor_stream_rate"] = fastest
  if xla_floor is not None:
    row.update({"xla_floor_cpu_s": xla_floor, "ours_over_xla_floor": medians["ours"] / xla_floor,
                "max_ratio_with_xla_kernels": peers[best_peer] / xla_floor,
                "target_reachable_with_xla_kernels": peers[best_peer] / xla_floor >= TARGETS[kind]})
  return row


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  cpu = harness.machine()
  rows = model_results(harness.RESULTS_DIR, cpu)
  if not rows:
    raise SystemExit(f"no float32 model benchmark result in {harness.RESULTS_DIR} was measured on this CPU "
                     f"({cpu['cpu_model']!r}, {cpu['cpu_id']}): run benchmarks/model_train_step.py and "
                     "model_decode.py first")
  sizes = sorted({weight_bytes(result) for _, _, result in rows})
  sides = [harness.Side("jax_matmul", "benchmarks.cpu_roofline:jax_matmul_side", {"size": MATMUL_SIZE}),
           harness.Side("torch_matmul", "benchmarks.cpu_roofline:torch_matmul_side", {"size": MATMUL_SIZE})]
  sides += [harness.Side(f"read[{n}]", "benchmarks.cpu_roofline:read_side", {"num_bytes": n}) for n in sizes]
  decodes = {gemv_key(r): r["settings"] for kind, _, r in rows if kind == "decode"}
  for key, settings in sorted(decodes.items()):
    for lib, layouts in (("jax", JAX_LAYOUTS), ("torch", TORCH_LAYOUTS)):
      for layout in layouts:
        sides.append(harness.Side(f"{lib}_gemv[{key}][{layout}]", f"benchmarks.cpu_roofline:{lib}_gemv_side",
                                  {"config": settings["config"], "batch": settings["batch_size"],
                                   "layout": layout}))
  result = harness.run_paired("cpu_roofline", sides, pairs=args.pairs, warmup=args.warmup, threads=args.threads,
                              cpus=args.cpus, settings=vars(args))
  # The best run of each side: a roofline is what the machine can do, not what it does on average.
  best = {name: min(side["cpu_s"]) for name, side in result["sides"].items()}
  flops = 2 * MATMUL_SIZE**3
  rates = {"matmul_flops_per_cpu_s": {lib: flops / best[f"{lib}_matmul"] for lib in ("jax", "torch")},
           "read_bytes_per_cpu_s": {n: n / best[f"read[{n}]"] for n in sizes}}
  gemv_bytes = {f"{lib}_gemv[{key}][{layout}]": 4 * sum(k * n for k, n in decode_weight_shapes(settings["config"]))
                for key, settings in decodes.items()
                for lib, layouts in (("jax", JAX_LAYOUTS), ("torch", TORCH_LAYOUTS)) for layout in layouts}
  rates["gemv_bytes_per_cpu_s"] = {name: num_bytes / best[name] for name, num_bytes in gemv_bytes.items()}
  rates["stream_bytes_per_cpu_s"] = fastest_streams(rates["read_bytes_per_cpu_s"], rates["gemv_bytes_per_cpu_s"],
                                                    gemv_bytes)
  peak = max(rates["matmul_flops_per_cpu_s"].values())
  xla_flops = rates["matmul_flops_per_cpu_s"]["jax"]

  def stream_rates(kind, r):
    if kind == "train_step":
      return {}
    return {name: rate for name, rate in rates["gemv_bytes_per_cpu_s"].items() if f"[{gemv_key(r)}]" in name}

  cache_bytes = last_level_cache_bytes(result["method"]["cpus"][0])
  rates["last_level_cache_bytes"] = cache_bytes
  result["rates"] = rates
  result["bounds"] = [bound_row(kind, path, r, peak,
                                rates["stream_bytes_per_cpu_s"][weight_bytes(r)]["bytes_per_cpu_s"],
                                xla_flops, stream_rates(kind, r), cache_bytes)
                      for kind, path, r in rows]
  print(f"peak float32 matmul: jax {rates['matmul_flops_per_cpu_s']['jax'] / 1e9:.1f}, "
        f"torch {rates['matmul_flops_per_cpu_s']['torch'] / 1e9:.1f} GFLOP per CPU-s; read: "
        + ", ".join(f"{n / 2**20:.0f} MiB at {r / 1e9:.1f} GB/s" for n, r in rates["read_bytes_per_cpu_s"].items())
        + "; fastest stream: " + ", ".join(f"{n / 2**20:.0f} MiB at {s['bytes_per_cpu_s'] / 1e9:.1f} GB/s ({s['side']})"
                                           for n, s in rates["stream_bytes_per_cpu_s"].items()))
  for row in result["bounds"]:
    print(f"{row['result']}: bound {row['bound_cpu_s']:.3f} CPU-s, ours {row['ours_median_cpu_s']:.3f} "
          f"({row['ours_over_bound']:.2f}x the bound), {row['best_peer']} {row['best_peer_median_cpu_s']:.3f}; "
          f"measured {row['measured_ratio_vs_best_peer']:.2f}x, at most {row['max_possible_ratio_vs_best_peer']:.2f}x "
          f"possible, target {row['target']}x {'reachable' if row['target_reachable'] else 'NOT reachable'}"
          + (f"; with XLA's kernels: floor {row['xla_floor_cpu_s']:.3f} CPU-s, at most "
             f"{row['max_ratio_with_xla_kernels']:.2f}x" if "xla_floor_cpu_s" in row else ""))
  for name, rate in rates["gemv_bytes_per_cpu_s"].items():
    print(f"{name}: {rate / 1e9:.1f} GB/s")
  if args.result != "none":
    print(f"wrote {harness.write_result(result, args.result)}")
  return result


if __name__ == "__main__":
  main()
