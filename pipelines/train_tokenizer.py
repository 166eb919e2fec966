"""Trains the SentencePiece tokenizer on a deterministic sample of the deduplicated documents.

    python -m pipelines.train_tokenizer --input=<dedupe dir> --output_dir=<dir> --vocab_size=8000 \
        [--sample_docs=K] [--num_threads=N]
    python -m pipelines.train_tokenizer --output_dir=<dir> --model_file=<existing tokenizer.model>

A Beam job draws the sample (the ``K`` documents with the smallest ``stable_hash(id)``, so the
sample does not depend on input order or sharding; it reads the input twice, keys then the
sampled documents, so that it holds only the sample) and writes its lines to ``sample.txt``; the
driver then trains SentencePiece on that file with Gemma's settings (see ``gemma_trainer_spec``):
BPE, byte fallback, split digits, no normalisation, pad/eos/bos/unk = 0/1/2/3 and the
``<start_of_turn>``/``<end_of_turn>`` symbols. Training reads the sample through an iterator and
writes the model through a writer, so no file path ends up in the model's ``trainer_spec`` and two
runs give byte-identical ``tokenizer.model`` files. The learned pieces do not depend on
``num_threads`` (checked in tests); the value is only recorded in the trainer spec.

``--model_file`` skips training and installs a user-supplied model (e.g. the released Gemma
``tokenizer.model``) after checking that it loads and uses Gemma's special ids.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from typing import Any, Sequence

import apache_beam as beam
import sentencepiece as spm
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from sentencepiece import sentencepiece_model_pb2

from pipelines import common, shardwise

STAGE = "train_tokenizer"
MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
SAMPLE_FILE = "sample.txt"

# Gemma's special ids and piece names (gemma/gm/text/_tokenizer.py, the released tokenizer.model).
SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
SPECIAL_PIECES = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
# Dialogue turn markers. They are user-defined symbols (not control symbols) so that, as with
# Gemma, the literal text "<start_of_turn>" in a prompt encodes to the single special id.
TURN_SYMBOLS = ("<start_of_turn>", "<end_of_turn>")
# SentencePiece escapes spaces as U+2581 before matching pieces.
SPACE = "\u2581"


class TokenizerError(common.StageError):
  """A tokenizer model that is missing, unreadable or does not use Gemma's special ids."""


# ----------------------------------------------------------------------------- settings


def whitespace_symbols(max_run: int) -> list[str]:
  """Runs of 1..max_run newlines and 2..max_run spaces, each kept as a single piece.

  Gemma's vocabulary holds such runs as whole pieces, which keeps code and formatted text
  compact and guarantees that whitespace never merges with the words around it.
  """
  return ["\n" * k for k in range(1, max_run + 1)] + [SPACE * k for k in range(2, max_run + 1)]


def gemma_trainer_spec(
    vocab_size: int,
    num_threads: int = 1,
    max_whitespace_run: int = 31,
    character_coverage: float = 0.9995,
    max_sentence_length: int = 16384,
) -> dict[str, Any]:
  """The SentencePiece trainer arguments that reproduce Gemma's tokenizer settings.

  Matches the released Gemma model's ``trainer_spec``/``normalizer_spec``: BPE with byte fallback
  (no unknown characters), digits split one per token, identity normalisation, no dummy prefix,
  whitespace kept as is (and runs of spaces allowed as pieces), pad/eos/bos/unk = 0/1/2/3.
  """
  return dict(
      model_type="bpe",
      vocab_size=vocab_size,
      byte_fallback=True,
      split_digits=True,
      split_by_whitespace=True,
      split_by_unicode_script=True,
      split_by_number=True,
      allow_whitespace_only_pieces=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      character_coverage=character_coverage,
      max_sentence_length=max_sentence_length,
      input_sentence_size=0,  # Use every sentence of the (already sampled) input.
      shuffle_input_sentence=False,
      hard_vocab_limit=True,
      pad_id=SPECIAL_IDS["pad"],
      eos_id=SPECIAL_IDS["eos"],
      bos_id=SPECIAL_IDS["bos"],
      unk_id=SPECIAL_IDS["unk"],
      pad_piece=SPECIAL_PIECES["pad"],
      eos_piece=SPECIAL_PIECES["eos"],
      bos_piece=SPECIAL_PIECES["bos"],
      unk_piece=SPECIAL_PIECES["unk"],
      user_defined_symbols=list(TURN_SYMBOLS) + whitespace_symbols(max_whitespace_run),
      num_threads=num_threads,
      minloglevel=2,
  )


