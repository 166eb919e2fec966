r"""Conversation data -> seqio caches for SFT, the reward model and RLHF (Gemma's dialogue format).

    python -m pipelines.chat_data --input='data/chat/*.jsonl' --tokenizer=<tokenizer.model> \
        --output_dir=<chat data dir> [--max_length=256] [--validation_fraction=0.1] [--source=NAME] \
        [--shard_layout=by_size|per_input] [--num_buckets=0] [--num_shards=N] \
        [--num_validation_shards=N] [--num_reject_shards=N] [--target_shard_bytes=B]

Each input line is one JSON object in a format people already have:

* ``{"messages": [{"role", "content"}, ...]}`` and ``{"prompt", "completion"}``: SFT examples;
* ``{"prompt", "chosen", "rejected"}`` (prompt as text or as messages): preference pairs.

Per record, in order: parse and classify (``bad_json``, ``bad_record``, ``unknown_format``);
normalise with `tasks.chat_template.normalize` (its reasons: ``non_alternating``,
``system_only``, ``empty_response``, ``empty_turn``, ...; SFT records must end with a model turn:
``no_response``); ``chosen_equals_rejected``; PII redaction of every turn (`pipelines.pii.redact`,
the counts go into the record) and ``too_much_pii`` by the PII stage's rule over the whole
conversation; ``toxic`` if a model turn (an SFT example's, a pair's chosen answer) scores above
``--toxicity_threshold`` (`pipelines.toxicity.score`). User turns and rejected answers are not
filtered: a toxic request with a good answer, or a toxic answer as the rejected side of a pair, is
what teaches a model to decline (and the document classifier over-scores short questions with
"you"); tokenize (`tasks.chat_template.tokenize_conversation`) and
``too_long``: an example longer than ``--max_length`` tokens including BOS is rejected, never
truncated (a cut answer would teach the model to stop mid-sentence or lose its terminator);
finally exact duplicates (`pipelines.dedupe.mark_exact_duplicates` over the rendered
conversation; ``exact_duplicate``).

Output (the layout of `pipelines.tokenize`, whose writer it reuses): ``cache/gf_chat_<S>/``
(features ``targets``, ``loss_mask``) and ``cache/gf_pref_<S>/`` (``prompt``, ``chosen``,
``rejected``), all without BOS (the Tasks add it; see `tasks.chat_tasks`), split by a hash of the
record id; ``sources.json`` with ``"format": "chat"``, ``tokenizer.model``, ``rejects/``,
``stats.json`` (``in == kept + dropped``, also Beam counters in namespace ``chat_data``) and
``_SUCCESS``. The source ``S`` is the input file's name up to its first dot, or ``--source``.

Two layouts, the same bytes in every output file. The default (``--shard_layout=by_size``) dedupes
and groups examples by shard with Beam shuffles, which Beam's local runner holds in memory, so a
local run's peak grows with the input. ``--shard_layout=per_input`` (pipelines/chat_data_shardwise.py)
runs the same DoFns and the same duplicate decision (``dedupe.exact_decision``) but shuffles
through spill files (pipelines/spill.py): one DoFn call per input file, then per bucket of exact
hashes, per bucket of ids (``--num_buckets``, default one per MiB of input), and per output
shard, so a call holds one input file's records or one bucket's, never the input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from typing import Any, Sequence

import apache_beam as beam
import sentencepiece as spm
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common
from pipelines import dedupe
from pipelines import pii
from pipelines import tokenize
from pipelines import toxicity
from pipelines import train_tokenizer
from tasks import chat_tasks
from tasks import chat_template as ct

STAGE = "chat_data"
KIND_PREFIX = {chat_tasks.SFT_KIND: "chat_", chat_tasks.PREFERENCE_KIND: "pref_"}
_INT_FEATURE = {"dtype": "int32", "shape": [None]}
FEATURES_INFO = {
    chat_tasks.SFT_KIND: {"id": {"dtype": "string", "shape": []},
                          **{k: _INT_FEATURE for k in chat_tasks.SFT_FEATURES}},
    chat_tasks.PREFERENCE_KIND: {"id": {"dtype": "string", "shape": []},
                                 **{k: _INT_FEATURE for k in chat_tasks.PREFERENCE_FEATURES}},
}


def source_of(path: str) -> str:
  return os.path.basename(path).split(".")[0]


def record_id(record: dict, line: bytes) -> str:
  """The record's own string ``id``, else a hash of the line (identical lines are duplicates)."""
  if isinstance(record.get("id"), str) and record["id"]:
    return record["id"]
  return hashlib.blake2b(line, digest_size=8).hexdigest()


