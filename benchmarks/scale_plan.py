"""The cost of the data pipeline at Common Crawl scale, projected from measured per-stage rates.

Reads benchmarks/results/stage_memory.json (each stage run alone on this machine at 1x..100x the
sample: documents in, CPU seconds, output bytes) and benchmarks/results/shuffle_bytes.json (the
bytes each stage's GroupByKeys are given, per layout) and projects, per stage, the vCPU-hours, the
output and shuffle bytes and the peak memory per worker for a crawl of ``--pages`` pages and for the documents
that the paper's 6T-token mixture needs. Writes benchmarks/results/scale_plan.json and prints the
Markdown table that docs/scale.md quotes.

    .venv/bin/python -m benchmarks.scale_plan [--pages=3e9] [--tokens=6e12]

Stated assumptions (not measurements): every page reaches every stage (no drops before it: an upper
bound), and the rate at the largest measured scale holds beyond it (the per-run start-up cost is
then amortised; the 1x rate understates throughput). Output bytes per input document count
everything a stage writes (kept documents, rejects with their documents, stats), so stages that
drop much (dedupe on the repeated input, where 99 of 100 copies are near duplicates) write their
rejects at full size. The documents of the 6T-token column use the tokenize stage's tokens per
document with the project's tokenizer trained on the sample (a 4k vocabulary: more tokens per
document than Gemma's 256k one, so fewer documents than the 6T-token mixture really needs).
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks import harness

MEMORY_RESULT = os.path.join(harness.RESULTS_DIR, "stage_memory.json")
SHUFFLE_RESULT = os.path.join(harness.RESULTS_DIR, "shuffle_bytes.json")  # benchmarks/shuffle_bytes.py


def _pages_in(row: dict) -> int:
  """Documents a stage took in; for extract and the fused filter job, the HTTP responses (WARC
  request and metadata records are skipped as ``non_response_record``, ``extract.`` in the fused
  job's stats), so every stage is per page."""
  dropped = row["stats"].get("dropped", {})
  if row["stage"] == "extract":
    return row["stats"]["in"] - dropped.get("non_response_record", 0)
  if row["stage"] == "filter":
    return row["stats"]["in"] - dropped.get("extract.non_response_record", 0)
  return row["documents_in"]


DEFAULT_LAYOUT = "by_size"  # The rates and output bytes projected are the default layout's.
# Measured but not projected: the crawl's rate is that of a loopback site; a real crawl's is set
# by its politeness delays per origin (docs/crawl.md), not by CPU, and Common Crawl is not crawled.
NOT_PROJECTED = ("crawl",)


def _layout(row: dict) -> str:
  return row.get("shard_layout", DEFAULT_LAYOUT)  # Results written before layouts existed.


def peak_rss_by_layout(rows: list[dict], stage: str) -> dict[str, dict[str, float]]:
  """``{layout: {scale: peak RSS MiB}}`` of one stage."""
  peaks: dict[str, dict[str, float]] = {}
  for row in rows:
    if row["stage"] == stage:
      peaks.setdefault(_layout(row), {})[str(row["scale"])] = row["peak_rss_mib"]
  return peaks


def shuffle_per_page(shuffle_rows: list[dict], stage: str) -> dict[str, float]:
  """``{layout: shuffled bytes per page (input document)}`` of one stage."""
  return {_layout(row): row["shuffled_bytes"] / max(_pages_in(row), 1)
          for row in shuffle_rows if row["stage"] == stage}


def project(rows: list[dict], pages: float, tokens: float, shuffle_rows: list[dict] = ()) -> dict:
  largest: dict[str, dict] = {}
  for row in rows:
    stage = row["stage"]
    if stage in NOT_PROJECTED:
      continue
    if _layout(row) == DEFAULT_LAYOUT and (stage not in largest
                                           or row["scale"] > largest[stage]["scale"]):
      largest[stage] = row
  tok = largest.get("tokenize", {}).get("stats", {})
  tokens_per_doc = (tok.get("train_tokens", 0) + tok.get("validation_tokens", 0)) / max(
      tok.get("kept", 0), 1)
  docs_for_tokens = tokens / tokens_per_doc if tokens_per_doc else None
  stages = []
  for stage, row in largest.items():
    documents = _pages_in(row)
    rate = documents / row["cpu_s"]  # documents (pages) per CPU-second, start-up included
    bytes_per_doc = row.get("output_bytes", 0) / max(documents, 1)  # kept docs + rejects + stats
    stages.append({
        "stage": stage,
        "measured_at_scale": row["scale"],
        "documents_measured": documents,
        "docs_per_cpu_s": round(rate, 1),
        "vcpu_hours_per_snapshot": round(pages / rate / 3600),
        "vcpu_hours_for_6t_tokens": round(docs_for_tokens / rate / 3600) if docs_for_tokens else None,
        "output_bytes_per_input_doc": round(bytes_per_doc),
        "output_tib_per_snapshot": round(pages * bytes_per_doc / 2**40, 1),
        "peak_rss_mib": peak_rss_by_layout(rows, stage),
        "shuffle_bytes_per_input_doc": {k: round(v) for k, v in shuffle_per_page(shuffle_rows, stage).items()},
        "shuffle_tib_per_snapshot": {k: round(pages * v / 2**40, 1)
                                     for k, v in shuffle_per_page(shuffle_rows, stage).items()},
    })
  return {"pages": pages, "tokens": tokens, "tokens_per_document": round(tokens_per_doc, 1),
          "documents_for_tokens": docs_for_tokens, "stages": stages,
          "source": os.path.relpath(MEMORY_RESULT, os.path.dirname(harness.RESULTS_DIR)),
          "shuffle_source": os.path.relpath(SHUFFLE_RESULT, os.path.dirname(harness.RESULTS_DIR))}


def markdown(plan: dict) -> str:
  lines = ["| stage | docs / CPU-s (at scale) | vCPU-hours, one snapshot | vCPU-hours, 6T tokens | "
           "output bytes / input doc | output, one snapshot | shuffle bytes / input doc | "
           "shuffle, one snapshot | peak RSS MiB by scale |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
  for s in plan["stages"]:
    rss = "; ".join(
        f"{layout} " + ", ".join(f"{k}x: {v:.0f}" for k, v in sorted(peaks.items(), key=lambda kv: int(kv[0])))
        for layout, peaks in sorted(s["peak_rss_mib"].items()))
    for_tokens = s["vcpu_hours_for_6t_tokens"]
    for_tokens = f"{for_tokens:,}" if for_tokens is not None else "n/a"
    per_doc = "; ".join(f"{layout} {v:,}" for layout, v in sorted(s["shuffle_bytes_per_input_doc"].items()))
    per_snapshot = "; ".join(f"{layout} {v} TiB" for layout, v in sorted(s["shuffle_tib_per_snapshot"].items()))
    lines.append(f"| {s['stage']} | {s['docs_per_cpu_s']} ({s['measured_at_scale']}x) | "
                 f"{s['vcpu_hours_per_snapshot']:,} | {for_tokens} | "
                 f"{s['output_bytes_per_input_doc']:,} | {s['output_tib_per_snapshot']} TiB | "
                 f"{per_doc or 'n/a'} | {per_snapshot or 'n/a'} | {rss} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pages", type=float, default=3e9, help="pages of one crawl snapshot")
  parser.add_argument("--tokens", type=float, default=6e12, help="tokens of the training mixture")
  parser.add_argument("--result", default=os.path.join(harness.RESULTS_DIR, "scale_plan.json"))
  args = parser.parse_args(argv)
  with open(MEMORY_RESULT) as f:
    rows = json.load(f)["rows"]
  shuffle_rows = []
  if os.path.exists(SHUFFLE_RESULT):
    with open(SHUFFLE_RESULT) as f:
      shuffle_rows = json.load(f)["rows"]
  plan = project(rows, args.pages, args.tokens, shuffle_rows)
  print(markdown(plan))
  if args.result != "none":
    print(f"wrote {harness.write_result(plan, args.result)}")
  return plan


if __name__ == "__main__":
  main()