def check_tokenizer(model_proto: bytes, where: str) -> spm.SentencePieceProcessor:
  """Loads a serialized model and checks Gemma's special ids; raises TokenizerError otherwise."""
  sp = spm.SentencePieceProcessor()
  try:
    sp.LoadFromSerializedProto(model_proto)
  except (RuntimeError, OSError) as e:
    raise TokenizerError(f"{where} is not a SentencePiece model: {e}") from e
  found = {"pad": sp.pad_id(), "eos": sp.eos_id(), "bos": sp.bos_id(), "unk": sp.unk_id()}
  if found != SPECIAL_IDS:
    raise TokenizerError(
        f"{where} uses special ids {found}, but Gemma models need {SPECIAL_IDS} "
        "(pad=0, eos=1, bos=2, unk=3)."
    )
  return sp


def read_tokenizer(path: str) -> bytes:
  """Reads a tokenizer model file (local or remote) and checks it with ``check_tokenizer``."""
  if not FileSystems.exists(path):
    raise TokenizerError(f"Tokenizer model {path} does not exist.")
  with FileSystems.open(path) as f:
    proto = f.read()
  check_tokenizer(proto, path)
  return proto


_VOCAB_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def vocab_text(model_proto: bytes) -> str:
  """The ``.vocab`` file spm_train writes, one ``piece<TAB>score`` line per id.

  Unlike spm_train, backslash, newline, CR and tab inside pieces are backslash-escaped, so that the
  whitespace pieces keep the file at exactly one line per id.
  """
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString(model_proto)
  return "".join(f"{p.piece.translate(_VOCAB_ESCAPES)}\t{p.score:g}\n" for p in model.pieces)


# ----------------------------------------------------------------------------- sampling


def sample_key(doc: common.Doc) -> tuple[int, str]:
  """Order of documents in the sample: by a stable hash of the id, ties broken by the id."""
  doc_id = str(doc["id"])
  return common.stable_hash(doc_id), doc_id


# With --sample_docs the job reads its input files twice instead of holding the documents: the
# threshold step needs the K smallest keys first, and the local runner keeps in memory a
# PCollection that a later step reads again, so keeping only the documents below the threshold
# from one read held every document. Pass 1 reads the files for the keys (Top.Smallest keeps K per
# bundle) and the counts; pass 2 reads them again and emits only the sampled documents (K, plus
# any documents that share the K-th key's id).
COUNTS_TAG = "counts"


class _SampleKeys(common.CountProgress):
  """Pass 1: a stage shard's path -> the ``sample_key`` of each document, and (tagged
  ``counts``) its ``in`` and reader drops, as the default reader counts them."""

  def process(self, path: str):
    counts: dict[str, int] = {"in": 0}
    for parsed in shardwise.ReadDocShard(STAGE).process(path):
      self.count()
      counts["in"] += 1
      if isinstance(parsed, beam.pvalue.TaggedOutput):
        reason = "dropped." + parsed.value["reason"]
        counts[reason] = counts.get(reason, 0) + 1
      else:
        yield sample_key(parsed)
    for key, n in sorted(counts.items()):
      yield beam.pvalue.TaggedOutput(COUNTS_TAG, (key, n))


class _ReadSampled(beam.DoFn):
  """Pass 2: a stage shard's path -> its documents with ``sample_key <= largest_key`` (kept), and
  (tagged ``counts``) how many were kept and ``not_sampled``. Lines that are not documents were
  counted in pass 1 and are skipped here."""

  def process(self, path: str, largest_key):
    largest = tuple(largest_key) if largest_key is not None else None
    counts = {"kept": 0, "dropped.not_sampled": 0}
    not_sampled = Metrics.counter(STAGE, "dropped.not_sampled")
    for line in shardwise.read_lines(path):
      doc, _, _ = common.parse_doc(line)
      if doc is None:
        continue
      if largest is not None and sample_key(doc) <= largest:
        counts["kept"] += 1
        yield common.keep(STAGE, doc)
      else:
        counts["dropped.not_sampled"] += 1
        not_sampled.inc()
    for key, n in sorted(counts.items()):
      if n:  # A reason that never occurred is not in stats.json, as with the default reader.
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, (key, n))