def classify(record: dict) -> tuple[str, list, list | None]:
  """(kind, messages, rejected messages or None) of a parsed record, or ConversationError."""
  if "chosen" in record or "rejected" in record:
    if "prompt" not in record or "chosen" not in record or "rejected" not in record:
      raise ct.ConversationError("unknown_format", "a preference pair needs prompt, chosen and rejected")
    return (chat_tasks.PREFERENCE_KIND, ct.with_response(record["prompt"], record["chosen"]),
            ct.with_response(record["prompt"], record["rejected"]))
  if "messages" in record:
    return chat_tasks.SFT_KIND, record["messages"], None
  if "prompt" in record and "completion" in record:
    return chat_tasks.SFT_KIND, ct.with_response(record["prompt"], record["completion"]), None
  raise ct.ConversationError("unknown_format", f"expected messages, prompt+completion or prompt+chosen+rejected; "
                             f"got keys {sorted(record)[:10]}")


def redact_turns(turns: list[ct.Turn], counts: dict[str, int]) -> list[ct.Turn]:
  out = []
  for t in turns:
    text, found = pii.redact(t.content)
    for k, n in found.items():
      counts[k] = counts.get(k, 0) + n
    out.append(ct.Turn(t.role, text))
  return out


def int_example(doc_id: str, features: dict[str, list[int]]) -> bytes:
  """A tf.train.Example (bytes ``id`` + int64 lists), serialized deterministically (sorted keys)."""
  feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc_id.encode("utf-8")]))}
  for key, values in features.items():
    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


class PrepareConversation(beam.DoFn):
  """(file, line) -> a kept record {id, url, text, source, kind, features, pii, scores} or a reject."""

  def __init__(self, model_proto: bytes, max_length: int, toxicity_threshold: float,
               pii_config: pii.PiiConfig, source: str | None):
    self._model_proto = model_proto
    self._max_length = max_length
    self._toxicity_threshold = toxicity_threshold
    self._pii_config = pii_config
    self._source = source

  def setup(self):
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(self._model_proto)
    ct.chat_ids(self._sp)  # A tokenizer without turn pieces is a configuration error.

  @common.per_element(STAGE, "bad_record")
  def process(self, element):
    path, line = element
    beam.metrics.Metrics.counter(STAGE, "in").inc()
    raw = line.decode("utf-8", "backslashreplace")
    try:
      record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
      yield common.reject(STAGE, "bad_json", {"id": "", "raw": raw[:1000]}, error=common.error_text(e))
      return
    if not isinstance(record, dict):
      yield common.reject(STAGE, "bad_record", {"id": "", "raw": raw[:1000]}, error="not a JSON object")
      return
    doc_id = record_id(record, line)
    doc = {"id": doc_id, "raw": raw[:1000]}
    try:
      kind, messages, rejected = classify(record)
      turns = ct.normalize(messages, require_response=True)
      rejected_turns = ct.normalize(rejected, require_response=True) if rejected is not None else None
      if rejected_turns is not None and rejected_turns == turns:
        raise ct.ConversationError("chosen_equals_rejected", "chosen and rejected are the same answer")
    except ct.ConversationError as e:
      yield common.reject(STAGE, e.reason, doc, error=str(e))
      return
    counts: dict[str, int] = {}
    turns = redact_turns(turns, counts)
    rejected_turns = redact_turns(rejected_turns, counts) if rejected_turns is not None else None
    text = ct.render(turns) + (ct.render(rejected_turns) if rejected_turns else "")
    hits, words = sum(counts.values()), len(text.split())
    if self._pii_config.too_much(hits, words):
      yield common.reject(STAGE, "too_much_pii", doc, hits=hits, words=words)
      return
    # What the model is taught to say: the model turns of an SFT example, a pair's chosen answer.
    tox = max(round(toxicity.score(t.content), 6) for t in turns if t.role == ct.MODEL)
    if tox > self._toxicity_threshold:
      yield common.reject(STAGE, "toxic", doc, toxicity=tox)
      return
    if kind == chat_tasks.SFT_KIND:
      ids, mask = ct.tokenize_conversation(turns, self._sp, add_bos=False)
      features = {"targets": ids, chat_tasks.LOSS_MASK: mask}
      length = len(ids) + 1
    else:
      prompt = ct.tokenize_conversation(turns[:-1], self._sp, add_generation_prompt=True, add_bos=False)[0]
      # Up to and including the response's <end_of_turn>: the reward is read at the last token.
      chosen = ct.tokenize_conversation(turns, self._sp, add_bos=False)[0][:-len(self._sp.encode("\n"))]
      rejected_ids = ct.tokenize_conversation(rejected_turns, self._sp, add_bos=False)[0][:-len(self._sp.encode("\n"))]
      features = {"prompt": prompt, "chosen": chosen, "rejected": rejected_ids}
      length = max(len(chosen), len(rejected_ids)) + 1
    if length > self._max_length:
      yield common.reject(STAGE, "too_long", doc, tokens=length, max_length=self._max_length)
      return
    yield {"id": doc_id, "url": "", "text": text, "source": self._source or source_of(path), "kind": kind,
           "features": features, "pii": counts, "scores": {"toxicity": tox}}


