r"""Examples/s of our benchmark evaluation against lm-evaluation-harness's HF backend, CPU.

  .venv/bin/python -m benchmarks.eval_vs_lm_eval --limit=20 --out=out/bench/eval.json

Same tiny Gemma (random weights, `--config`), exported to HF format, same task files (the bundled
ARC-Easy sample for multiple choice and TriviaQA 0-shot for generation, their records repeated to
`--limit` examples so that per-call set-up does not dominate). Each
side is warmed up on the first example (JAX compiles, torch loads) before it is timed; both run
in this process, one after the other. Prints and writes {side: {task: examples/s}}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--limit", type=int, default=20)
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--max_gen_toks", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)

  import dataclasses
  import jax
  import seqio
  from model import evaluate, hf_convert
  from model.config import get_config
  from model.models import DecoderOnlyModel
  from tasks.benchmarks import registry
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
  import eval_fixtures as ef  # The tokenizer helper the conformance test uses.

  tmp = tempfile.mkdtemp(prefix="eval-bench-")
  tokenizer = ef.train_tokenizer(os.path.join(tmp, "tokenizer.model"), ef.benchmark_texts())
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  model = DecoderOnlyModel(get_config(args.config, vocab_size=vocab.vocab_size, max_seq_len=512, dtype="float32"))
  params = model.init_params(jax.random.PRNGKey(0))
  hf_dir = os.path.join(tmp, "hf")
  hf_convert.export_hf(params, model.config, hf_dir)
  evaluate.export_hf_tokenizer(tokenizer, hf_dir)

  files = {}
  for name, relative in (("arc_easy", "arc_easy/test.jsonl"), ("triviaqa", "triviaqa/validation.jsonl")):
    with open(os.path.join(ef.BENCH_DIR, relative)) as f:
      lines = [l for l in f if l.strip()]
    files[name] = os.path.join(tmp, f"{name}.jsonl")
    with open(files[name], "w") as f:
      f.writelines(lines[i % len(lines)] for i in range(args.limit))
  cases = {"arc_easy": ("multiple_choice", 0), "triviaqa": ("generate_until", 0)}
  results = {"ours": {}, "lm_eval": {}}
  lm = evaluate.LanguageModel(model, params, vocab, 512, batch_size=args.batch_size)
  for name in cases:
    spec = dataclasses.replace(registry.BENCHMARKS[name], max_gen_toks=args.max_gen_toks)
    registry.BENCHMARKS[name] = spec
    info = registry.register_benchmark_tasks(vocab, ef.BENCH_DIR, [name], {name: 0}, limit=args.limit,
                                             files={name: files[name]})
    (task, entry), = info.items()
    evaluate.evaluate_task(lm, task, entry, log=lambda _: None)  # Warm-up: compiles.
    start = time.perf_counter()
    evaluate.evaluate_task(lm, task, entry, log=lambda _: None)
    results["ours"][name] = len(entry["records"]) / (time.perf_counter() - start)

  import lm_eval
  from lm_eval.models.huggingface import HFLM
  from lm_eval.tasks import TaskManager
  import yaml
  yaml_dir = os.path.join(tmp, "yamls")
  os.makedirs(yaml_dir)
  configs = {
      "bench_arc_easy": {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                         "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
                         "file": files["arc_easy"], "metric_list": [{"metric": "acc"}]},
      "bench_triviaqa": {"output_type": "generate_until", "doc_to_text": "Question: {{question}}?\nAnswer:",
                         "doc_to_target": "{{answer.aliases}}", "file": files["triviaqa"],
                         "generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False,
                                               "max_gen_toks": args.max_gen_toks},
                         "metric_list": [{"metric": "exact_match"}]},
  }
  for task, config in configs.items():
    path = config.pop("file")
    config.update(task=task, dataset_path="json", dataset_kwargs={"data_files": {"test": path}}, test_split="test")
    with open(os.path.join(yaml_dir, f"{task}.yaml"), "w") as f:
      yaml.safe_dump(config, f)
  hflm = HFLM(pretrained=hf_dir, tokenizer=hf_dir, device="cpu", dtype="float32", batch_size=args.batch_size,
              max_length=512)
  manager = TaskManager(include_path=yaml_dir)
  for name, task in (("arc_easy", "bench_arc_easy"), ("triviaqa", "bench_triviaqa")):
    lm_eval.simple_evaluate(model=hflm, tasks=[task], task_manager=manager, limit=1, bootstrap_iters=0)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=hflm, tasks=[task], task_manager=manager, limit=args.limit,
                                  bootstrap_iters=0, log_samples=True)
    results["lm_eval"][name] = len(out["samples"][task]) / (time.perf_counter() - start)

  print(json.dumps(results, indent=2, sort_keys=True))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"limit": args.limit, "config": args.config, "examples_per_s": results}, f, indent=2, sort_keys=True)
  return results


if __name__ == "__main__":
  main()
