"""Tokens/s of the Beam tokenize job against raw ``sp.encode`` of the same text in one process.

    python -m benchmarks.tokenize_throughput [--num_docs=8000] [--vocab_size=700] \
        [--work_dir=/tmp/tokenize_bench] [--tokenizer=<tokenizer.model>] [--input=<dedupe dir>]

Without ``--input`` it writes synthetic documents (seeded, ~2 KB each) as a stage directory; without
``--tokenizer`` it trains one with ``pipelines.train_tokenizer``. The raw baseline encodes every
text with one batched ``sp.encode`` call (what the DoFn does per batch); the Beam number is the
whole job's wall time (read JSON, encode, group into shards, write TFRecords and stats) on the
runner given by the Beam flags (by default the DirectRunner in this process with one worker, so
both sides are one process). Both sides give SentencePiece the same ``--encode_threads`` (-1, its
default: one thread per core). Both are run ``--repeats`` times, interleaved, and the medians
are compared; it prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time

import sentencepiece as spm
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common
from pipelines import tokenize
from pipelines import train_tokenizer

_WORDS = (
    "the of and to in is for on with as by at from that this be are was it an or which data model "
    "language training token text page web source quality filter document search result user value "
    "function return class import table index query answer question number year time people city"
).split()


def synthetic_docs(num_docs: int, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  docs = []
  for i in range(num_docs):
    paragraphs = []
    for _ in range(rng.randint(2, 6)):
      words = [rng.choice(_WORDS) for _ in range(rng.randint(20, 80))]
      words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**6)))
      paragraphs.append(" ".join(words).capitalize() + ".")
    doc_id = f"{common.stable_hash(f'bench-{i}'):016x}"
    docs.append({"id": doc_id, "source": ("web", "docs")[i % 2], "text": "\n".join(paragraphs)})
  return docs


def write_stage_dir(path: str, docs: list[dict], num_shards: int = 4) -> None:
  os.makedirs(path, exist_ok=True)
  shards = [[] for _ in range(num_shards)]
  for doc in docs:
    shards[common.stable_hash(doc["id"]) % num_shards].append(common.dumps(doc))
  for i, lines in enumerate(shards):
    with open(common.shard_path(path, common.DOCS_PREFIX, i, num_shards), "w") as f:
      f.write("".join(line + "\n" for line in sorted(lines)))
  open(os.path.join(path, common.SUCCESS_MARKER), "w").close()


def read_texts(input_dir: str) -> list[str]:
  texts = []
  for path in common.stage_input_files(input_dir):
    with open(path) as f:
      texts.extend(json.loads(line)["text"] for line in f)
  return texts


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_docs", type=int, default=8000)
  parser.add_argument("--vocab_size", type=int, default=700, help="The synthetic text supports < 800.")
  parser.add_argument("--work_dir", default="/tmp/tokenize_bench")
  parser.add_argument("--tokenizer", help="Use this tokenizer.model instead of training one.")
  parser.add_argument("--input", help="Use this stage directory instead of synthetic documents.")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_shards", type=int, default=4)
  parser.add_argument("--encode_threads", type=int, default=-1, help="SentencePiece threads, both sides.")
  parser.add_argument("--repeats", type=int, default=3, help="Runs of each; medians are compared.")
  args, beam_args = parser.parse_known_args(argv)
  options = PipelineOptions(beam_args or ["--runner=DirectRunner", "--direct_num_workers=1"])

  input_dir = args.input
  if input_dir is None:
    input_dir = os.path.join(args.work_dir, "dedupe")
    shutil.rmtree(input_dir, ignore_errors=True)
    write_stage_dir(input_dir, synthetic_docs(args.num_docs))
  tokenizer = args.tokenizer
  if tokenizer is None:
    tok_dir = os.path.join(args.work_dir, "tokenizer")
    train_tokenizer.train_tokenizer(input_dir, tok_dir, args.vocab_size, options=options)
    tokenizer = os.path.join(tok_dir, train_tokenizer.MODEL_FILE)

  texts = read_texts(input_dir)
  sp = spm.SentencePieceProcessor(model_file=tokenizer)
  raw_times, beam_times = [], []
  for repeat in range(args.repeats):  # Interleaved, so that load from other processes hits both.
    start = time.perf_counter()
    raw_tokens = sum(len(ids) for ids in sp.encode(texts, num_threads=args.encode_threads))
    raw_times.append(time.perf_counter() - start)

    start = time.perf_counter()
    stats = tokenize.tokenize(
        input_dir, tokenizer, os.path.join(args.work_dir, "data"), num_shards=args.num_shards,
        batch_size=args.batch_size, num_threads=args.encode_threads, options=options,
    )
    beam_times.append(time.perf_counter() - start)
    beam_tokens = stats["train_tokens"] + stats["validation_tokens"]
    if beam_tokens != raw_tokens:
      raise RuntimeError(f"The job wrote {beam_tokens} tokens but raw encoding gives {raw_tokens}.")

  raw_seconds, beam_seconds = statistics.median(raw_times), statistics.median(beam_times)
  result = {
      "documents": len(texts),
      "characters": sum(len(t) for t in texts),
      "tokens": raw_tokens,
      "repeats": args.repeats,
      "raw_seconds": raw_times,
      "beam_seconds": beam_times,
      "raw_tokens_per_s": raw_tokens / raw_seconds,
      "beam_tokens_per_s": raw_tokens / beam_seconds,
      "ratio": raw_seconds / beam_seconds,
      "cpus": os.cpu_count(),
      "load_average_1min": os.getloadavg()[0],
  }
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