def _route_duplicates(doc_and_mark):
  doc, mark = doc_and_mark
  if mark is None:
    yield common.keep(STAGE, doc)
  else:
    details = {k: v for k, v in mark.items() if k != "reason"}
    yield common.reject(STAGE, mark["reason"], {"id": doc["id"], "text": doc["text"]}, **details)


class ToShard(beam.DoFn):
  """kept record -> ((task, split, shard), (id, source key, tokens, Example)), tokenize's writer input."""

  def __init__(self, validation_fraction: float, num_shards: dict[str, int]):
    self._validation_fraction = validation_fraction
    self._num_shards = num_shards

  def process(self, doc):
    key = KIND_PREFIX[doc["kind"]] + doc["source"]
    split = tokenize.assign_split(doc["id"], self._validation_fraction)
    shard = tokenize.assign_shard(doc["id"], self._num_shards[split])
    features = doc["features"]
    tokens = len(features["targets"]) if "targets" in features else len(features["chosen"]) + len(features["rejected"])
    yield (tokenize.task_name(key), split, shard), (doc["id"], key, tokens, int_example(doc["id"], features))


def _write_sources(entries, directory, model_proto, validation_fraction, shards, max_length):
  sp = train_tokenizer.check_tokenizer(model_proto, tokenize.TOKENIZER_FILE)
  record = {
      "format": chat_tasks.DATA_FORMAT,
      "tokenizer": tokenize.TOKENIZER_FILE,
      "tokenizer_sha256": hashlib.sha256(model_proto).hexdigest(),
      "vocab_size": sp.vocab_size(),
      "special_ids": {"pad": sp.pad_id(), "eos": sp.eos_id(), "bos": sp.bos_id(), "unk": sp.unk_id()},
      "validation_fraction": validation_fraction,
      "num_shards": shards,
      "max_length": max_length,
      "cache_dir": tokenize.CACHE_DIR,
      "sources": {e["source"]: {k: v for k, v in e.items() if k != "source"} for e in entries},
  }
  tokenize._write_json(FileSystems.join(directory, tokenize.SOURCES_FILE), record)


def _write_stats(items, directory):
  stats = common.make_stats(STAGE, items)
  for kind in KIND_PREFIX:
    stats.setdefault(f"kept_{kind}", 0)
  tokenize._write_json(FileSystems.join(directory, common.STATS_FILE), stats)


def _with_kind(entry):
  kind = next(k for k, prefix in KIND_PREFIX.items() if entry["source"].startswith(prefix))
  return dict(entry, kind=kind)


