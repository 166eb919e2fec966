"""Tests for pipelines.train_tokenizer: Gemma's settings, determinism, sampling and --model_file."""

import io
import json
import os
import random

import pytest
import sentencepiece as spm
from apache_beam.options.pipeline_options import PipelineOptions
from sentencepiece import sentencepiece_model_pb2

from pipelines import common
from pipelines import train_tokenizer
from stage_dirs import write_stage_dir

WORDS = (
    "the of and to in data model token beam pipeline gemma seqio train text web page quality "
    "filter shard cache vocabulary language source document paragraph sentence code value number "
    "result table index search user query answer question http www com org html"
).split()
VOCAB_SIZE = 400
MAX_WHITESPACE_RUN = 4


def make_text(rng: random.Random, paragraphs: int = 3, words: int = 40) -> str:
  """A deterministic pseudo-document with digits, punctuation, double spaces and paragraphs."""
  lines = []
  for _ in range(paragraphs):
    ws = [rng.choice(WORDS) for _ in range(rng.randint(words // 2, words))]
    ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 99999)))
    line = " ".join(ws).capitalize() + "."
    if rng.random() < 0.3:
      line = "  " + line.replace(" ", "  ", 1)
    lines.append(line)
  return "\n".join(lines)


def make_docs(n: int, seed: int = 0, sources=("web", "docs")) -> list[dict]:
  rng = random.Random(seed)
  return [
      {"id": f"{common.stable_hash(f'doc{seed}-{i}'):016x}", "source": sources[i % len(sources)],
       "url": f"https://example.com/{i}", "text": make_text(rng)}
      for i in range(n)
  ]


def options():
  return PipelineOptions(["--runner=DirectRunner"])


