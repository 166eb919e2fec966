"""CPU time of the Beam tokenize job against raw SentencePiece encoding of the same text, paired.

    python -m benchmarks.tokenize_throughput [--num_docs 8000 32000 64000] [--vocab_size=4096]
        [--work_dir=/tmp/tokenize_bench] [--tokenizer=<tokenizer.model>] [--pairs=7] [--cpus=1]

Input: real text. The bundled sample crawl is run through ``pipelines.extract`` once and its texts
are cut into runs of whole lines of at most ``--max_chars`` characters (web-page-sized documents,
so that 64k of them fit a benchmark run on a shared 2-core machine); each size's documents are
those pieces in order, then copies with their lines shuffled by a seeded RNG
(``pipeline_throughput.documents``), written as a finished stage directory (two sources). Without
``--tokenizer`` a tokenizer is trained on that text with ``pipelines.train_tokenizer``.

Sides, each in its own pinned one-thread worker (benchmarks/harness.py), interleaved:

  sentencepiece   ``SentencePieceProcessor.encode(texts, num_threads=1)`` of every text, already in
                  memory (the least any tokenize job has to do).
  tokenize job    ``pipelines.tokenize.tokenize``: the whole Beam job (DirectRunner, one worker)
                  reading the JSONL shards, encoding, building tf.train.Examples, grouping into
                  shards, writing TFRecords, stats and sources.json.
  tokenize job [1 doc]  the same job on a one-document input: its fixed start-up cost (pipeline
                  construction, runner, file set-up), reported apart.

The headline is the CPU-time ratio job / sentencepiece per pair (reported inverted as
sentencepiece / job, so 1.0 means the job costs no more than raw encoding); the ratio with the
fixed start-up cost subtracted is reported beside it. Both sides' token counts must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics

from benchmarks import harness

SOURCES = ("web", "docs")


def pieces(texts: list[str], max_chars: int) -> list[str]:
  """The texts cut into runs of whole lines of at most `max_chars` characters (a longer line stays whole)."""
  out = []
  for text in texts:
    current = []
    for line in text.split("\n"):
      if current and sum(len(x) + 1 for x in current) + len(line) > max_chars:
        out.append("\n".join(current))
        current = []
      current.append(line)
    if current:
      out.append("\n".join(current))
  return [p for p in out if p.strip()]


def write_docs(path: str, num_docs: int, texts: list[str], seed: int = 0) -> None:
  """A finished stage directory of `num_docs` real-text documents (see the module docstring)."""
  from benchmarks import pipeline_throughput
  from pipelines import common
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  num_shards = 4
  shards = [[] for _ in range(num_shards)]
  for i, text in enumerate(pipeline_throughput.documents(texts, num_docs, seed)):
    doc_id = f"{common.stable_hash(f'bench-{i}'):016x}"
    doc = {"id": doc_id, "source": SOURCES[i % len(SOURCES)], "text": text}
    shards[common.stable_hash(doc_id) % num_shards].append(common.dumps(doc))
  for i, lines in enumerate(shards):
    with open(common.shard_path(path, common.DOCS_PREFIX, i, num_shards), "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in sorted(lines)))
  open(os.path.join(path, common.SUCCESS_MARKER), "w").close()


def read_texts(input_dir: str) -> list[str]:
  from pipelines import common
  texts = []
  for path in common.stage_input_files(input_dir):
    with open(path, encoding="utf-8") as f:
      texts.extend(json.loads(line)["text"] for line in f)
  return texts


def raw_side(input_dir: str, tokenizer: str):
  """Worker factory: run() encodes every text of input_dir with one sp.encode call; returns the token count."""
  import sentencepiece as spm
  texts = read_texts(input_dir)
  sp = spm.SentencePieceProcessor(model_file=tokenizer)

  def run():
    return sum(len(ids) for ids in sp.encode(texts, num_threads=1))

  return run, {"documents": len(texts), "characters": sum(len(t) for t in texts)}


def job_side(input_dir: str, tokenizer: str, output_dir: str, batch_size: int, num_shards: int):
  """Worker factory: run() is one whole tokenize job; returns the tokens it wrote."""
  from apache_beam.options.pipeline_options import PipelineOptions
  from pipelines import tokenize

  options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"])

  def run():
    stats = tokenize.tokenize(input_dir, tokenizer, output_dir, num_shards=num_shards, batch_size=batch_size,
                              num_threads=1, options=options)
    return stats["train_tokens"] + stats["validation_tokens"]

  return run


def prepare(args) -> tuple[list[str], str]:
  """The sample's extracted texts and a tokenizer path (trained on them unless --tokenizer)."""
  from benchmarks import pipeline_throughput
  from pipelines import train_tokenizer
  texts = pieces(pipeline_throughput.read_texts(pipeline_throughput.extract_sample(args.work_dir)), args.max_chars)
  if args.tokenizer:
    return texts, args.tokenizer
  tok_dir = os.path.join(args.work_dir, f"tokenizer_{args.vocab_size}")
  model = os.path.join(tok_dir, train_tokenizer.MODEL_FILE)
  if not os.path.exists(model):
    corpus = os.path.join(args.work_dir, "tokenizer_corpus")
    write_docs(corpus, len(texts), texts)
    train_tokenizer.train_tokenizer(corpus, tok_dir, args.vocab_size)
  return texts, model