def chat_data(input_pattern: str, tokenizer: str, output_dir: str, max_length: int = 256,
              validation_fraction: float = 0.1, num_shards: int = 0, source: str | None = None,
              toxicity_threshold: float = toxicity.ToxicityConfig().threshold,
              options: PipelineOptions | None = None, shard_layout: str = common.BY_SIZE,
              num_buckets: int = 0, num_validation_shards: int = 0, num_reject_shards: int = 0,
              target_shard_bytes: int = common.DEFAULT_TARGET_SHARD_BYTES) -> dict[str, Any]:
  """Runs the job; returns its stats.json record. A shard count of 0 comes from the data, about
  ``target_shard_bytes`` a shard, as in the tokenize job: train from the input
  (``tokenize.train_shard_count``), validation from its share of it
  (``tokenize.validation_shard_count``), rejects from their bytes. ``shard_layout``: how records
  reach their duplicate group and shard, not what is written (module docstring); ``num_buckets``:
  the per-input layout's bucket count (0: from the input's size)."""
  if max_length < 8:
    raise common.StageError(f"--max_length must be at least 8 tokens, got {max_length}")
  if not 0.0 <= validation_fraction < 1.0:
    raise common.StageError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
  if shard_layout not in common.SHARD_LAYOUTS:
    raise common.StageError(f"--shard_layout must be one of {common.SHARD_LAYOUTS}, got {shard_layout!r}.")
  files = sorted(m.path for m in FileSystems.match([input_pattern])[0].metadata_list)
  if not files:
    raise common.StageError(f"No input files match {input_pattern}")
  model_proto = train_tokenizer.read_tokenizer(tokenizer)
  try:
    ct.chat_ids(train_tokenizer.check_tokenizer(model_proto, tokenizer))
  except ValueError as e:
    raise common.StageError(str(e)) from e
  if min(num_shards, num_validation_shards, num_reject_shards) < 0:
    raise common.StageError("--num_shards, --num_validation_shards and --num_reject_shards must be at "
                            "least 1 (or 0: from the data), got "
                            f"{num_shards}, {num_validation_shards}, {num_reject_shards}")
  if target_shard_bytes < 1:
    raise common.StageError(f"--target_shard_bytes must be positive, got {target_shard_bytes}")
  num_shards = num_shards or tokenize.train_shard_count(files, target_shard_bytes, shard_multiple=1)
  num_validation_shards = num_validation_shards or tokenize.validation_shard_count(
      files, validation_fraction, target_shard_bytes)
  shards = {"train": num_shards, "validation": num_validation_shards}
  prepare = PrepareConversation(model_proto, max_length, toxicity_threshold, pii.PiiConfig(), source)
  to_shard = ToShard(validation_fraction, shards)
  logging.info("%s: %s -> %s (%s layout)", STAGE, input_pattern, output_dir, shard_layout)
  with common.atomic_output_dir(output_dir) as tmp_dir:
    cache_dir = FileSystems.join(tmp_dir, tokenize.CACHE_DIR)
    rejects_dir = FileSystems.join(tmp_dir, common.REJECTS_DIR)
    FileSystems.mkdirs(cache_dir)
    with FileSystems.create(FileSystems.join(tmp_dir, tokenize.TOKENIZER_FILE)) as f:
      f.write(model_proto)
    plan = None
    if shard_layout == common.PER_INPUT:
      from pipelines import chat_data_shardwise  # pylint: disable=import-outside-toplevel  # It imports this module.
      plan = chat_data_shardwise.Plan(tuple(files), chat_data_shardwise.num_buckets(files, num_buckets),
                                      shards, FileSystems.join(tmp_dir, chat_data_shardwise.SPILL_DIR),
                                      num_reject_shards, target_shard_bytes)
    with beam.Pipeline(options=options or PipelineOptions()) as p:
      if plan is None:
        written, counts = _prepare_and_write(p, files, prepare, to_shard, cache_dir, rejects_dir, shards,
                                             num_reject_shards, target_shard_bytes)
      else:
        written, counts = chat_data_shardwise.build(p, plan, prepare, to_shard, cache_dir, rejects_dir)
      _finish(written, counts, tmp_dir, model_proto, validation_fraction, shards, max_length)
    if plan is not None:
      chat_data_shardwise.delete_spills(plan)  # Only once the job succeeded: a failed one's tmp_dir goes whole.
  stats = common.read_stats(output_dir)
  logging.info("%s: %s", STAGE, json.dumps(stats, sort_keys=True))
  return stats