class SampleFiles(beam.PTransform):
  """Stage shards -> ``{"kept": the sampled documents, "counts": (key, n) pairs}`` for
  ``--sample_docs``, reading the files twice (see COUNTS_TAG above): memory O(sample_docs)."""

  def __init__(self, files: Sequence[str], sample_docs: int):
    super().__init__()
    if sample_docs < 1:
      raise common.StageError(f"--sample_docs must be at least 1, got {sample_docs}.")
    self._files = list(files)
    self._sample_docs = sample_docs

  def expand(self, pbegin):
    keys = (pbegin
            | "Files" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()  # Else a runner fuses Create into one worker's read.
            | "ReadKeys" >> beam.ParDo(_SampleKeys(STAGE)).with_outputs(COUNTS_TAG, main="keys"))
    largest = (
        keys.keys
        | "Smallest" >> beam.combiners.Top.Smallest(self._sample_docs)
        | "Largest" >> beam.Map(lambda found: found[-1] if found else None)
    )
    sampled = (pbegin
               | "FilesAgain" >> beam.Create(self._files)
               | "SpreadFilesAgain" >> beam.Reshuffle()
               | "ReadSampled" >> beam.ParDo(
                   _ReadSampled(), beam.pvalue.AsSingleton(largest)).with_outputs(
                       COUNTS_TAG, main="kept"))
    counts = (keys[COUNTS_TAG], sampled[COUNTS_TAG]) | "AllCounts" >> beam.Flatten()
    return {"kept": sampled.kept, "counts": counts | "Sum" >> beam.CombinePerKey(sum)}


def _check_accounting(items, input_path: str, expected: int | None) -> dict[str, Any]:
  stats = common.make_stats(STAGE, items)
  if expected is not None:
    common.check_line_count(stats["in"], input_path, expected)
  return stats


def write_sample(docs: list[common.Doc], path: str, max_sentence_length: int) -> dict[str, int]:
  """Writes the sample's non-empty lines in ``sample_key`` order; returns counts for stats.json.

  SentencePiece trains on lines; a line longer than ``max_sentence_length`` bytes would be
  skipped by the trainer without a trace, so it is left out here and counted instead.
  """
  counts = {"sample_docs": len(docs), "sample_lines": 0, "sample_chars": 0, "lines_too_long": 0}
  with FileSystems.create(path) as f:
    for doc in sorted(docs, key=sample_key):
      for line in doc["text"].split("\n"):
        if not line:
          continue
        data = line.encode("utf-8")
        if len(data) > max_sentence_length:
          counts["lines_too_long"] += 1
          continue
        f.write(data + b"\n")
        counts["sample_lines"] += 1
        counts["sample_chars"] += len(line)
  return counts


# ----------------------------------------------------------------------------- training


def train_sentencepiece(sample_path: str, trainer_spec: dict[str, Any]) -> bytes:
  """Trains on the lines of ``sample_path`` and returns the serialized model."""
  model = io.BytesIO()
  with FileSystems.open(sample_path) as f:
    lines = (line.decode("utf-8").rstrip("\n") for line in f)
    try:
      spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model, **trainer_spec)
    except RuntimeError as e:
      raise common.StageError(
          f"SentencePiece training failed with vocab_size={trainer_spec['vocab_size']}: {str(e).rstrip('.')}. "
          "The vocabulary must fit the sample: use more --sample_docs or a smaller --vocab_size."
      ) from e
  return model.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
  with FileSystems.create(path) as f:
    f.write(data)