def summarize(result: dict) -> dict:
  """CPU-time ratios sentencepiece / job per pair, whole job and with the fixed start-up cost taken out."""
  raw = result["sides"]["sentencepiece"]["cpu_s"]
  job = result["sides"]["tokenize job"]["cpu_s"]
  fixed = statistics.median(result["sides"]["tokenize job [1 doc]"]["cpu_s"])
  whole = harness.pair_ratios(raw, job)
  net = harness.pair_ratios(raw, [max(j - fixed, 1e-9) for j in job])
  return {"fixed_startup_cpu_s": fixed, "cpu_ratio_raw_over_job": harness.spread(whole),
          "cpu_ratio_raw_over_job_without_startup": harness.spread(net),
          "per_pair_raw_over_job": whole, "per_pair_raw_over_job_without_startup": net}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_docs", type=int, nargs="+", default=[8000, 32000, 64000])
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--work_dir", default="/tmp/tokenize_bench")
  parser.add_argument("--tokenizer", help="use this tokenizer.model instead of training one")
  parser.add_argument("--max_chars", type=int, default=1500,
                      help="documents are runs of whole lines of the sample's texts up to this many characters")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_shards", type=int, default=4)
  parser.add_argument("--smoke", action="store_true", help="allow fewer than harness.MIN_PAIRS rounds (tests)")
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  texts, tokenizer = prepare(args)
  one_doc = os.path.join(args.work_dir, "docs_1")
  write_docs(one_doc, 1, texts)
  results = []
  for num_docs in args.num_docs:
    input_dir = os.path.join(args.work_dir, f"docs_{num_docs}")
    write_docs(input_dir, num_docs, texts)
    job = dict(tokenizer=tokenizer, batch_size=args.batch_size, num_shards=args.num_shards)
    sides = [
        harness.Side("sentencepiece", "benchmarks.tokenize_throughput:raw_side",
                     {"input_dir": input_dir, "tokenizer": tokenizer}),
        harness.Side("tokenize job", "benchmarks.tokenize_throughput:job_side",
                     {**job, "input_dir": input_dir, "output_dir": os.path.join(args.work_dir, f"out_{num_docs}")}),
        harness.Side("tokenize job [1 doc]", "benchmarks.tokenize_throughput:job_side",
                     {**job, "input_dir": one_doc, "output_dir": os.path.join(args.work_dir, "out_1")}),
    ]
    name = f"tokenize_{num_docs}docs"
    result = harness.run_paired(name, sides, pairs=args.pairs, warmup=args.warmup, threads=args.threads,
                                cpus=args.cpus, work_per_run=num_docs, unit="docs",
                                settings={**vars(args), "num_docs": num_docs}, baseline="sentencepiece",
                                allow_few_pairs=args.smoke)
    raw_tokens = set(result["sides"]["sentencepiece"]["values"])
    job_tokens = set(result["sides"]["tokenize job"]["values"])
    if len(raw_tokens) != 1 or raw_tokens != job_tokens:
      raise SystemExit(f"token counts differ: sentencepiece {sorted(raw_tokens)}, job {sorted(job_tokens)}")
    result["tokens"] = raw_tokens.pop()
    result["summary"] = summarize(result)
    harness.print_summary(result)
    s = result["summary"]
    print(f"{name}: {result['tokens']} tokens; fixed start-up {s['fixed_startup_cpu_s']:.2f} CPU s; CPU ratio "
          f"sentencepiece/job median {s['cpu_ratio_raw_over_job']['median']:.2f} (min "
          f"{s['cpu_ratio_raw_over_job']['min']:.2f}, max {s['cpu_ratio_raw_over_job']['max']:.2f}); without "
          f"start-up {s['cpu_ratio_raw_over_job_without_startup']['median']:.2f}", flush=True)
    if args.result != "none":
      path = args.result if args.result and len(args.num_docs) == 1 else None
      print(f"wrote {harness.write_result(result, path)}", flush=True)
    results.append(result)
  return results


if __name__ == "__main__":
  main()