def train(input_dir, output_dir, **kwargs):
  kwargs.setdefault("vocab_size", VOCAB_SIZE)
  kwargs.setdefault("max_whitespace_run", MAX_WHITESPACE_RUN)
  return train_tokenizer.train_tokenizer(str(input_dir), str(output_dir), options=options(), **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  input_dir = write_stage_dir(root / "dedupe", make_docs(120), extra_lines=["not json"])
  stats = train(input_dir, root / "tok", sample_docs=100)
  sp = spm.SentencePieceProcessor(model_file=str(root / "tok" / "tokenizer.model"))
  return root, stats, sp


def test_special_ids_and_gemma_settings(trained):
  root, stats, sp = trained
  assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert sp.vocab_size() == VOCAB_SIZE == stats["vocab_size"]
  # The turn markers are single pieces right after the special ids, and encode from text.
  assert stats["turn_symbol_ids"] == {"<start_of_turn>": 4, "<end_of_turn>": 5}
  assert sp.encode("<start_of_turn>") == [4]
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString((root / "tok" / "tokenizer.model").read_bytes())
  assert model.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
  assert model.trainer_spec.byte_fallback and model.trainer_spec.split_digits
  assert model.normalizer_spec.name == "identity"
  assert not model.normalizer_spec.add_dummy_prefix
  assert not model.normalizer_spec.remove_extra_whitespaces
  assert model.trainer_spec.input == []  # No temporary path recorded in the model.
  vocab_lines = (root / "tok" / "tokenizer.vocab").read_text().splitlines()
  assert len(vocab_lines) == VOCAB_SIZE and vocab_lines[2].startswith("<bos>\t")


def test_byte_fallback_for_unseen_characters(trained):
  _, _, sp = trained
  text = "emoji 😀 and 漢字"
  ids = sp.encode(text)
  assert sp.unk_id() not in ids
  pieces = [sp.id_to_piece(i) for i in sp.encode("😀")]
  assert pieces == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
  assert sp.decode(ids) == text


def test_digits_are_split(trained):
  _, _, sp = trained
  pieces = [sp.id_to_piece(i) for i in sp.encode("2024")]
  assert pieces == ["2", "0", "2", "4"]


@pytest.mark.parametrize(
    "text",
    [" leading space", "two  spaces", "tabs\tand\n\n\nnewlines\n", "   ", "trailing  ", "a\r\nb", "ß Straße ＡＢＣ"],
)
def test_whitespace_and_text_preserved(trained, text):
  _, _, sp = trained
  assert sp.decode(sp.encode(text)) == text


def test_no_dummy_prefix_and_whitespace_runs(trained):
  _, _, sp = trained
  assert sp.encode(" data") != sp.encode("data")
  assert sp.encode("\n\n") == [sp.piece_to_id("\n\n")]
  assert [sp.id_to_piece(i) for i in sp.encode("a    b")] == ["a", "\u2581" * 4, "b"]


def test_training_is_deterministic_and_sample_independent_of_sharding(trained, tmp_path):
  root, _, _ = trained
  docs = make_docs(120)
  # Same documents, different shard layout and order; other thread count.
  input_dir = write_stage_dir(tmp_path / "dedupe", list(reversed(docs)), num_shards=3, extra_lines=["not json"])
  train(input_dir, tmp_path / "tok", sample_docs=100, num_threads=2)
  assert (tmp_path / "tok" / "sample.txt").read_bytes() == (root / "tok" / "sample.txt").read_bytes()
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString((tmp_path / "tok" / "tokenizer.model").read_bytes())
  assert model.trainer_spec.num_threads == 2
  model.trainer_spec.num_threads = 1  # The only difference: learned pieces do not depend on it.
  assert model.SerializeToString() == (root / "tok" / "tokenizer.model").read_bytes()
  train(input_dir, tmp_path / "tok2", sample_docs=100, num_threads=2)
  for name in ("tokenizer.model", "tokenizer.vocab", "stats.json", "sample.txt"):
    assert (tmp_path / "tok" / name).read_bytes() == (tmp_path / "tok2" / name).read_bytes(), name


def test_stats_account_for_every_record(trained):
  root, stats, _ = trained
  assert stats["in"] == 121
  assert stats["kept"] == stats["sample_docs"] == 100
  assert stats["dropped"] == {"bad_json": 1, "not_sampled": 20}
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  sample = (root / "tok" / "sample.txt").read_text()
  assert len(sample.splitlines()) == stats["sample_lines"] == 300
  assert (root / "tok" / common.SUCCESS_MARKER).exists()
  assert json.loads((root / "tok" / "stats.json").read_text()) == stats
  # The sample is the 100 documents with the smallest hash of their id.
  expected = sorted(make_docs(120), key=train_tokenizer.sample_key)[:100]
  assert sample.splitlines()[:3] == expected[0]["text"].split("\n")


def test_model_file_installs_a_valid_model_unchanged(trained, tmp_path):
  root, _, _ = trained
  stats = train_tokenizer.main(
      ["--output_dir", str(tmp_path / "installed"), "--model_file", str(root / "tok" / "tokenizer.model")]
  )
  assert (tmp_path / "installed" / "tokenizer.model").read_bytes() == (root / "tok" / "tokenizer.model").read_bytes()
  assert stats["vocab_size"] == VOCAB_SIZE and stats["special_ids"] == train_tokenizer.SPECIAL_IDS


def test_model_file_with_other_special_ids_is_refused(trained, tmp_path):
  root, _, _ = trained
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(  # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad.
      input=str(root / "tok" / "sample.txt"), model_writer=proto, vocab_size=300, minloglevel=2
  )
  (tmp_path / "other.model").write_bytes(proto.getvalue())
  with pytest.raises(train_tokenizer.TokenizerError, match="pad=0, eos=1, bos=2, unk=3"):
    train_tokenizer.main(["--output_dir", str(tmp_path / "out"), "--model_file", str(tmp_path / "other.model")])
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(train_tokenizer.TokenizerError, match="not a SentencePiece model"):
    train_tokenizer.main(["--output_dir", str(tmp_path / "out"), "--model_file", str(tmp_path / "junk.model")])
  assert not (tmp_path / "out").exists()


def test_vocab_too_large_for_sample_is_a_clear_error(tmp_path):
  input_dir = write_stage_dir(tmp_path / "dedupe", make_docs(5))
  with pytest.raises(common.StageError, match="smaller --vocab_size"):
    train(input_dir, tmp_path / "tok", vocab_size=20000)
  assert not (tmp_path / "tok").exists()


def test_unfinished_input_is_refused(tmp_path):
  input_dir = write_stage_dir(tmp_path / "dedupe", make_docs(5))
  os.remove(os.path.join(input_dir, common.SUCCESS_MARKER))
  with pytest.raises(common.StageError, match="_SUCCESS"):
    train(input_dir, tmp_path / "tok")