def _prepare_and_write(p, files, prepare, to_shard, cache_dir, rejects_dir, shards, num_reject_shards,
                       target_shard_bytes):
  """The default layout: exact dedupe and shards through Beam shuffles. Returns
  ``tokenize.WriteShard``'s ``(task, shard counts)`` and the ``(name, n)`` count PCollections
  (``in``, ``kept``, ``kept_<kind>``, ``dropped.<reason>``); writes the rejects
  (``num_reject_shards``, 0: from their bytes)."""
  lines = (p | "Files" >> beam.Create(files)
           | "Read" >> beam.io.ReadAllFromText(coder=beam.coders.BytesCoder(), with_filename=True)
           | "Progress" >> beam.ParDo(common.CountProgress(STAGE)))
  prepared = lines | "Prepare" >> beam.ParDo(prepare).with_outputs(common.REJECTS_TAG, main="kept")
  deduped = (dedupe.mark_exact_duplicates(prepared.kept)
             | "Duplicates" >> beam.FlatMap(_route_duplicates).with_outputs(common.REJECTS_TAG, main="kept"))
  rejects = (prepared[common.REJECTS_TAG], deduped[common.REJECTS_TAG]) | "AllRejects" >> beam.Flatten()
  _ = rejects | "WriteRejects" >> common.WriteSortedShards(
      rejects_dir, common.REJECTS_TAG, num_reject_shards, target_shard_bytes)
  written = (deduped.kept
             | "ToShard" >> beam.ParDo(to_shard)
             | "GroupByShard" >> beam.GroupByKey()
             | "WriteShard" >> beam.ParDo(tokenize.WriteShard(cache_dir, shards)))
  counts = [
      lines | "CountIn" >> beam.combiners.Count.Globally() | "TagIn" >> beam.Map(lambda n: ("in", n)),
      deduped.kept | "CountKept" >> beam.combiners.Count.Globally() | "TagKept" >> beam.Map(lambda n: ("kept", n)),
      deduped.kept | "KeptKind" >> beam.Map(lambda d: ("kept_" + d["kind"], 1)) | "SumKind" >> beam.CombinePerKey(sum),
      rejects | "Reason" >> beam.Map(lambda r: ("dropped." + r["reason"], 1)) | "CountReasons" >> beam.CombinePerKey(sum),
  ]
  return written, counts


def _finish(written, counts, tmp_dir, model_proto, validation_fraction, shards, max_length):
  """Both layouts' tail: each task's cache directory completed, sources.json and stats.json."""
  cache_dir = FileSystems.join(tmp_dir, tokenize.CACHE_DIR)
  entries = []
  for kind, prefix in KIND_PREFIX.items():
    entries.append(written
                   | f"Only_{kind}" >> beam.Filter(lambda e, p=prefix: e[0].startswith(tokenize.task_name(p)))
                   | f"GroupByTask_{kind}" >> beam.GroupByKey()
                   | f"FinishTask_{kind}" >> beam.ParDo(tokenize.FinishTask(
                       cache_dir, shards, {}, "chat", features_info=FEATURES_INFO[kind])))
  _ = (entries | "AllEntries" >> beam.Flatten() | "Kinds" >> beam.Map(_with_kind)
       | "ToList" >> beam.combiners.ToList()
       | "WriteSources" >> beam.Map(_write_sources, tmp_dir, model_proto, validation_fraction, shards,
                                    max_length))
  _ = (counts | "FlattenCounts" >> beam.Flatten() | "AllCounts" >> beam.combiners.ToList()
       | "WriteStats" >> beam.Map(_write_stats, tmp_dir))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
  def add_args(parser):
    parser.add_argument("--tokenizer", required=True, help="tokenizer.model (needs <start_of_turn>/<end_of_turn>).")
    parser.add_argument("--max_length", type=int, default=256, help="Longest example in tokens, BOS included; "
                        "longer ones are rejected as too_long.")
    parser.add_argument("--validation_fraction", type=float, default=0.1)
    parser.add_argument("--num_validation_shards", type=int, default=0, help="Validation shards "
                        "(default 0: from the data, the split's share of the input over "
                        "--target_shard_bytes).")
    parser.add_argument("--source", default=None, help="Source name of every record (default: file name).")
    parser.add_argument("--toxicity_threshold", type=float, default=toxicity.ToxicityConfig().threshold)
    parser.add_argument("--num_buckets", type=int, default=0, help=f"--shard_layout={common.PER_INPUT} "
                        "only: buckets the duplicate groups are spread over, one DoFn call each "
                        "(default 0: one per MiB of input).")
  return common.parse_stage_args(__doc__.split("\n")[0], argv, add_args, per_input=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, options = parse_args(argv)
  return chat_data(args.input, args.tokenizer, args.output_dir, max_length=args.max_length,
                   validation_fraction=args.validation_fraction, num_shards=args.num_shards,
                   source=args.source, toxicity_threshold=args.toxicity_threshold, options=options,
                   shard_layout=args.shard_layout, num_buckets=args.num_buckets,
                   num_validation_shards=args.num_validation_shards,
                   num_reject_shards=args.num_reject_shards, target_shard_bytes=args.target_shard_bytes)


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