def _write_json(path: str, record: Any) -> None:
  _write_bytes(path, (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8"))


def _write_model(directory: str, proto: bytes, stats: dict[str, Any]) -> None:
  sp = check_tokenizer(proto, "the trained model")
  stats.update(
      vocab_size=sp.vocab_size(),
      special_ids=SPECIAL_IDS,
      turn_symbol_ids={s: sp.piece_to_id(s) for s in TURN_SYMBOLS if sp.piece_to_id(s) != sp.unk_id()},
  )
  _write_bytes(FileSystems.join(directory, MODEL_FILE), proto)
  _write_bytes(FileSystems.join(directory, VOCAB_FILE), vocab_text(proto).encode("utf-8"))
  _write_json(FileSystems.join(directory, common.STATS_FILE), stats)


def install_model_file(model_file: str, output_dir: str) -> dict[str, Any]:
  """Validates a user-supplied model and writes it (with .vocab and stats.json) to output_dir."""
  proto = read_tokenizer(model_file)
  with common.atomic_output_dir(output_dir) as tmp_dir:
    _write_model(tmp_dir, proto, {"stage": STAGE, "model_file": model_file})
  return common.read_stats(output_dir)


def train_tokenizer(
    input_path: str,
    output_dir: str,
    vocab_size: int,
    sample_docs: int | None = None,
    num_threads: int = 1,
    max_whitespace_run: int = 31,
    character_coverage: float = 0.9995,
    max_sentence_length: int = 16384,
    options: PipelineOptions | None = None,
) -> dict[str, Any]:
  """Samples the documents with Beam, trains the model and writes the tokenizer directory."""
  trainer_spec = gemma_trainer_spec(
      vocab_size, num_threads, max_whitespace_run, character_coverage, max_sentence_length
  )
  logging.info("%s: %s -> %s", STAGE, input_path, output_dir)
  with common.atomic_output_dir(output_dir) as tmp_dir:
    sample_path = FileSystems.join(tmp_dir, SAMPLE_FILE)
    counts_path = FileSystems.join(tmp_dir, "sample_counts.json")
    with beam.Pipeline(options=options or PipelineOptions()) as p:
      expected = None  # The default reader checks the line count itself.
      if sample_docs is None:
        kept, counts = _keep_all(p, input_path)
      else:
        sampled = p | "Sample" >> SampleFiles(common.stage_input_files(input_path), sample_docs)
        kept, counts = sampled["kept"], [sampled["counts"]]
        expected = common.expected_kept(input_path)
      _ = (
          kept
          | "AllSampled" >> beam.combiners.ToList()
          | "WriteSample" >> beam.Map(
              lambda docs: _write_json(
                  counts_path, write_sample(docs, sample_path, max_sentence_length)
              )
          )
      )
      _ = (
          counts
          | "FlattenCounts" >> beam.Flatten()
          | "AllCounts" >> beam.combiners.ToList()
          | "WriteCounts" >> beam.Map(lambda items: _write_json(
              FileSystems.join(tmp_dir, "accounting.json"),
              _check_accounting(items, input_path, expected)))
      )
    stats = _read_json(FileSystems.join(tmp_dir, "accounting.json"))
    stats.update(_read_json(counts_path))
    FileSystems.delete([counts_path, FileSystems.join(tmp_dir, "accounting.json")])
    if stats["sample_lines"] == 0:
      raise common.StageError(f"{input_path}: the sample has no text to train a tokenizer on.")
    proto = train_sentencepiece(sample_path, trainer_spec)
    stats["trainer_spec"] = {k: v for k, v in trainer_spec.items() if k != "minloglevel"}
    stats["requested_vocab_size"] = vocab_size
    _write_model(tmp_dir, proto, stats)
  stats = common.read_stats(output_dir)
  logging.info("%s: vocab_size=%d sample_docs=%d", STAGE, stats["vocab_size"], stats["sample_docs"])
  return stats


def _keep_all(p, input_path: str):
  """Without --sample_docs every document is the sample (memory grows with the input, as the
  sample does): ``(kept, [count pairs])``."""
  parsed = p | "Read" >> common.ReadDocs(input_path, STAGE)
  inputs = (parsed.docs, parsed[common.REJECTS_TAG])  # Counted apart: common.CountAll.
  kept = parsed.docs | "KeepAll" >> beam.Map(lambda doc: common.keep(STAGE, doc))
  counts = [
      inputs | "CountIn" >> common.CountAll() | "TagIn" >> beam.Map(lambda n: ("in", n)),
      kept | "CountKept" >> beam.combiners.Count.Globally() | "TagKept" >> beam.Map(lambda n: ("kept", n)),
      parsed[common.REJECTS_TAG]
      | "Reason" >> beam.Map(lambda r: ("dropped." + r["reason"], 1))
      | "CountReasons" >> beam.CombinePerKey(sum),
  ]
  return kept, counts


def _read_json(path: str) -> Any:
  with FileSystems.open(path) as f:
    return json.loads(f.read().decode("utf-8"))


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", help="The dedupe stage directory (not needed with --model_file).")
  parser.add_argument("--output_dir", required=True, help="Directory for tokenizer.model etc.")
  parser.add_argument("--vocab_size", type=int, default=8000, help="Up to 256000 (Gemma).")
  parser.add_argument("--sample_docs", type=int, default=None, help="Sample size; all when unset.")
  parser.add_argument("--num_threads", type=int, default=1, help="SentencePiece trainer threads.")
  parser.add_argument(
      "--max_whitespace_run", type=int, default=31,
      help="Longest run of newlines / spaces kept as one piece (Gemma: 31).",
  )
  parser.add_argument("--character_coverage", type=float, default=0.9995)
  parser.add_argument("--max_sentence_length", type=int, default=16384, help="In bytes.")
  parser.add_argument("--model_file", help="Install this SentencePiece model instead of training.")
  args, beam_args = parser.parse_known_args(argv)
  if args.model_file is None and args.input is None:
    parser.error("--input is required unless --model_file is given.")
  return args, PipelineOptions(beam_args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, options = parse_args(argv)
  if args.model_file:
    return install_model_file(args.model_file, args.output_dir)
  return train_tokenizer(
      args.input,
      args.output_dir,
      vocab_size=args.vocab_size,
      sample_docs=args.sample_docs,
      num_threads=args.num_threads,
      max_whitespace_run=args.max_whitespace_run,
      character_coverage=args.character_coverage,
      max_sentence_length=args.max_sentence_length,
      options=options,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
