r"""How much of its training data a model reproduces (the Gemma paper's memorization study).

  python -m model.memorization --gin_file=gin/runs/memorization.gin --gin_file=gin/models/small.gin \
      --gin.CHECKPOINT="'out/model/checkpoints/300'" --gin.DATA_DIR="'out/demo/data'" \
      --gin.OUTPUT_DIR="'out/memorization'"

For every source of DATA_DIR, ``num_docs`` documents are sampled by a hash of their id from the
token cache (so a prefix is exactly the tokens the model trained on, with BOS first as the
training examples have it). The model continues ``[BOS] + doc[:prefix_len]`` greedily for
``suffix_len`` tokens with no stop token (EOS and end-of-turn do not end it); the continuation is

* *exactly* memorized when it equals ``doc[prefix_len:prefix_len + suffix_len]``;
* *approximately* memorized when their token edit distance is at most 10% of ``suffix_len``.

Rates are reported per source and as a total weighted by each source's share of training tokens.
The same run on the validation split (documents the model never saw) is the non-member control.
Memorized continuations are searched for personal data with ``pipelines.pii``'s detectors, counted
by type. Writes ``memorization.json``, which the data report (``pipelines.report``, also inside the
run report) draws, and ``memorization.svg``, the same rates plot on its own.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import time
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from model import gin_utils

if __name__ == "__main__":
  from model import memorization as _memorization_module
  gin_utils.run(_memorization_module.main)


def _stable_hash(text: str) -> int:
  from pipelines.common import stable_hash
  return stable_hash(text)


def cache_documents(data_dir: str, split: str) -> dict[str, list[tuple[str, list[int]]]]:
  """{source: [(id, token ids)]} of one split of DATA_DIR's token cache (no BOS/EOS stored)."""
  import tensorflow as tf
  from tasks import cache_layout, registry
  sources = registry.read_sources(data_dir)
  cache_dir = os.path.join(data_dir, sources.get("cache_dir", cache_layout.CACHE_DIR))
  features = {"targets": tf.io.VarLenFeature(tf.int64), "id": tf.io.FixedLenFeature([], tf.string)}
  out = {}
  for source, entry in sorted(sources["sources"].items()):
    files = sorted(glob.glob(os.path.join(cache_dir, entry["task"], f"{split}.tfrecord-*")))
    docs = []
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
      ex = tf.io.parse_single_example(record, features)
      docs.append((ex["id"].numpy().decode(), tf.sparse.to_dense(ex["targets"]).numpy().tolist()))
    out[source] = docs
  return out


def token_shares(data_dir: str) -> dict[str, float]:
  """Each source's share of the training tokens (sources.json)."""
  from tasks import registry
  sources = registry.read_sources(data_dir)["sources"]
  tokens = {s: e["splits"].get("train", {}).get("tokens", 0) for s, e in sources.items()}
  total = sum(tokens.values())
  return {s: (t / total if total else 0.0) for s, t in sorted(tokens.items())}


def sample_documents(docs: Sequence[tuple[str, list[int]]], num_docs: int, min_tokens: int,
                     salt: str = "memorization") -> list[tuple[str, list[int]]]:
  """Up to ``num_docs`` documents with at least ``min_tokens`` tokens, in the order of a hash of
  their id (the same sample on every run, whatever order the cache is read in)."""
  long_enough = [d for d in docs if len(d[1]) >= min_tokens]
  return sorted(long_enough, key=lambda d: (_stable_hash(f"{salt}/{d[0]}"), d[0]))[:num_docs]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
  """Levenshtein distance between two token sequences."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def continue_greedily(model, params, prompts: Sequence[Sequence[int]], length: int,
                      batch_size: int = 8) -> list[list[int]]:
  """``length`` greedy tokens after each prompt; no token stops it (EOS / end-of-turn included)."""
  from model import decoding
  params = decoding.decoding_params(params)  # Made once for every batch.
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = [list(p) for p in prompts[start:start + batch_size]]
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    width = max(len(p) for p in chunk)
    tokens = np.zeros((batch_size, width), np.int32)
    for i, p in enumerate(chunk):
      tokens[i, width - len(p):] = p
    generated, _ = decoding.generate(model.config, params, jnp.asarray(tokens), jax.random.PRNGKey(0),
                                     max_decode_len=length, sampler=decoding.Sampler("greedy"),
                                     stop_tokens=())
    out.extend(np.asarray(jax.device_get(generated))[:real].tolist())
  return out


def measure(model, params, vocab, docs_by_source: Mapping[str, Sequence[tuple[str, list[int]]]],
            num_docs: int, prefix_len: int = 50, suffix_len: int = 50, approx_fraction: float = 0.1,
            batch_size: int = 8, log=print) -> dict[str, Any]:
  """Per source: sampled docs, exact / approximate memorization rates, PII types in what is memorized."""
  from pipelines import pii
  from tasks.special_tokens import special_tokens
  bos = special_tokens(vocab).bos
  limit = int(approx_fraction * suffix_len)
  out = {}
  for source, docs in sorted(docs_by_source.items()):
    start = time.monotonic()
    sample = sample_documents(docs, num_docs, prefix_len + suffix_len)
    prompts = [[bos] + ids[:prefix_len] for _, ids in sample]
    truths = [ids[prefix_len:prefix_len + suffix_len] for _, ids in sample]
    generated = continue_greedily(model, params, prompts, suffix_len, batch_size)
    exact, approx, pii_types, memorized_ids = 0, 0, collections.Counter(), []
    for (doc_id, _), truth, got in zip(sample, truths, generated):
      distance = edit_distance(got, truth)
      exact += got == truth
      if distance <= limit:
        approx += 1
        memorized_ids.append(doc_id)
        pii_types.update(m.type for m in pii.find_pii(vocab.decode(got)))
    n = len(sample)
    out[source] = {"documents": n, "exact": exact, "approximate": approx,
                   "exact_rate": exact / n if n else 0.0, "approximate_rate": approx / n if n else 0.0,
                   "pii_in_memorized": dict(sorted(pii_types.items())), "memorized_ids": memorized_ids}
    log(f"memorization {source}: {n} docs in {time.monotonic() - start:.1f}s, exact {exact}, approximate {approx}")
  return out


def weighted_total(per_source: Mapping[str, Mapping[str, Any]], shares: Mapping[str, float]) -> dict[str, float]:
  """Rates weighted by each source's token share (over sources that had documents to sample)."""
  used = {s: shares.get(s, 0.0) for s, r in per_source.items() if r["documents"]}
  total = sum(used.values())
  if not total:
    return {"exact_rate": 0.0, "approximate_rate": 0.0}
  return {key: sum(per_source[s][key] * w for s, w in used.items()) / total
          for key in ("exact_rate", "approximate_rate")}


@gin.configurable
def memorization(*, checkpoint: str, data_dir: str, output_dir: str, model=None, num_docs: int = 100,
                 prefix_len: int = 50, suffix_len: int = 50, batch_size: int = 8) -> dict[str, Any]:
  """Members (train split) vs non-members (validation split); writes memorization.json."""
  from model import evaluate
  from tasks import registry
  vocab = registry.get_vocabulary(data_dir)
  lm_model, params, hf_config = evaluate.load_checkpoint(checkpoint, model)
  evaluate.check_tokenizer(lm_model.config, vocab, os.path.join(data_dir, "tokenizer.model"), checkpoint, hf_config)
  shares = token_shares(data_dir)
  report = {"checkpoint": checkpoint, "data_dir": data_dir, "num_docs": num_docs,
            "prefix_len": prefix_len, "suffix_len": suffix_len, "token_shares": shares}
  for split, key in (("train", "members"), ("validation", "non_members")):
    per_source = measure(lm_model, params, vocab, cache_documents(data_dir, split), num_docs,
                         prefix_len, suffix_len, batch_size=batch_size)
    report[key] = {"per_source": per_source, "total": weighted_total(per_source, shares)}
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "memorization.json"), "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  plot_rates(report, os.path.join(output_dir, "memorization.svg"))
  for key in ("members", "non_members"):
    t = report[key]["total"]
    print(f"{key}: exact {100 * t['exact_rate']:.2f}%  approximate {100 * t['approximate_rate']:.2f}%", flush=True)
  return report


def plot_rates(report: Mapping[str, Any], path: str) -> None:
  """The data report's plot of exact / approximate rates per source, members beside non-members."""
  from pipelines import report as data_report
  with open(path, "w", encoding="utf-8") as f:
    f.write(data_report.plot_memorization_rates(dict(report)) + "\n")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  gin_utils.parse_gin_flags()
  memorization()
